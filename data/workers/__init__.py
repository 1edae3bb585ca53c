"""Producer processes: each labels its own shard of the stream into a shared ring buffer.

Two sides, one module each:

- `data.workers.worker`: what runs in a producer process (`run_worker`), what it is given
  (`WorkerSpec`), what it reports when it fails (`WorkerError`), and which shard it labels
  (`worker_shard`, `shard_kwargs`).
- `data.workers.pool`: the parent's `ProducerPool`, which spawns, supervises, restarts and stops
  the workers, and its `ProducerSettings` (conf/producer).

A spawned worker re-imports this package and the parent's `__main__` (CPython's spawn), so the
package imports neither torch, Lightning nor any teacher library.
"""

from data.workers.pool import ProducerPool, ProducerSettings
from data.workers.worker import WorkerError, WorkerSpec, run_worker, shard_kwargs, worker_shard

__all__ = [
    "ProducerPool",
    "ProducerSettings",
    "WorkerError",
    "WorkerSpec",
    "run_worker",
    "shard_kwargs",
    "worker_shard",
]
