"""The canonical, recorded layout of a LoRA adapter as one flat weight vector.

A LoRA adapter on a model adds ``scaling * B @ A`` to the weight of each targeted Linear, with
``A: [r, in]`` and ``B: [out, r]``. weights2weights treats a customized model as the vector of all
its A and B entries. The layout fixes that vector's order once and for all:

* modules sorted by name as strings (``down_blocks... < mid_block... < up_blocks...``), the order
  of the keys in a safetensors file, so the vector of a peft adapter is the concatenation of its
  file's tensors as ``peft.utils.load_peft_weights`` returns them (the order the weights2weights
  release used for its 99,648-dimensional vectors of rank-1 LoRAs on ``to_q``/``to_v`` of
  Stable Diffusion 1.5's UNet);
* within a module, ``A`` before ``B``, each flattened row-major.

The layout also records what is needed to rebuild an adapter that diffusers and peft load
unchanged: the rank ``r``, ``lora_alpha``, rsLoRA scaling and the base model id. Two adapters can
share a weight space only if their layouts are equal; :meth:`LoraLayout.difference` says why not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["LoraEntry", "LoraLayout"]

PARTS = ("A", "B")


@dataclass(frozen=True)
class LoraEntry:
    """One tensor of the layout: ``module`` (e.g. ``mid_block.attentions.0...attn1.to_q``), ``part``
    (``"A"``: ``[r, in]``, ``"B"``: ``[out, r]``) and its shape."""

    module: str
    part: str
    shape: tuple[int, int]

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass(frozen=True)
class LoraLayout:
    """Order, shapes and LoRA hyper-parameters of flattened adapters (see the module docstring).

    Attributes:
        entries: every (module, part, shape) in vector order.
        rank: the LoRA rank r shared by every module.
        alpha: ``lora_alpha``; the update is ``scaling * B @ A`` with ``scaling = alpha / r``
            (``alpha / sqrt(r)`` with ``use_rslora``).
        use_rslora: rank-stabilized scaling.
        base_model: the model id the adapters were trained on (e.g. a Stable Diffusion 1.5 id), or None.
    """

    entries: tuple[LoraEntry, ...]
    rank: int
    alpha: float
    use_rslora: bool = False
    base_model: str | None = None
    _offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        offsets = [0]
        for entry in self.entries:
            offsets.append(offsets[-1] + entry.numel)
        object.__setattr__(self, "_offsets", tuple(offsets))

    # ------------------------------------------------------------ construction

    @classmethod
    def from_tensors(
        cls,
        tensors: Mapping[tuple[str, str], Tensor],
        *,
        rank: int | None = None,
        alpha: float | None = None,
        use_rslora: bool = False,
        base_model: str | None = None,
        source: str = "adapter",
    ) -> LoraLayout:
        """Layout of ``{(module, "A" | "B"): tensor}``; checks that every module has both parts and one rank.

        ``rank`` defaults to the rank found in the tensors, ``alpha`` to the rank (diffusers' and
        peft's default when no alpha was saved).
        """
        modules = sorted({module for module, _ in tensors})
        if not modules:
            raise ValueError(f"vision_kernels.weightspace: {source} holds no LoRA weights")
        entries = []
        ranks = set()
        for module in modules:
            for part in PARTS:
                if (module, part) not in tensors:
                    raise ValueError(
                        f"vision_kernels.weightspace: {source} has lora_{part} missing for module '{module}'"
                    )
                tensor = tensors[(module, part)]
                if tensor.dim() != 2:
                    raise ValueError(
                        f"vision_kernels.weightspace: {source}: lora_{part} of '{module}' must be 2-D, "
                        f"got shape {list(tensor.shape)} (LoRA on convolutions is not supported)"
                    )
                entries.append(LoraEntry(module, part, (int(tensor.shape[0]), int(tensor.shape[1]))))
            a_rank, b_rank = tensors[(module, "A")].shape[0], tensors[(module, "B")].shape[1]
            if a_rank != b_rank:
                raise ValueError(
                    f"vision_kernels.weightspace: {source}: module '{module}' has lora_A rank {a_rank} "
                    f"but lora_B rank {b_rank}"
                )
            ranks.add(int(a_rank))
        if len(ranks) > 1:
            raise ValueError(
                f"vision_kernels.weightspace: {source} mixes LoRA ranks {sorted(ranks)} across modules; "
                "a weight space needs one rank"
            )
        found = ranks.pop()
        if rank is not None and rank != found:
            raise ValueError(
                f"vision_kernels.weightspace: {source}: its config says r={rank} but the weights have rank {found}"
            )
        return cls(tuple(entries), found, float(alpha if alpha is not None else found), use_rslora, base_model)

    # ------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        """Length D of the flattened vector."""
        return self._offsets[-1]

    @property
    def modules(self) -> list[str]:
        return [entry.module for entry in self.entries[::2]]

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def span(self, index: int) -> tuple[int, int]:
        """``[start, stop)`` of entry ``index`` in the vector."""
        return self._offsets[index], self._offsets[index + 1]

    def locate(self, dimension: int) -> str:
        """Human-readable position of vector element ``dimension`` (module, part, row, column)."""
        if not 0 <= dimension < self.dim:
            raise IndexError(f"vision_kernels.weightspace: dimension {dimension} is outside [0, {self.dim})")
        index = next(i for i in range(len(self.entries)) if self._offsets[i + 1] > dimension)
        entry = self.entries[index]
        row, column = divmod(dimension - self._offsets[index], entry.shape[1])
        return f"{entry.module}.lora_{entry.part}[{row}, {column}]"

    # ------------------------------------------------------------ vector <-> tensors

    def flatten(self, tensors: Mapping[tuple[str, str], Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
        """The ``[D]`` vector of ``{(module, part): tensor}`` in layout order (shapes must match)."""
        pieces = []
        for entry in self.entries:
            tensor = tensors.get((entry.module, entry.part))
            if tensor is None:
                raise KeyError(f"vision_kernels.weightspace: no tensor for {entry.module}.lora_{entry.part}")
            if tuple(tensor.shape) != entry.shape:
                raise ValueError(
                    f"vision_kernels.weightspace: {entry.module}.lora_{entry.part} has shape {list(tensor.shape)}, "
                    f"the layout expects {list(entry.shape)}"
                )
            pieces.append(tensor.detach().reshape(-1).to(dtype))
        return torch.cat(pieces)

    def unflatten(self, vector: Tensor) -> dict[tuple[str, str], Tensor]:
        """``{(module, part): view}`` of a ``[D]`` vector (views share its memory and its autograd graph)."""
        if vector.dim() != 1 or vector.shape[0] != self.dim:
            raise ValueError(
                f"vision_kernels.weightspace: a weight vector of this layout must have shape [{self.dim}], "
                f"got {list(vector.shape)}"
            )
        return {
            (entry.module, entry.part): vector[self._offsets[i] : self._offsets[i + 1]].view(entry.shape)
            for i, entry in enumerate(self.entries)
        }

    # ------------------------------------------------------------ comparison

    def difference(self, other: LoraLayout) -> str | None:
        """None if both layouts are interchangeable, else a description of the first differences."""
        if self.rank != other.rank:
            return f"LoRA rank {self.rank} vs {other.rank}"
        if not math.isclose(self.alpha, other.alpha):
            return f"lora_alpha {self.alpha:g} vs {other.alpha:g}"
        if self.use_rslora != other.use_rslora:
            return f"use_rslora {self.use_rslora} vs {other.use_rslora}"
        mine, theirs = set(self.modules), set(other.modules)
        if mine != theirs:
            missing, extra = sorted(mine - theirs), sorted(theirs - mine)
            parts = []
            if missing:
                parts.append(f"{len(missing)} module(s) missing, e.g. '{missing[0]}'")
            if extra:
                parts.append(f"{len(extra)} extra module(s), e.g. '{extra[0]}'")
            return "different target modules: " + "; ".join(parts)
        for a, b in zip(self.entries, other.entries, strict=True):
            if a.shape != b.shape:
                return f"{a.module}.lora_{a.part} has shape {list(a.shape)} vs {list(b.shape)}"
        return None

    # ------------------------------------------------------------ serialization

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": "vision_kernels.lora_layout/1",
                "rank": self.rank,
                "alpha": self.alpha,
                "use_rslora": self.use_rslora,
                "base_model": self.base_model,
                "entries": [[e.module, e.part, list(e.shape)] for e in self.entries],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> LoraLayout:
        data = json.loads(text)
        if data.get("format") != "vision_kernels.lora_layout/1":
            raise ValueError(f"vision_kernels.weightspace: not a LoRA layout record (format {data.get('format')!r})")
        entries = tuple(
            LoraEntry(module, part, (int(shape[0]), int(shape[1]))) for module, part, shape in data["entries"]
        )
        return cls(entries, int(data["rank"]), float(data["alpha"]), bool(data["use_rslora"]), data.get("base_model"))

    def describe(self) -> str:
        return f"{len(self.modules)} LoRA modules, rank {self.rank}, alpha {self.alpha:g}, {self.dim} dimensions" + (
            f", base model {self.base_model}" if self.base_model else ""
        )


def target_names(layout: LoraLayout) -> Sequence[str]:
    """Full module names, usable as peft ``target_modules`` that match exactly these modules."""
    return layout.modules
