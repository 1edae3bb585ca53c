"""Write SMPL-format model files for tests: the real keys, shapes and pickled types, random values.

The real `SMPL_NEUTRAL.pkl` (basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl, SMPL for Python) is a
latin-1 pickle of a dict in which `v_template`, `shapedirs`, `posedirs`, `weights` and `J` are
`chumpy.ch.Ch` objects, `J_regressor` is a `scipy.sparse.csc_matrix` and the rest are plain
arrays. The file written here has the same structure, so it exercises the same unpickling path,
without chumpy installed (the class is pickled under chumpy's name).
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from pathlib import Path

import numpy as np

NUM_VERTICES = 6890
NUM_FACES = 13776
# SMPL's 24-joint kinematic tree: parents of the 22 body joints (docs/architecture.md order) + the hands.
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]


class _Ch:
    """Pickles as chumpy's `Ch`: class `chumpy.ch.Ch`, state = its `__dict__` (`x` = value)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x


@contextlib.contextmanager
def _as_chumpy_class():
    """Let pickle name `_Ch` "chumpy.ch.Ch" (pickle checks the name resolves to the class)."""
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    old = (_Ch.__module__, _Ch.__qualname__)
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = types.ModuleType("chumpy"), types.ModuleType(
        "chumpy.ch")
    sys.modules["chumpy.ch"].Ch = _Ch
    _Ch.__module__, _Ch.__qualname__ = "chumpy.ch", "Ch"
    try:
        yield
    finally:
        _Ch.__module__, _Ch.__qualname__ = old
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def fake_smpl_dict(seed: int = 0) -> dict:
    """A dict with the keys, shapes and types of the SMPL neutral model, random values.

    Vertices form a 1.7 m tall cloud; each joint regresses from a few random vertices with
    weights summing to one, as SMPL's do.
    """
    from scipy import sparse

    rng = np.random.default_rng(seed)
    v_template = rng.normal(0.0, [0.15, 0.45, 0.1], (NUM_VERTICES, 3))
    rows = np.repeat(np.arange(24), 8)
    cols = rng.integers(0, NUM_VERTICES, rows.size)
    J_regressor = sparse.csc_matrix((np.full(rows.size, 1 / 8), (rows, cols)), (24, NUM_VERTICES))
    weights = rng.dirichlet(np.ones(24) * 0.1, NUM_VERTICES)
    kintree = np.array([SMPL_PARENTS, list(range(24))], dtype=np.int64)
    kintree[0, 0] = 4294967295  # the file stores the root's parent as uint32(-1)
    return {
        "v_template": _Ch(v_template),
        "shapedirs": _Ch(rng.normal(0, 0.01, (NUM_VERTICES, 3, 10))),
        "posedirs": _Ch(rng.normal(0, 0.001, (NUM_VERTICES, 3, 207))),
        "weights": _Ch(weights),
        "J": _Ch(J_regressor @ v_template),
        "J_regressor": J_regressor,
        "J_regressor_prior": J_regressor.copy(),
        "weights_prior": weights.copy(),
        "kintree_table": kintree,
        "f": rng.integers(0, NUM_VERTICES, (NUM_FACES, 3)).astype(np.uint32),
        "vert_sym_idxs": np.arange(NUM_VERTICES),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def write_fake_smpl(path: Path, seed: int = 0) -> Path:
    """Write `fake_smpl_dict(seed)` to `path` as a protocol-2 pickle (what Python 2 wrote)."""
    data = fake_smpl_dict(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _as_chumpy_class(), open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)
    return path


def write_fake_extra_reference(path: Path, seed: int = 0) -> Path:
    """Write CoMotion's `extra_smpl_reference.pt` (shipped in its checkpoint tarball, not in git):
    `mean_pose` `[72]` float32 SMPL axis-angle pose (here: the rest pose turned upright in the
    camera frame, pi about X) and `coco_map` `[6890, 17]` float32 vertex-to-COCO-keypoint weights
    (random, each column summing to one)."""
    import torch

    rng = np.random.default_rng(seed)
    mean_pose = np.zeros(72, np.float32)
    mean_pose[0] = np.pi
    coco_map = rng.dirichlet(np.ones(NUM_VERTICES) * 0.01, 17).T.astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"mean_pose": torch.from_numpy(mean_pose), "coco_map": torch.from_numpy(coco_map)},
               path)
    return path
