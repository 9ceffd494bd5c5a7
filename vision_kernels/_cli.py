"""Command-line conventions shared by every ``vision-kernels`` command (docs/DESIGN.md section 8).

- A user mistake prints one line, ``vision-kernels <command>: error: <message>``, and exits 2.
  The message names the argument with expected vs actual. Raise :class:`UsageError` (or any of
  :data:`USAGE_ERRORS`: ValueError, TypeError, FileNotFoundError, ...) before expensive work.
- A run that fails for another reason prints ``vision-kernels <command>: failed: <message>`` and
  exits 1; Ctrl-C exits 130.
- ``--debug`` (a global flag) shows the traceback instead.
- The argparse ``type=`` helpers below check numbers and paths while parsing, so mistakes are
  reported before any model is loaded.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._optional import MissingDependencyError

__all__ = [
    "UsageError",
    "USAGE_ERRORS",
    "run_handler",
    "forwarded",
    "positive_int",
    "nonnegative_int",
    "positive_float",
    "nonnegative_float",
    "finite_float",
    "fraction",
    "existing_file",
    "existing_folder",
    "output_file",
    "output_folder",
]


class UsageError(ValueError):
    """A mistake in a command's arguments or input files (exit status 2, one line, no traceback)."""


USAGE_ERRORS: tuple[type[BaseException], ...] = (
    UsageError,
    ValueError,
    TypeError,
    LookupError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    MissingDependencyError,
)


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError) and text.startswith("'") and text.endswith("'"):
        text = text[1:-1]
    return " ".join(text.split())


def run_handler(handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace, prog: str) -> int:
    """Call ``handler(args)`` under the conventions above and return the exit status."""
    debug = bool(getattr(args, "debug", False)) or os.environ.get("VK_DEBUG", "") not in ("", "0")
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except USAGE_ERRORS as error:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - the CLI's last line of defence, see module docstring
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (rerun with --debug for the traceback)"
        print(f"{prog}: failed: {type(error).__name__}: {_one_line(error)}{hint}", file=sys.stderr)
        return 1


def _number(kind: Callable[[str], float], text: str, what: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _checked(kind: Callable[[str], float], text: str, what: str, ok: Callable[[float], bool]) -> float:
    value = _number(kind, text, what)
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return int(_checked(int, text, "a positive integer", lambda v: v > 0))


def nonnegative_int(text: str) -> int:
    return int(_checked(int, text, "an integer >= 0", lambda v: v >= 0))


def finite_float(text: str) -> float:
    return float(_number(float, text, "a finite number"))


def positive_float(text: str) -> float:
    return float(_checked(float, text, "a finite number > 0", lambda v: v > 0))


def nonnegative_float(text: str) -> float:
    return float(_checked(float, text, "a finite number >= 0", lambda v: v >= 0))


def fraction(text: str) -> float:
    return float(_checked(float, text, "a number in [0, 1]", lambda v: 0 <= v <= 1))


def forwarded(args: argparse.Namespace, *names: str, **renamed: str) -> dict[str, Any]:
    """The keyword arguments a command hands to its Python function unchanged.

    ``forwarded(args, "seed", "scale", n_components="components")`` is
    ``{"seed": args.seed, "scale": args.scale, "n_components": args.components}``; a ``--quiet`` flag of the
    command becomes ``show_progress`` (False when quiet, else None: the global setting).
    """
    keywords = {name: getattr(args, name) for name in names}
    keywords.update({keyword: getattr(args, attribute) for keyword, attribute in renamed.items()})
    if hasattr(args, "quiet"):
        keywords.setdefault("show_progress", False if args.quiet else None)
    return keywords


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file, got the folder {text!r}")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {text!r} (permission denied)")
    return path


def existing_folder(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"no such folder: {text!r}" if not path.exists() else f"not a folder: {text!r}"
        )
    return path


def _writable_parent(path: Path, text: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder of {text!r} does not exist ({str(parent)!r})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {str(parent)!r} (permission denied)")


def output_file(suffixes: Sequence[str]) -> Callable[[str], Path]:
    """argparse type: a file path to write, with one of ``suffixes`` (lower case, with the dot),
    in an existing writable folder, and not a folder itself."""
    allowed = tuple(s.lower() for s in suffixes)

    def parse(text: str) -> Path:
        path = Path(text)
        if path.suffix.lower() not in allowed:
            raise argparse.ArgumentTypeError(
                f"expected a file name ending in {', '.join(allowed)}, got {text!r} (suffix {path.suffix or 'none'!r})"
            )
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"expected a file path, got the folder {text!r}")
        _writable_parent(path, text)
        return path

    return parse


def output_folder(text: str) -> Path:
    """argparse type: a folder to write into (created if missing; its parent must exist)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder, got the file {text!r}")
    if not path.exists():
        _writable_parent(path, text)
    elif not os.access(path, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {text!r} (permission denied)")
    return path
