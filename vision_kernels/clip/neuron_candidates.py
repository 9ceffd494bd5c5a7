"""Top-k candidate sets of neuron effects: streaming selection and merging across shards and ranks.

A neuron's statistics (:class:`vision_kernels.clip.NeuronStatistics`) need its ``k`` images with the largest
centred effect norm ``|phi_n(I) - mean_n|``. Those are found by keeping, per neuron, a candidate set of at
most ``k`` ``(norm, image position, effect)`` triples and merging sets: a batch into the running set, the
sets of shards, the sets of ranks. The selection order is total and deterministic (larger norm first, then
the smaller image position), so any way of splitting the images (batches, shards, ranks) selects the same
images as one pass over all of them.

Across ranks only the candidates travel: every rank contributes its ``[k, Nn]`` norms and positions (summed
into a ``[world, k, Nn]`` table by all_reduce), all ranks select the same winners, and the winners' effects
``[k, Nn, E]`` are assembled by one more all_reduce in which each rank fills only the slots it owns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..runs import distributed

__all__ = ["Candidates", "select", "merge", "exchange_across_ranks", "centred_norms"]


@dataclass
class Candidates:
    """Per neuron, up to ``k`` candidates (rows), ordered by decreasing norm then increasing position.

    Attributes:
        norms: ``[k, Nn]`` float64 centred-effect norms (-1 marks an empty slot).
        positions: ``[k, Nn]`` int64 image positions in the whole image set (-1 for an empty slot).
        effects: ``[k, Nn, E]`` float32 raw (uncentred) effects, as computed.
    """

    norms: Tensor
    positions: Tensor
    effects: Tensor

    @property
    def size(self) -> int:
        return int(self.norms.shape[0])


def centred_norms(effects: Tensor, mean: Tensor) -> Tensor:
    """``[B, Nn]`` ``|effects - mean|`` computed in float64 (``effects [B, Nn, E]``, ``mean [Nn, E]``)."""
    return (effects.double() - mean).norm(dim=-1)


def select(norms: Tensor, positions: Tensor, k: int) -> Tensor:
    """``[min(k, n), Nn]`` row indices of the best candidates per neuron among ``norms, positions [n, Nn]``:
    larger norm first, ties to the smaller position (a total order: the result does not depend on row order)."""
    by_position = positions.argsort(dim=0, stable=True)  # [n, Nn]
    ordered_norms = norms.gather(0, by_position)
    by_norm = ordered_norms.argsort(dim=0, descending=True, stable=True)[: min(k, norms.shape[0])]
    return by_position.gather(0, by_norm)


def _take(rows: Tensor, norms: Tensor, positions: Tensor, effects: Tensor) -> Candidates:
    width = effects.shape[-1]
    return Candidates(
        norms.gather(0, rows),
        positions.gather(0, rows),
        effects.gather(0, rows[:, :, None].expand(-1, -1, width)),
    )


def merge(a: Candidates | None, norms: Tensor, positions: Tensor, effects: Tensor, k: int) -> Candidates:
    """The best ``k`` of candidate set ``a`` and new candidates ``norms, positions [n, Nn]``, ``effects [n, Nn, E]``."""
    if a is not None:
        norms = torch.cat([a.norms, norms])
        positions = torch.cat([a.positions, positions])
        effects = torch.cat([a.effects, effects])
    return _take(select(norms, positions, k), norms, positions, effects)


def _padded(local: Candidates | None, k: int, neurons: int, width: int) -> Candidates:
    """``local`` padded with empty slots (norm -1, position -1, zero effect) to exactly ``k`` rows."""
    norms = torch.full((k, neurons), -1.0, dtype=torch.float64)
    positions = torch.full((k, neurons), -1, dtype=torch.int64)
    effects = torch.zeros((k, neurons, width), dtype=torch.float32)
    if local is not None:
        n = local.size
        norms[:n], positions[:n], effects[:n] = local.norms.cpu(), local.positions.cpu(), local.effects.float().cpu()
    return Candidates(norms, positions, effects)


def exchange_across_ranks(local: Candidates | None, k: int, neurons: int, width: int) -> Candidates:
    """The global best ``k`` candidates per neuron from every rank's ``local`` set (identical on every rank).

    Only ``k`` candidates per neuron and rank are exchanged; on one rank this is the local set, padded.
    ``k`` must already be at most the number of images over all ranks, so no empty slot is selected.
    """
    ranks = distributed.current()
    mine = _padded(local, k, neurons, width)
    if ranks.world == 1:
        return mine
    table_norms = torch.zeros((ranks.world, k, neurons), dtype=torch.float64)
    table_positions = torch.zeros((ranks.world, k, neurons), dtype=torch.int64)
    table_norms[ranks.rank], table_positions[ranks.rank] = mine.norms, mine.positions
    distributed.all_reduce_sum(table_norms)  # every rank's candidates, by rank: [world, k, Nn]
    distributed.all_reduce_sum(table_positions)
    norms = table_norms.reshape(-1, neurons)  # [world * k, Nn]
    positions = table_positions.reshape(-1, neurons)
    rows = select(norms, positions, k)  # [k, Nn], the same on every rank
    owner, slot = rows // k, rows % k
    effects = torch.where(
        (owner == ranks.rank)[:, :, None],
        mine.effects.gather(0, slot[:, :, None].expand(-1, -1, width)),
        torch.zeros((), dtype=torch.float32),
    )  # [k, Nn, E]: this rank's winners, zero elsewhere
    distributed.all_reduce_sum(effects)
    return Candidates(norms.gather(0, rows), positions.gather(0, rows), effects)
