"""The argument policies shared by the CLIP methods: decomposition conventions and layer indices."""

from __future__ import annotations

from ..ops._checks import ArgCheck

__all__ = ["CONVENTIONS", "check_convention", "layer_index"]

CONVENTIONS = ("per_term", "even_split")  # see vision_kernels.clip.decompose


def check_convention(convention: str, function: str) -> str:
    """``convention`` itself, or ValueError naming the argument when it is not one of :data:`CONVENTIONS`."""
    if convention not in CONVENTIONS:
        raise ValueError(f"{function}: argument 'convention' must be one of {CONVENTIONS}, got {convention!r}")
    return convention


def layer_index(value: object, num_layers: int, function: str, name: str, position: int | None = None) -> int:
    """A model layer index in ``[0, num_layers)`` (negative counts from the end; float/bool refused).

    Raises:
        TypeError: not an integer; IndexError: outside ``[-num_layers, num_layers)``, naming the argument
        (and the position in a list).
    """
    index = ArgCheck(function).integer(value, name)
    if not -num_layers <= index < num_layers:
        where = "" if position is None else f" at position {position}"
        raise IndexError(
            f"{function}: argument '{name}' must hold layer indices in [{-num_layers}, {num_layers}) for a "
            f"model with {num_layers} layers, got {index}{where}"
        )
    return index % num_layers
