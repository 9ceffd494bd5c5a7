"""``python -m vision_kernels.gpucheck.bench --jsonl PATH --budget SECONDS``: the device's ceilings, then the
cases of :mod:`.cases` one by one, one JSON line each, flushed as it goes (a run stopped by the time limit keeps
what it measured). A case is not started once the budget is spent; a contender that fails (out of memory, a
missing anchor) is reported with its error and the others still run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..bench.harness import Contenders, peak_memory, time_callable
from . import ceilings
from .cases import CASES, GpuCase


def _measure(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    try:
        ms = time_callable(fn, repeats=repeats, warmup=1, device="cuda")
        return {"ms": ms, "peak_mib": peak_memory(fn, "cuda")}
    except Exception as error:  # noqa: BLE001  (out of memory, a missing library: reported, not fatal)
        torch.cuda.empty_cache()
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"}


def run_case(case: GpuCase, limits: dict[str, float], repeats: int = 5) -> dict[str, Any]:
    row: dict[str, Any] = {"kernel": case.kernel, "case": case.name}
    try:
        contenders: Contenders = case.setup("cuda")
    except Exception as error:  # noqa: BLE001
        torch.cuda.empty_cache()
        return {**row, "error": f"setup: {type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    row["ours"] = _measure(contenders.ours, repeats)
    if contenders.reference is not None:
        row["reference"] = _measure(contenders.reference, repeats)
    row["anchors"] = {name: _measure(fn, repeats) for name, fn in contenders.anchors.items()}
    if "ms" in row["ours"]:
        fraction, ceiling = ceilings.fraction(contenders.flops, contenders.bytes_moved, row["ours"]["ms"], case.dtype,
                                              limits)  # fmt: skip
        row["fraction_of_ceiling"], row["ceiling"] = fraction, ceiling
    del contenders
    torch.cuda.empty_cache()
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vision_kernels.gpucheck.bench")
    parser.add_argument("--jsonl", required=True, help="append one JSON line per result here")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds; no case starts after that")
    parser.add_argument("--kernel", action="append", help="only this kernel's cases (repeatable)")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget
    with open(args.jsonl, "a") as out:

        def emit(record: dict[str, Any]) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        limits = ceilings.measure()
        from .cases import _faiss_gpu

        emit({"ceilings": limits, "device": torch.cuda.get_device_name(0), "faiss_gpu": _faiss_gpu() is not None})
        for case in CASES:
            if args.kernel and case.kernel not in args.kernel:
                continue
            if time.monotonic() > deadline:
                emit({"kernel": case.kernel, "case": case.name, "error": "not run: time budget spent"})
                continue
            print(f"gpu-check bench: {case.name}", file=sys.stderr, flush=True)
            emit(run_case(case, limits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
