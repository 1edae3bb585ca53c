"""Splits and shards: which videos a source streams, for every source kind.

Validation is split by video id, never by frame, so that it never sees a training video:

- listed sources (local files) pick val from the whole list (`select_split`): the videos named
  in `val_videos`, else those whose stable hash is below `val_fraction`, at least one per split;
- streamed sources (Pexels search results) see ids one at a time (`in_split`, `is_val_id`):
  the same hash, without the at-least-one rule, which needs the whole list;
- generated sources (synthetic) draw each split from its own seed (`GENERATED_SPLITS`).

Shards divide a split's training stream between producers (`producer.workers` on each DDP
rank, numbered by `data.workers.worker_shard`): disjoint, and together the whole split. The rule
depends on what a source knows of its videos:

- by position (`take_shard`, `in_position_shard`): round robin over a list or a numbered
  stream, the same in every process. Local files and synthetic videos; shards differ in size by
  one video at most, so N producers with at least N videos never get an empty shard;
- by id (`in_id_shard`): a stable hash of the id, for ids that arrive in an order the API picks
  (Pexels). With few videos shards can be uneven, even empty.

Hashes are SHA-1 and BLAKE2b, never `hash()`, which differs between processes.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable, Collection, Sequence, TypeVar

from stream_pose.types import VideoRef

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "all")  # sources of existing videos, split by id; "all" is both
# Generated sources: each split's code is mixed into the seed, so the splits never share a video.
GENERATED_SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

_T = TypeVar("_T")


def check_split(split: str, val_fraction: float = 0.0,
                choices: Collection[str] = SPLITS) -> None:
    """Raises ValueError unless `split` is one of `choices` and `val_fraction` is in [0, 1)."""
    if split not in choices:
        raise ValueError(f"split must be one of {choices}, got {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")


def check_shard(shard: int, num_shards: int) -> None:
    """Raises ValueError unless 0 <= shard < num_shards."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"need 0 <= shard < num_shards, got shard={shard}, "
                         f"num_shards={num_shards}")


# --- splits ------------------------------------------------------------------------------------


def select_split(
    videos: list[VideoRef], split: str, val_videos: list[str] | None, val_fraction: float,
    usable: Callable[[VideoRef], bool] | None = None,
) -> list[VideoRef]:
    """The videos of one split, in input order; the split is by video id, never by frame.

    Val is `val_videos` when given, else the ids whose stable hash falls under `val_fraction`
    (at least one video in each split when there are two or more), else empty. With `usable`,
    the automatic pick leaves out the videos it rejects (an unreadable file would leave the
    validation set empty); they stay in train, where the stream skips them.

    Raises:
        ValueError: an id in `val_videos` that is not among the videos, or an empty result.
    """
    ids = [video.id for video in videos]
    if isinstance(val_videos, str):  # one id, not a sequence of characters
        val_videos = [val_videos]
    if val_videos is not None:
        unknown = sorted(set(val_videos) - set(ids))
        if unknown:
            raise ValueError(f"val_videos not found: {unknown}; the video ids (file stems) are "
                             f"{ids}")
        val = set(val_videos)
    else:
        by_id = {video.id: video for video in videos}
        val = _hash_val_ids(ids, val_fraction,
                            None if usable is None else lambda i: usable(by_id[i]))
    chosen = [v for v in videos if _wanted(split, v.id in val)]
    if not chosen:
        raise ValueError(
            f"split {split!r} has no video (ids {ids}); set val_videos or val_fraction"
        )
    return chosen


def in_split(video_id: str, split: str, val_fraction: float) -> bool:
    """Whether a video of a stream (ids one by one) belongs to `split` (see `is_val_id`)."""
    return _wanted(split, is_val_id(video_id, val_fraction))


def is_val_id(video_id: str, val_fraction: float) -> bool:
    """Whether a video belongs to validation when ids arrive one by one (a stream).

    The same stable hash as `select_split`, without its at-least-one-per-split rule, which
    needs the whole list: a given id is in val iff its hash position is below `val_fraction`.
    """
    return _unit_hash(video_id) < val_fraction


def _wanted(split: str, is_val: bool) -> bool:
    """Whether a video on the val (or train) side belongs to `split` ("all" takes both)."""
    return split == "all" or is_val == (split == "val")


def _hash_val_ids(ids: list[str], fraction: float,
                  usable: Callable[[str], bool] | None = None) -> set[str]:
    """Ids whose SHA-1 position in [0, 1) is below `fraction` and that are `usable`, with both
    splits non-empty (`usable` is asked only about candidates, in hash order)."""
    if fraction <= 0 or not ids:
        return set()
    usable = usable or (lambda video_id: True)
    ranked = sorted(ids, key=_unit_hash)
    val = {i for i in ranked if is_val_id(i, fraction) and _usable_or_say(i, usable)}
    if len(ids) >= 2 and not val:  # the others stay in train, the unusable ones included
        val = {next((i for i in ranked if usable(i)), ranked[0])}
    if len(ids) >= 2 and len(val) == len(ids):
        val.discard(ranked[-1])
    return val


def _usable_or_say(video_id: str, usable: Callable[[str], bool]) -> bool:
    if usable(video_id):
        return True
    logger.info("automatic validation split: %s does not decode; it stays in train (skipped "
                "there)", video_id)
    return False


def _unit_hash(video_id: str) -> float:
    """Stable position of an id in [0, 1): SHA-1, unlike hash(), is the same in every process."""
    return int(hashlib.sha1(video_id.encode()).hexdigest()[:12], 16) / 16**12


# --- shards ------------------------------------------------------------------------------------


def take_shard(items: Sequence[_T], shard: int, num_shards: int) -> list[_T]:
    """Items shard, shard + num_shards, ... of a list: round robin by position.

    `in_position_shard` applied to a whole list: sizes differ by one at most, so every shard
    has an item when num_shards <= len(items).
    """
    return [item for k, item in enumerate(items) if in_position_shard(k, shard, num_shards)]


def in_position_shard(position: int, shard: int, num_shards: int) -> bool:
    """Whether item `position` (>= 0) of a numbered stream belongs to `shard` of `num_shards`."""
    return position % num_shards == shard


def in_id_shard(video_id: str, shard: int, num_shards: int) -> bool:
    """Whether a video belongs to `shard` of `num_shards`: its stable hash mod `num_shards`.

    BLAKE2b with its own `person` tag, so shards do not correlate with the val split's SHA-1
    position. Shards of one split are disjoint and together give all of it. With few videos
    they can be uneven, even empty.
    """
    digest = hashlib.blake2b(video_id.encode(), digest_size=8, person=b"sp-shard").digest()
    return int.from_bytes(digest, "little") % num_shards == shard
