"""Progress bars for long work (tqdm), switchable off globally or with VK_PROGRESS=0."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_enabled = os.environ.get("VK_PROGRESS", "1").lower() not in {"0", "false", "no", "off"}


def set_progress(enabled: bool) -> None:
    """Turn progress bars of long-running methods on or off for this process."""
    global _enabled
    _enabled = bool(enabled)


def progress_enabled() -> bool:
    return _enabled


def progress(
    iterable: Iterable[T], *, desc: str, total: int | None = None, enabled: bool | None = None, **kwargs: Any
) -> Iterator[T]:
    """``tqdm(iterable)`` when progress is on (``enabled`` overrides the global switch).

    Under torch.distributed (torchrun sets RANK) only rank 0 shows bars by default.
    """
    show = (_enabled and os.environ.get("RANK", "0") == "0") if enabled is None else enabled
    if not show:
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, **kwargs)
