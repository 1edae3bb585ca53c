"""The LightningModule (batches, loss masking, learning, val metrics, checkpoints) and callbacks."""

import functools
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from data.ring_buffer import BufferStats
from stream_pose.batch import Batch
from train.callbacks import CheckpointOnException, stream_telemetry
from train.module import PoseDistillModule, masked_l1
from train.student import PoseStudent

S = 64


def _net():
    return PoseStudent(S, widths=(8, 16, 16, 32), neck_width=16, head_hidden=64)


def _module(**kw):
    opt = functools.partial(torch.optim.AdamW, lr=3e-3)
    return PoseDistillModule(_net(), optimizer=opt, **kw)


def _batch(b=8, seed=0):
    """A uint8 batch as the loaders give it; 3D pelvis-relative, 2D inside the crop."""
    g = torch.Generator().manual_seed(seed)
    kpts3d = 0.3 * torch.randn(b, 27, 3, generator=g)
    kpts3d[:, 0] = 0
    return Batch(
        image=torch.randint(0, 256, (b, 3, S, S), generator=g, dtype=torch.uint8),
        kpts2d=torch.rand(b, 27, 2, generator=g) * (S - 1),
        kpts3d=kpts3d,
        visibility=(torch.rand(b, 27, generator=g) > 0.2).float(),
        K_crop=torch.eye(3).expand(b, 3, 3).clone(),
    )


def _float(batch):
    return batch.replace(image=batch.image.float() / 255)


def test_uint8_images_become_float_in_unit_range():
    batch = _module().on_after_batch_transfer(_batch(), 0)
    assert batch.image.dtype == torch.float32
    assert 0 <= batch.image.min() and batch.image.max() <= 1
    assert batch.image.max() > 0.9  # divided by 255, not clipped


def test_forward_shapes():
    out = _module()(_float(_batch(4)).image)
    assert out.kpts3d.shape == (4, 27, 3) and out.kpts2d.shape == (4, 27, 2)


def test_masked_l1_counts_visible_coordinates_only():
    pred, target = torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)
    pred[0, 0] = torch.tensor([1.0, 3.0])  # |err| sums to 4 on a visible joint
    pred[0, 2] = 1e6  # invisible
    vis = torch.tensor([[1.0, 1.0, 0.0]])
    assert masked_l1(pred, target, vis).item() == pytest.approx(4 / (2 * 2))


def test_masked_joints_do_not_affect_the_loss():
    module = _module().eval()
    batch = _float(_batch())
    corrupted = Batch(**{k: v.clone() for k, v in batch.fields().items()})
    hidden = batch.visibility == 0
    corrupted.kpts3d[hidden] = 50.0
    corrupted.kpts2d[hidden] = -1e4
    with torch.no_grad():
        a, b = module.losses(batch), module.losses(corrupted)
    for key in ("loss", "loss_3d", "loss_2d", "mpjpe"):
        torch.testing.assert_close(a[key], b[key])
    corrupted.kpts3d[~hidden] += 1.0  # the same change on visible joints must show
    with torch.no_grad():
        assert module.losses(corrupted)["loss_3d"] > a["loss_3d"] + 0.5


def test_loss_falls_when_overfitting_a_fixed_batch():
    torch.manual_seed(0)
    module = _module()
    batch = _float(_batch(8))
    opt = module.configure_optimizers()
    losses = []
    for _ in range(30):
        loss = module.losses(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_mean_pose_baseline_sees_targets_before_augmentation():
    class ShiftLabels(torch.nn.Module):  # stands in for an augmentation that moves targets
        def forward(self, batch):
            return batch.replace(kpts3d=batch.kpts3d + 10.0)

    module = _module(augment=ShiftLabels())
    batch = _float(_batch(4))
    module.training_step(batch, 0)
    assert module.mean_pose.mean().abs().max() < 2.0  # the +10 m did not reach the baseline


class _Batches(torch.utils.data.IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(_batch(8, seed=i) for i in range(self.n))


def _trainer(tmp_path, **kw):
    return L.Trainer(
        default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **kw,
    )


def test_validation_pools_errors_over_all_visible_joints(tmp_path):
    module = _module()
    val = [_batch(8, seed=100), _batch(3, seed=101)]  # unequal batches: a mean of means differs
    trainer = _trainer(tmp_path, max_steps=2, val_check_interval=2, num_sanity_val_steps=0,
                       check_val_every_n_epoch=None)
    trainer.fit(module, train_dataloaders=DataLoader(_Batches(4), batch_size=None),
                val_dataloaders=DataLoader(val, batch_size=None))
    metrics = trainer.callback_metrics
    for key in ("val/mpjpe_mm", "val/pa_mpjpe_mm", "val/mean_pose_mpjpe_mm", "train/loss"):
        assert key in metrics and torch.isfinite(metrics[key])
    module.eval()
    with torch.no_grad():
        cat = Batch(**{k: torch.cat([v.fields()[k] for v in val]) for k in val[0].fields()})
        pred = module(_float(cat).image).kpts3d
    err = (pred - cat.kpts3d).norm(dim=-1)
    pooled = 1000 * (err * cat.visibility).sum() / cat.visibility.sum()
    assert metrics["val/mpjpe_mm"].item() == pytest.approx(pooled.item(), rel=1e-4)
    assert metrics["val/pa_mpjpe_mm"] <= metrics["val/mpjpe_mm"]


def test_checkpoint_loads_with_weights_only(tmp_path):
    module = _module(loss_2d_weight=0.25)
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(module, train_dataloaders=DataLoader(_Batches(2), batch_size=None))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["loss_2d_weight"] == 0.25
    restored = PoseDistillModule.load_from_checkpoint(path, net=_net())
    assert restored.hparams.loss_2d_weight == 0.25
    torch.testing.assert_close(restored.mean_pose.mean(), module.mean_pose.mean())
    x = torch.rand(2, 3, S, S)
    torch.testing.assert_close(restored.eval()(x).kpts3d, module.eval()(x).kpts3d)


class _Failing(PoseDistillModule):
    def training_step(self, batch, batch_idx):
        if self.global_step == 3:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_a_crash_leaves_a_checkpoint(tmp_path):
    module = _Failing(_net(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    saver = CheckpointOnException(tmp_path / "checkpoints")
    trainer = _trainer(tmp_path, max_steps=10, callbacks=[saver])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(module, train_dataloaders=DataLoader(_Batches(10), batch_size=None))
    ckpt = torch.load(tmp_path / "checkpoints" / "interrupted.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["optimizer_states"]


def test_stream_telemetry_reads_buffer_and_producer_counters():
    stats = BufferStats(capacity=10, fill=0.5, size=5, pushed=5, overwritten=0, samples_read=20,
                        reads_per_sample=4.0)
    dm = SimpleNamespace(
        buffer=SimpleNamespace(stats=lambda: stats),
        producer=SimpleNamespace(stats=SimpleNamespace(total=SimpleNamespace(teacher_fps=12.5,
                                                                             frames=30)),
                                 restarts=1, stalls=0),
    )
    assert stream_telemetry(dm) == {"buffer/fill": 0.5, "buffer/reads_per_sample": 4.0,
                                    "buffer/pushed": 5.0, "producer/teacher_fps": 12.5,
                                    "buffer/overwritten": 0.0, "buffer/samples_read": 20.0,
                                    "buffer/wait_s": 0.0, "buffer/bytes_per_sample": 0.0,
                                    "producer/frames": 30.0, "producer/restarts": 1.0,
                                    "producer/stalls": 0.0}
    assert stream_telemetry(SimpleNamespace(buffer=None, producer=None)) == {}
