"""Optional dependencies: import on demand, and say which extra installs a missing one.

    open_clip = require("open_clip", feature="vision_kernels.clip.load_model")

raises, when open_clip is not installed::

    MissingDependencyError: vision_kernels.clip.load_model needs open_clip, which is not
    installed: pip install 'vision-kernels[clip]'
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingDependencyError", "require"]

# import name -> (distribution to install, extra of vision-kernels that brings it)
EXTRAS: dict[str, tuple[str, str]] = {
    "open_clip": ("open_clip_torch", "clip"),
    "transformers": ("transformers", "clip"),
    "torchvision": ("torchvision", "clip"),
    "sklearn": ("scikit-learn", "clip"),
    "faiss": ("faiss-cpu", "faiss"),
    "diffusers": ("diffusers", "diffusion"),
    "peft": ("peft", "diffusion"),
    "av": ("av", "video"),
    "webdataset": ("webdataset", "data"),
    "matplotlib": ("matplotlib", "figures"),
    "skimage": ("scikit-image", "demo"),
}


class MissingDependencyError(ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""


def require(module: str, *, feature: str) -> ModuleType:
    """Import ``module`` (e.g. ``"open_clip"`` or ``"faiss"``) for ``feature`` (the function or
    command that needs it), or raise :class:`MissingDependencyError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        distribution, extra = EXTRAS.get(top, (top, "all"))
        raise MissingDependencyError(
            f"{feature} needs {distribution}, which is not installed (or failed to import: {error}): "
            f"pip install 'vision-kernels[{extra}]'"
        ) from error
