"""Safe file handling: atomic saves, whole-folder replacement, stale temporaries, contained paths.

The rules (docs/DESIGN.md section 8) that every function writing a user's file follows:

- A save never loses the previous file. The new content is written beside the target under a
  temporary name (``.<name>.vk-tmp-<host>-<pid>-<random><suffix>``, same folder, so same file system),
  flushed and fsync'ed, then renamed over the target with :func:`os.replace` (atomic on POSIX),
  and the folder entry is fsync'ed. A process killed at any moment leaves either the old file or
  the new one under the final name, never a truncated one.
- A folder (an index, a run) is replaced as a whole: it is built under a temporary name and
  swapped in with one ``renameat2(RENAME_EXCHANGE)`` where the kernel has it (two renames
  elsewhere), then the old copy is removed.
- Temporaries of killed runs carry their writer's pid; :func:`clean_stale_temporaries` removes
  those whose process is gone, and every atomic save calls it for its folder.
- Loading opens only files inside the folder being loaded (:func:`contained_path`).

Usage::

    with atomic_path("out.png") as tmp:      # tmp keeps the suffix: libraries that pick the
        image.save(tmp)                       # format from it (PIL, av, faiss) work unchanged
    with atomic_open("meta.json", "w") as f:
        json.dump(meta, f)
    with atomic_folder("db/") as tmp_dir:     # fill tmp_dir; "db/" is replaced on success
        ...
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_path",
    "atomic_open",
    "atomic_folder",
    "clean_stale_temporaries",
    "contained_path",
    "file_sha256",
    "fsync_directory",
    "is_temporary_name",
]

_TEMP_MARK = ".vk-tmp-"
# The host tag keeps a rank on one machine from removing another machine's live temporaries in a
# shared folder: only temporaries made on this host, by a process that is gone, are stale.
_HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
_TEMP_PATTERN = re.compile(r"^\..*\.vk-tmp-([0-9a-f]{6})-(\d+)-[0-9a-f]+")


def is_temporary_name(name: str) -> bool:
    """True for names made by :func:`atomic_path` / :func:`atomic_folder` (to skip when listing)."""
    return _TEMP_PATTERN.match(name) is not None


def _temporary_sibling(path: Path) -> Path:
    # The temporary keeps the final suffix so format-by-extension writers still work.
    token = secrets.token_hex(4)
    return path.with_name(f".{path.stem}{_TEMP_MARK}{_HOST_TAG}-{os.getpid()}-{token}{path.suffix}")


def fsync_directory(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - some file systems refuse to open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - e.g. fsync on a folder unsupported
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_file(Path(folder) / name)
        fsync_directory(folder)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's live process
        return True
    return True


def clean_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries that killed writers left in ``folder``; return what was removed.

    A temporary whose writer (the pid in its name) is still running is left alone.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMP_PATTERN.match(entry.name)
        if match is None or match.group(1) != _HOST_TAG or _pid_alive(int(match.group(2))):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def _check_parent(path: Path, function: str) -> None:
    parent = path.parent
    if not parent.exists():
        raise FileNotFoundError(f"{function}: the folder of {str(path)!r} does not exist ({str(parent)!r})")
    if not parent.is_dir():
        raise NotADirectoryError(f"{function}: {str(parent)!r} (the folder of {str(path)!r}) is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{function}: cannot write into {str(parent)!r} (permission denied)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, function: str = "atomic_path") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsync'ed and renamed to ``path``.

    On an exception the temporary is removed and ``path`` is untouched. ``function`` names the
    caller in error messages.
    """
    target = Path(path)
    _check_parent(target, function)
    if target.is_dir():
        raise IsADirectoryError(f"{function}: {str(target)!r} is a folder, expected a file path")
    clean_stale_temporaries(target.parent)
    temporary = _temporary_sibling(target)
    try:
        yield temporary
        if not temporary.exists():
            raise RuntimeError(f"{function}: nothing was written for {str(target)!r}")
        _fsync_file(temporary)
        os.replace(temporary, target)
        fsync_directory(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            if temporary.is_dir():
                shutil.rmtree(temporary)
            else:
                temporary.unlink()
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "wb", *, function: str = "atomic_open", **kwargs: Any
) -> Iterator[IO[Any]]:
    """``open(path, mode)`` for writing, made atomic: see :func:`atomic_path`."""
    if not mode.startswith("w"):
        raise ValueError(f"{function}: mode must be a write mode ('w', 'wb', 'wt'), got {mode!r}")
    with atomic_path(path, function=function) as temporary, open(temporary, mode, **kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system cannot."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:  # pragma: no cover
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # pragma: no cover - glibc < 2.28
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # pragma: no cover - file system without it
        return False
    raise OSError(code, os.strerror(code), str(a))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str], *, function: str = "atomic_folder") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` whole.

    An existing ``path`` (a folder) is swapped out in one atomic exchange where the kernel
    supports it and removed afterwards; a reader sees the old folder or the new one, never a mix.
    """
    target = Path(path)
    _check_parent(target, function)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{function}: {str(target)!r} exists and is not a folder")
    clean_stale_temporaries(target.parent)
    temporary = _temporary_sibling(target)
    temporary.mkdir()
    try:
        yield temporary
        _fsync_tree(temporary)
        if target.exists():
            if _exchange(temporary, target):
                old = temporary  # after the exchange the temporary name holds the old folder
            else:  # pragma: no cover - exercised only where renameat2 is missing
                old = _temporary_sibling(target)
                os.rename(target, old)
                os.rename(temporary, target)
            fsync_directory(target.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temporary, target)
            fsync_directory(target.parent)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def contained_path(folder: str | os.PathLike[str], name: str, *, function: str, field: str) -> Path:
    """``folder / name`` after checking that it stays inside ``folder`` (no ``..``, no absolute path,
    no symlink leading out). ``field`` names where ``name`` came from, for the error message."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{function}: {field} in {str(folder)!r} must be a non-empty file name, got {name!r}")
    root = Path(folder).resolve()
    candidate = (root / name).resolve()
    if Path(name).is_absolute() or (candidate != root and root not in candidate.parents):
        raise ValueError(
            f"{function}: {field} {name!r} in {str(folder)!r} points outside the folder; refusing to open it"
        )
    return candidate


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes (read in 4 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path: str | os.PathLike[str], text: str, *, function: str = "write_text_atomic") -> Path:
    """``Path(path).write_text(text)`` (UTF-8), made atomic: see :func:`atomic_path`."""
    with atomic_open(path, "w", encoding="utf-8", function=function) as handle:
        handle.write(text)
    return Path(path)


def save_figure(figure: Any, path: str | os.PathLike[str], **options: Any) -> Path:
    """``figure.savefig(path, **options)`` for a matplotlib figure, made atomic (the format comes from
    the suffix, which the temporary keeps)."""
    with atomic_path(path, function="save_figure") as temporary:
        figure.savefig(temporary, format=Path(path).suffix.lstrip(".") or None, **options)
    return Path(path)
