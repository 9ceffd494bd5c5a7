"""Batch mode of the ``gpnn`` / ``vgpnn`` commands: many inputs, outputs skipped when present, ranks.

    vision-kernels gpnn generate photos/ -o samples/ --count 4
    vision-kernels gpnn generate 'photos/*.jpg' -o samples/
    torchrun --nproc-per-node 2 -m vision_kernels.cli gpnn generate photos/ -o samples/ --count 4

An input argument is a file, a folder (its files with the given suffixes, in natural order) or a
glob pattern. A command whose inputs expand to several files, or that writes into an output
folder, runs in batch mode: every (input, sample) pair is one job writing one output file named
``<input stem>[_<sample>]<suffix>`` in the output folder. Jobs are split over the ranks of a
torchrun launch (:func:`vision_kernels.runs.distributed.owned`, round robin, the same split on
every rank since it is computed before any output exists); a job whose output exists is skipped:
outputs are written atomically, so an existing output is a complete one (``--overwrite`` redoes
them). A failing input is reported and the others go on; the command then exits 1 (2 if every
failure was a usage error such as a corrupt input) with the list.
"""

from __future__ import annotations

import argparse
import glob
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .._cli import USAGE_ERRORS, UsageError

__all__ = ["OneLineParser", "Job", "expand_inputs", "plan_jobs", "run_jobs", "natural_key"]


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``prog: error: message``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def natural_key(path: Path) -> tuple[Any, ...]:
    """Sort key putting ``2.png`` before ``10.png``."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name))


def _has_magic(text: str) -> bool:
    return glob.has_magic(text)


def _listed(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes),
        key=natural_key,
    )


def expand_inputs(
    texts: Sequence[str],
    suffixes: Sequence[str],
    *,
    argument: str,
    folder_is_item: Callable[[Path], bool] | None = None,
) -> tuple[list[Path], bool]:
    """The input files named by ``texts`` and whether this is a batch.

    Each text is a file, a glob pattern (matches in natural order) or a folder (its files whose
    suffix is in ``suffixes``; with ``folder_is_item(folder)`` True the folder itself is one input,
    e.g. a folder of video frames). Batch: more than one text, a pattern or an expanded folder.

    Raises:
        UsageError: naming ``argument``: a path that does not exist, a pattern that matches
            nothing, a folder without inputs, the same file twice.
    """
    files: list[Path] = []
    batch = len(texts) > 1
    for text in texts:
        path = Path(text)
        if path.exists() and not path.is_dir():
            files.append(path)
        elif path.is_dir():
            if folder_is_item is not None and folder_is_item(path):
                files.append(path)
                continue
            found = _listed(path, suffixes)
            if not found:
                raise UsageError(f"{argument}: the folder {text!r} holds no input files ({', '.join(suffixes)})")
            files.extend(found)
            batch = True
        elif _has_magic(text):
            found = sorted((Path(p) for p in glob.glob(text)), key=lambda p: (str(p.parent), natural_key(p)))
            found = [p for p in found if p.is_file() or (folder_is_item is not None and folder_is_item(p))]
            if not found:
                raise UsageError(f"{argument}: the pattern {text!r} matches no input file")
            files.extend(found)
            batch = True
        else:
            raise UsageError(f"{argument}: no such file or folder: {text!r}")
    seen: set[Path] = set()
    for file in files:
        key = file.resolve()
        if key in seen:
            raise UsageError(f"{argument}: {str(file)!r} is given twice")
        seen.add(key)
    return files, batch


@dataclass(frozen=True)
class Job:
    """One output: sample ``sample`` (seed ``seed``) of ``source`` written to ``output``."""

    source: Path
    sample: int
    seed: int
    output: Path


def numbered(path: Path, index: int, count: int) -> Path:
    """``out.png`` for a single sample, ``out_<index>.png`` for several."""
    return path if count == 1 else path.with_name(f"{path.stem}_{index}{path.suffix}")


def plan_jobs(
    sources: Sequence[Path], *, batch: bool, output: Path, count: int, seed: int, suffix: str, argument: str = "-o"
) -> list[Job]:
    """The jobs of a command: in batch mode one per (source, sample) in the folder ``output``, named
    ``<stem>[_<sample>]<suffix>``; otherwise the samples of the one source at ``output`` (numbered).

    Raises:
        UsageError: batch mode with an output that is an existing file or has a file suffix, or two
            sources with the same stem (their outputs would collide).
    """
    if not batch:
        return [Job(sources[0], i, seed + i, numbered(output, i, count)) for i in range(count)]
    if output.exists() and not output.is_dir():
        raise UsageError(f"{argument}: several inputs need an output folder, got the file {str(output)!r}")
    stems: dict[str, Path] = {}
    for source in sources:
        stem = source.stem if source.is_file() else source.name
        if stem in stems:
            raise UsageError(
                f"{argument}: inputs {str(stems[stem])!r} and {str(source)!r} would both write "
                f"{stem}{suffix} into {str(output)!r}; rename one"
            )
        stems[stem] = source
    return [
        Job(source, i, seed + i, numbered(output / f"{stem}{suffix}", i, count))
        for stem, source in stems.items()
        for i in range(count)
    ]


def run_jobs(
    jobs: Sequence[Job],
    work: Callable[[Job], str],
    *,
    batch: bool,
    overwrite: bool,
    command: str,
    quiet: bool = False,
) -> int:
    """Run ``work(job)`` (which writes ``job.output`` atomically and returns a description) for this
    rank's jobs; in batch mode skip existing outputs and collect failures. Returns 0.

    Outside batch mode a failure propagates (the CLI turns it into exit status 2 or 1). Under
    torchrun the process group is joined here and left at the end; every rank reports its own
    outputs (prefixed with its rank) and the command fails on every rank if any rank failed.
    """
    from .._progress import progress
    from ..runs import distributed

    if not batch:
        for job in jobs:
            started = time.perf_counter()
            what = work(job)
            print(f"{command}: wrote {job.output} ({what}, {time.perf_counter() - started:.1f} s)", flush=True)
        return 0
    already = distributed.current().world > 1
    ranks = distributed.init_from_env()
    joined = ranks.world > 1 and not already  # leave the group only if this call joined it
    try:
        mine = distributed.owned(list(jobs), ranks)
        if ranks.main:
            distributed.log(f"{command}: {len(jobs)} outputs, {ranks.world} rank(s)", ranks)
        done = skipped = 0
        failures: list[tuple[Job, BaseException]] = []
        for job in progress(mine, desc=command, enabled=False if quiet else None):
            if job.output.exists() and not overwrite:
                skipped += 1
                continue
            started = time.perf_counter()
            try:
                what = work(job)
            except KeyboardInterrupt:
                raise
            except Exception as error:  # noqa: BLE001 - one bad input must not stop the batch
                failures.append((job, error))
                distributed.log(f"{command}: {job.source}: error: {' '.join(str(error).split())}", ranks)
                continue
            done += 1
            distributed.log(f"{command}: wrote {job.output} ({what}, {time.perf_counter() - started:.1f} s)", ranks)
        distributed.log(
            f"{command}: {done} written, {skipped} skipped, {len(failures)} failed (skipped: outputs already there)",
            ranks,
        )
        all_ok = distributed.all_ranks_ok(not failures)
    finally:
        if joined:
            import torch.distributed

            torch.distributed.destroy_process_group()
    if failures:
        names = ", ".join(sorted({str(job.source) for job, _ in failures}))
        if all(isinstance(error, USAGE_ERRORS) for _, error in failures):
            raise UsageError(f"{len(failures)} output(s) failed on bad inputs: {names}")
        raise RuntimeError(f"{len(failures)} output(s) failed: {names} (see the messages above)")
    if not all_ok:
        raise RuntimeError("another rank reported failed outputs (see its messages)")
    return 0
