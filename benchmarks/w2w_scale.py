#!/usr/bin/env python
"""weights2weights at real scale: a streaming PCA fit of a synthetic 20,000 x 99,648 float16 weight set.

    python benchmarks/w2w_scale.py                                  # full size (hours on a busy laptop)
    python benchmarks/w2w_scale.py --rows 2000 --dims 8000 --components 100 --subsample 600   # minutes
    python benchmarks/w2w_scale.py --workdir W --keep --reuse-data    # time again on the data of a kept run

1. **Data**: ``X = mu + sigma * (C B^T + noise * E)`` written once per run to ``WORKDIR/weights.safetensors``
   (float16, the layout of a real collect run's rows) row block by row block with one seeded
   generator per block: memory is one block however many rows. ``B``: ``[D, r]`` random directions,
   ``C``: ``[N, r]`` Gaussian coefficients with a decaying spectrum ``s_j = j^-1/2``, ``E`` i.i.d. noise.
2. **Fit**: ``fit_streaming`` with the two-pass operator (no ``N x N`` Gram cache) in a fresh process per
   rank count (``--ranks 1 2``; 2 ranks = ``torch.distributed.run --nproc-per-node 2``, gloo). Each
   process reports its wall time and peak RSS (``ru_maxrss``). The memory model: fixed part
   ``D x l`` (``W = Z^T Q``) + ``D x K`` (basis) + one row block; per-model part ``N x (4 l + 12 K)``
   bytes (sketches float32, coefficients float64 + float32). The script prints both, so a peak that
   grows faster with N than the per-model part shows.
3. **Quality**: on a subsample of ``S`` rows (every ``N / S``-th, read into memory): the exact PCA
   (``fit_exact``, float64 Gram eigendecomposition) and the same streaming fit; their explained
   variance must agree within 1%. Also reported: the variance of the subsample that the full fit's
   basis explains, against the exact subsample fit's (an upper bound: that basis is fitted to exactly
   those rows), and the agreement of the 1-rank and 2-rank spaces.

Writes ``--json`` with every figure. Timings depend on the machine's load: label them so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def generate(path: Path, rows: int, dims: int, rank: int, noise: float, block: int = 512, seed: int = 0) -> dict:
    """Stream the planted weights to ``path`` (float16 safetensors); returns what was planted."""
    from vision_kernels.weightspace import MatrixWriter

    base = torch.Generator().manual_seed(seed)
    directions = torch.randn(dims, rank, generator=base) / math.sqrt(dims)  # [D, r], nearly orthonormal
    spectrum = torch.arange(1, rank + 1, dtype=torch.float32).pow(-0.5) * 3.0  # [r]
    mean = torch.randn(dims, generator=base) * 1e-2  # [D]
    sigma = torch.rand(dims, generator=base) * 2e-2 + 5e-3  # [D]
    start_time = time.perf_counter()
    with MatrixWriter(path, rows, dims, torch.float16, {"planted": json.dumps({"rank": rank, "noise": noise})}) as w:
        for start in range(0, rows, block):
            count = min(block, rows - start)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + 1 + start)
            x = (torch.randn(count, rank, generator=generator) * spectrum) @ directions.T  # [b, D]
            x.add_(torch.randn(count, dims, generator=generator), alpha=noise)
            w.append(x.mul_(sigma).add_(mean))
    signal = float(spectrum.square().sum())  # expected ||C_i B^T||^2 per row ~ sum s_j^2 (|B_j| ~ 1)
    return {
        "seconds": time.perf_counter() - start_time,
        "bytes": path.stat().st_size,
        "rank": rank,
        "noise": noise,
        "planted_signal_fraction": signal / (signal + noise**2 * dims),
        "peak_rss_mb": _peak_rss_mb(),
    }


def planted_weights(weights: Path, args: argparse.Namespace) -> dict:
    """The planted weight file: generated, or reused when ``--reuse-data`` finds one written with the
    same settings (the sidecar ``weights.json`` records them; it is written after the data, so a run
    killed while generating leaves no sidecar and is generated again)."""
    sidecar = weights.with_suffix(".json")
    settings = {"rows": args.rows, "dims": args.dims, "rank": args.planted_rank, "noise": args.noise, "seed": args.seed}
    if args.reuse_data and weights.exists() and sidecar.exists():
        recorded = json.loads(sidecar.read_text())
        if recorded.get("settings") == settings and recorded["data"]["bytes"] == weights.stat().st_size:
            print(f"reusing {weights} (generated with the same settings)", flush=True)
            return {**recorded["data"], "reused": True}
    print(f"generating {args.rows} x {args.dims} float16 -> {weights}", flush=True)
    data = generate(weights, args.rows, args.dims, args.planted_rank, args.noise, seed=args.seed)
    sidecar.write_text(json.dumps({"settings": settings, "data": data}))
    return data


def fit_worker(args: argparse.Namespace) -> None:
    """One process (or one torchrun rank) of the fit: time, peak RSS, the space (rank 0 saves it)."""
    from vision_kernels.runs import distributed
    from vision_kernels.weightspace import fit_streaming

    ranks = distributed.init_from_env()
    torch.set_num_threads(max(1, args.threads // ranks.world))
    distributed.barrier()
    start = time.perf_counter()
    space = fit_streaming(
        args.weights,
        args.components,
        n_iter=args.power_iterations,
        memory=int(args.memory_gb * 2**30),
        gram_memory=0,
        seed=args.seed,
        show_progress=args.progress and ranks.main,
    )
    seconds = time.perf_counter() - start
    report = {"rank": ranks.rank, "world": ranks.world, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}
    Path(f"{args.report}.rank{ranks.rank}.json").write_text(json.dumps(report))
    if ranks.main:
        space.save(args.space)
    distributed.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_fit(args: argparse.Namespace, weights: Path, world: int) -> dict:
    space = args.workdir / f"space-{world}rank.safetensors"
    report = args.workdir / f"fit-{world}rank"
    worker = [
        str(HERE), "--worker", "--weights", str(weights), "--space", str(space), "--report", str(report),
        "--components", str(args.components), "--power-iterations", str(args.power_iterations),
        "--memory-gb", str(args.memory_gb), "--seed", str(args.seed), "--threads", str(args.threads),
    ]  # fmt: skip
    if args.progress:
        worker.append("--progress")
    if world == 1:
        command = [sys.executable, *worker]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
            "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *worker,
        ]  # fmt: skip
    load_before = os.getloadavg()
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    reports = [json.loads(Path(f"{report}.rank{r}.json").read_text()) for r in range(world)]
    return {
        "ranks": world,
        "wall_seconds": wall,
        "fit_seconds": max(r["seconds"] for r in reports),
        "peak_rss_mb_per_rank": [r["peak_rss_mb"] for r in reports],
        "space": str(space),
        "loadavg_1_5_15_before": [round(x, 2) for x in load_before],
        "loadavg_1_5_15_after": [round(x, 2) for x in load_after],
    }


def memory_model(rows: int, dims: int, components: int, oversample: int, memory_gb: float, world: int) -> dict:
    width = components + oversample
    block_rows = max(1, int(memory_gb * 2**30 * 0.25) // (4 * dims))
    fixed = 4 * dims * width + 4 * dims * components + block_rows * dims * (4 + 2)
    per_model = rows * (4 * width * 3 + 12 * components)
    return {
        "block_rows": block_rows,
        "fixed_mb": fixed / 2**20,
        "per_model_mb": per_model / 2**20,
        "per_model_bytes_per_row": per_model / rows,
        "predicted_mb_per_rank": (fixed + per_model) / 2**20,
        "world": world,
    }


def explained(z_rows: torch.Tensor, space) -> float:
    """Fraction of the variance of ``z_rows`` (standardized with the space's own mean/std) in the span of its basis."""
    z = (z_rows.double() - space.mean.double()) / space.std.double()
    return float((z @ space.basis.double()).square().sum() / z.square().sum())


def quality(args: argparse.Namespace, weights: Path, spaces: dict[int, Path]) -> dict:
    from vision_kernels.weightspace import FileRows, WeightSpace, fit_exact, fit_streaming, principal_angles

    rows = FileRows(weights)
    step = max(1, rows.shape[0] // args.subsample)
    picked = list(range(0, rows.shape[0], step))[: args.subsample]
    sample = torch.cat([rows.read(i, i + 1) for i in picked]).float()  # [S, D]
    k = min(args.components, sample.shape[0] - 1)
    start = time.perf_counter()
    exact = fit_exact(sample, k, show_progress=False)
    exact_seconds = time.perf_counter() - start
    streamed = fit_streaming(
        sample, k, n_iter=args.power_iterations, gram_memory=0, seed=args.seed, show_progress=False
    )
    ev_exact = float(exact.explained_variance_ratio.sum())
    ev_streamed = float(streamed.explained_variance_ratio.sum())
    result: dict = {
        "subsample_rows": sample.shape[0],
        "components": k,
        "exact_seconds": exact_seconds,
        "explained_variance_exact": ev_exact,
        "explained_variance_streaming": ev_streamed,
        "relative_gap": (ev_streamed - ev_exact) / ev_exact,
        "within_1_percent": abs(ev_streamed - ev_exact) <= 0.01 * ev_exact,
    }
    if 1 in spaces:
        full = WeightSpace.load(spaces[1])
        result["full_fit_explained_variance"] = float(full.explained_variance_ratio.sum())
        result["full_basis_on_subsample"] = explained(sample, full.truncate(k) if full.n_components > k else full)
        result["exact_subsample_basis_on_subsample"] = ev_exact
    if 1 in spaces and 2 in spaces:
        one, two = WeightSpace.load(spaces[1]), WeightSpace.load(spaces[2])
        top = min(10, one.n_components)
        result["ranks_1_vs_2"] = {
            "singular_values_max_relative_difference": float(
                ((one.singular_values - two.singular_values).abs() / one.singular_values).max()
            ),
            "largest_principal_angle_top10": float(principal_angles(one.basis[:, :top], two.basis[:, :top]).max()),
            "explained_variance": [
                float(one.explained_variance_ratio.sum()),
                float(two.explained_variance_ratio.sum()),
            ],
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="N models (default 20,000)")
    parser.add_argument("--dims", type=int, default=99_648, help="D dimensions (default 99,648)")
    parser.add_argument("--components", type=int, default=1000, help="K components (default 1,000)")
    parser.add_argument("--planted-rank", type=int, default=256, help="rank r of the planted signal")
    parser.add_argument("--noise", type=float, default=0.01, help="noise level of the planted model")
    parser.add_argument("--power-iterations", type=int, default=2, help="power iterations of the fit (default 2)")
    parser.add_argument("--memory-gb", type=float, default=1.0, help="row-block budget of the fit (GiB)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts to time (default 1 2)")
    parser.add_argument("--subsample", type=int, default=2000, help="rows of the exact check (default 2,000)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads in total")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("w2w_scale_work"), help="folder for data and spaces")
    parser.add_argument("--keep", action="store_true", help="keep the weight file afterwards")
    parser.add_argument(
        "--reuse-data", action="store_true", help="reuse WORKDIR's weight file if it was generated with these settings"
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    # worker mode (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--space", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        fit_worker(args)
        return 0

    args.workdir.mkdir(parents=True, exist_ok=True)
    weights = args.workdir / "weights.safetensors"
    figures: dict = {"rows": args.rows, "dims": args.dims, "components": args.components}
    # A quiet machine shows a load average near the run's own thread count before and after each fit.
    figures["data"] = planted_weights(weights, args)
    print(json.dumps(figures["data"]), flush=True)
    spaces = {}
    figures["fits"] = []
    for world in args.ranks:
        print(f"fitting with {world} rank(s)", flush=True)
        fit = run_fit(args, weights, world)
        fit["memory_model"] = memory_model(args.rows, args.dims, args.components, 10, args.memory_gb, world)
        figures["fits"].append(fit)
        spaces[world] = Path(fit["space"])
        print(json.dumps(fit), flush=True)
    print(f"exact check on a subsample of {args.subsample} rows", flush=True)
    figures["quality"] = quality(args, weights, spaces)
    print(json.dumps(figures["quality"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    if not args.keep:
        weights.unlink()
        weights.with_suffix(".json").unlink(missing_ok=True)
    return 0 if figures["quality"]["within_1_percent"] else 1


if __name__ == "__main__":
    sys.exit(main())
