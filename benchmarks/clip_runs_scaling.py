"""``clip decompose`` with 2 torchrun ranks against 1 process (gloo, CPU): images per second of each.

    python benchmarks/clip_runs_scaling.py [--images 256] [--batch-size 32] [--model ViT-B-32]

Generates a folder of random images, runs ``vision-kernels clip decompose`` once as one process and
once under ``torchrun --standalone --nproc-per-node 2`` (each rank with half the threads), checks that
both runs wrote byte-identical shards and prints the throughputs and their ratio. On a machine whose
cores are already busy the ratio says more about the load than about the code: report it as such.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers per rank")
    args = parser.parse_args()
    from vision_kernels.bench.cases.attention_decomp_runs import make_image_folder

    threads = os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="vk-clip-scaling-") as tmp:
        root = Path(tmp)
        images = make_image_folder(root / "images", args.images)
        common = [
            "clip",
            "decompose",
            "--model",
            args.model,
            "--images",
            str(images),
            "--batch-size",
            str(args.batch_size),
            "--workers",
            str(args.workers),
            "--shard-size",
            str(args.batch_size),
        ]
        env = dict(os.environ, VK_PROGRESS="0")
        one = _run(
            [sys.executable, "-m", "vision_kernels.cli", *common, "--out", str(root / "one")],
            dict(env, OMP_NUM_THREADS=str(threads)),
        )
        two = _run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                "2",
                "-m",
                "vision_kernels.cli",
                *common,
                "--out",
                str(root / "two"),
            ],
            dict(env, OMP_NUM_THREADS=str(max(1, threads // 2))),
        )
        same = all(
            (root / "one" / p.name).read_bytes() == p.read_bytes() for p in (root / "two").glob("shard-*.safetensors")
        )
        print(f"images: {args.images}, batch {args.batch_size}, model {args.model}, {threads} cores")
        print(f"1 process : {args.images / one:8.2f} images/s ({one:.1f} s, {threads} threads)")
        print(f"2 ranks   : {args.images / two:8.2f} images/s ({two:.1f} s, {max(1, threads // 2)} threads each)")
        print(f"2 ranks / 1 process: {one / two:.2f}x; shards byte-identical: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
