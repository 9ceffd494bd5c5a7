"""Dataset-scale runs: sharded, resumable result folders and torch.distributed helpers.

See :mod:`vision_kernels.runs.shards` for the folder format and its rules, and
:mod:`vision_kernels.runs.distributed` for ranks, input slices and reductions.
"""

from .distributed import Ranks, all_reduce_sum, barrier, broadcast_object, current, init_from_env, log, owned
from .shards import RunReader, RunSpec, ShardedRun, ShardInfo

__all__ = [
    "Ranks",
    "RunReader",
    "RunSpec",
    "ShardInfo",
    "ShardedRun",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "current",
    "init_from_env",
    "log",
    "owned",
]
