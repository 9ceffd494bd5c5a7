"""torch.distributed for dataset-scale runs: which rank am I, which inputs are mine, sums over ranks.

A run started plainly is rank 0 of 1. Under ``torchrun --nproc-per-node N`` (or with RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT set by any launcher) :func:`init_from_env` joins the
process group: gloo for CPU tensors, nccl when the run uses CUDA. Several machines are the same
``torchrun`` line on each with ``--nnodes``, ``--node-rank`` and ``--rdzv-endpoint``.

Rules (docs/DESIGN.md section 7):
- every rank takes a disjoint, deterministic part of the inputs (:func:`owned`, round robin over
  shard indices, so a run's files do not depend on the number of ranks);
- whatever is a sum over samples is reduced with :func:`all_reduce_sum` (rows are never gathered).
  Sums are best accumulated in float64 so that 1 and N ranks agree to float32 precision;
- progress bars show on rank 0 only (vision_kernels._progress reads RANK), and :func:`log` names
  the rank.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = [
    "Ranks",
    "current",
    "init_from_env",
    "owned",
    "all_reduce_sum",
    "all_ranks_ok",
    "barrier",
    "broadcast_object",
    "log",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` in ``[0, world)``."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def __str__(self) -> str:
        return f"rank {self.rank}/{self.world}"


def _active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def current() -> Ranks:
    """The process group's rank and size, or rank 0 of 1 outside torch.distributed."""
    if _active():
        return Ranks(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return Ranks()


def init_from_env(device: torch.device | str = "cpu", *, timeout_minutes: float = 60.0) -> Ranks:
    """Join the process group described by torchrun's environment variables, if any.

    Does nothing (rank 0 of 1) without WORLD_SIZE > 1, or when a group is already initialized
    (a caller that set up torch.distributed itself keeps its group). ``device`` picks the backend:
    nccl for CUDA, gloo otherwise.
    """
    if _active():
        return current()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"init_from_env: WORLD_SIZE={world} but {', '.join(missing)} not set; start the run with torchrun"
        )
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return current()


def owned(items: Sequence[T], ranks: Ranks | None = None) -> list[T]:
    """The items this rank handles: ``items[rank::world]`` (disjoint, deterministic, balanced)."""
    ranks = ranks or current()
    return list(items[ranks.rank :: ranks.world])


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks, in place (returned for chaining); a no-op on one rank.

    With nccl the tensor must be on this rank's CUDA device; with gloo on the CPU.
    """
    if _active() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    """Wait for every rank (no-op on one rank)."""
    if _active() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def broadcast_object(value: T, src: int = 0) -> T:
    """``value`` from rank ``src`` on every rank (a picklable object: only our own small records)."""
    if not (_active() and torch.distributed.get_world_size() > 1):
        return value
    box: list[Any] = [value]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def all_ranks_ok(ok: bool) -> bool:
    """True only if ``ok`` on every rank (so that one rank's failure stops all of them together)."""
    if not (_active() and torch.distributed.get_world_size() > 1):
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.SUM)
    return int(flag.item()) == 0


def log(message: str, ranks: Ranks | None = None) -> None:
    """Print ``message`` to stderr, prefixed with the rank when there is more than one."""
    ranks = ranks or current()
    prefix = f"[rank {ranks.rank}/{ranks.world}] " if ranks.world > 1 else ""
    print(f"{prefix}{message}", file=sys.stderr, flush=True)
