"""The model flags of every ``vision-kernels clip`` command: one definition for clip/cli.py and clip/scale_cli.py."""

from __future__ import annotations

import argparse

from .._cli import existing_file, nonnegative_int

__all__ = ["model_arguments"]


def model_arguments(parser: argparse.ArgumentParser, *, required: bool = True, seed: bool = False) -> None:
    """Add ``--model``, ``--pretrained`` | ``--checkpoint`` and ``--device`` (and ``--seed`` of random weights).

    Commands with ``seed`` (the decomposition runs) also take an open_clip config ``.json`` file as the model.
    """
    models = "open_clip model name (e.g. ViT-B-32)" + (", an open_clip model config .json file" if seed else "")
    parser.add_argument("--model", required=required, help=f"{models} or hf:<model id>")
    weights = parser.add_mutually_exclusive_group()
    random = " (default: random weights, see --seed)" if seed else ""
    weights.add_argument("--pretrained", help=f"open_clip pretrained tag (e.g. laion2b_s34b_b79k){random}")
    weights.add_argument("--checkpoint", type=existing_file, help="a state dict (.safetensors, or torch .pt/.bin)")
    if seed:
        parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of random weights (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu; cuda under torchrun uses nccl)")
