"""``vision-kernels clip`` subcommands for neurons and the CLIP-InterpreT database (issue 13 items 5 and 6).

    vision-kernels clip neurons --model NAME [--pretrained TAG | --checkpoint FILE] --layer L --images SRC --out RUN/
    vision-kernels clip describe-neurons RUN/ --texts BANK --n-nonzero K
    vision-kernels clip index build --model NAME ... --images SRC (--heads L:H,.. | --layers L,.. | --groups G=L:H+L:H)
                                    --out DB/
    vision-kernels clip index query DB/ (--image FILE | --text TEXT) (--group G | --head L:H) -k 8 [--montage F.png]

:func:`add_subcommands` adds them to the ``clip`` command group (the group itself lives in
``vision_kernels.clip.cli``). Every command runs the same under ``torchrun --nproc-per-node N`` (see
docs/clip_neurons_index.md); progress bars and printed results come from rank 0 only.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .._cli import UsageError, existing_file, existing_folder, output_file, output_folder, positive_int
from .._files import atomic_open, atomic_path, file_sha256
from ..runs import distributed
from ._arguments import model_arguments

__all__ = ["add_subcommands"]

PROG = "vision-kernels clip"


# ---------------------------------------------------------------- argument helpers


def _head(text: str) -> tuple[int, int]:
    layer, sep, head = text.partition(":")
    if not sep or not layer.strip().isdigit() or not head.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a head as LAYER:HEAD (e.g. 11:3), got {text!r}")
    return int(layer), int(head)


def _heads(text: str) -> list[tuple[int, int]]:
    return [_head(part) for part in text.split(",") if part.strip()] or _fail(f"expected heads L:H,..., got {text!r}")


def _layers(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected layers as integers L,L,..., got {text!r}") from None
    return values or _fail(f"expected layers L,L,..., got {text!r}")


def _group(text: str) -> tuple[str, list[tuple[int, int]]]:
    name, sep, members = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected a group as NAME=L:H+L:H (e.g. colors=11:3+10:5), got {text!r}")
    return name.strip(), [_head(part) for part in members.split("+") if part.strip()] or _fail(
        f"group {name!r} has no head"
    )


def _neurons(text: str) -> list[int]:
    try:
        if ":" in text and "," not in text:
            start, stop = text.split(":")
            return list(range(int(start), int(stop)))
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected neurons as N,N,... or START:STOP, got {text!r}") from None


def _fail(message: str) -> Any:
    raise argparse.ArgumentTypeError(message)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="image folder tree, list file, or webdataset .tar shards")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    parser.add_argument("--shard-size", type=positive_int, default=1000, help="images per shard (default 1000)")


# ---------------------------------------------------------------- model and images


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device: expected a torch device (cpu, cuda, cuda:1), got {text!r}") from None
    if device.type == "cuda":
        local = distributed.current().rank % max(1, torch.cuda.device_count())
        device = torch.device("cuda", device.index if device.index is not None else local)
    return device


@contextlib.contextmanager
def _process_group(device: torch.device) -> Iterator[None]:
    """Join torchrun's process group (if any) for the command, and leave it cleanly afterwards."""
    joined = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    distributed.init_from_env(device)
    try:
        yield
    finally:
        if joined and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _load_model(name: str, pretrained: str | None, checkpoint: Path | None, device: torch.device) -> Any:
    """A :class:`~vision_kernels.clip.LoadedClip`, with the weights of ``checkpoint`` when given."""
    from .models import load_clip

    loaded = load_clip(name, pretrained, device=device)
    if checkpoint is not None:
        if checkpoint.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(checkpoint), device=str(device))
        else:
            state = torch.load(checkpoint, map_location=device, weights_only=True)
        try:
            loaded.model.load_state_dict(state)
        except (RuntimeError, TypeError) as error:
            first = str(error).strip().splitlines()[0]
            raise UsageError(f"--checkpoint: {str(checkpoint)!r} does not fit model {name!r}: {first}") from None
    return loaded


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    checkpoint = getattr(args, "checkpoint", None)
    return {
        "model": args.model,
        "pretrained": args.pretrained,
        "checkpoint_sha256": file_sha256(checkpoint) if checkpoint is not None else None,
    }


def _image_loader(source: Any, transform: Any, device: torch.device, batch_size: int, workers: int) -> Any:
    """``load(positions)`` -> ``(images, positions)`` batches of the readable images; skipped ones are logged."""
    from .data import image_batches

    def load(positions: Sequence[int]) -> Any:
        for batch in image_batches(source, transform, [positions], batch_size=batch_size, workers=workers):
            for index, reason in batch.failed:
                distributed.log(f"{PROG}: skipped unreadable image {source.keys[index]!r}: {reason}")
            if batch.indices.numel():
                yield batch.images.to(device), batch.indices

    return load


def _open_images(text: str) -> Any:
    from .data import open_image_source

    return open_image_source(text)


def _check_workers(workers: int) -> None:
    if workers < 0:
        raise UsageError(f"--workers: expected an integer >= 0, got {workers}")


# ---------------------------------------------------------------- neurons


def _neurons_command(args: argparse.Namespace) -> int:
    from .data import model_transform
    from .neuron_runs import run_neuron_statistics

    _check_workers(args.workers)
    device = _device(args.device)
    source = _open_images(args.images)  # cheap checks first: the source, then the model
    loaded = _load_model(args.model, args.pretrained, args.checkpoint, device)
    load = _image_loader(source, model_transform(loaded), device, args.batch_size, args.workers)
    options = {**_model_options(args), "images": source.describe()}
    with _process_group(device):
        statistics = run_neuron_statistics(
            loaded.model, source.keys, load, args.out, args.layer, args.neurons, top_k=args.top_k,
            shard_size=args.shard_size, convention=args.convention, options=options, overwrite=args.overwrite,
        )  # fmt: skip
        if distributed.current().main:
            print(f"{PROG} neurons: {statistics.mean.shape[0]} neurons of layer {statistics.layer} over "
                  f"{statistics.count} images -> {Path(args.out) / 'statistics.safetensors'}")  # fmt: skip
    return 0


def _describe_command(args: argparse.Namespace) -> int:
    from .neuron_runs import STATISTICS, load_neuron_statistics
    from .sparse import sparse_text_decomposition
    from .texts import encode_texts, load_text_bank

    folder = Path(args.run)
    statistics, settings = load_neuron_statistics(folder / STATISTICS)
    texts = load_text_bank(args.texts)
    if args.n_nonzero > len(texts):
        raise UsageError(f"--n-nonzero: expected at most {len(texts)} (the texts in the bank), got {args.n_nonzero}")
    name = args.model or settings.get("model")
    if not name:
        raise UsageError("--model: the run does not record its model; give --model (and --pretrained/--checkpoint)")
    pretrained = args.pretrained if args.model else settings.get("pretrained")
    loaded = _load_model(name, pretrained, args.checkpoint, _device(args.device))
    from .index import model_identity

    if model_identity(loaded.model).fingerprint != settings.get("fingerprint"):
        raise UsageError(f"--model: the model's weights are not those of the run in {str(folder)!r} (fingerprint "
                         "differs); give the run's --model with its --pretrained or --checkpoint")  # fmt: skip
    embeddings = encode_texts(loaded.model, texts, tokenizer=loaded.tokenizer)  # [M, E]
    decomposition = sparse_text_decomposition(statistics.principal.float(), embeddings, texts,
                                              n_nonzero=args.n_nonzero)  # fmt: skip
    inputs = _run_inputs(folder)
    report = _neuron_report(statistics, decomposition, inputs, args.top_images)
    out = Path(args.report) if args.report else folder / "neurons"
    _write_reports(out, report, statistics.layer)
    print(f"{PROG} describe-neurons: {len(report)} neurons -> {out}.md, {out}.html, {out}.json")
    return 0


def _run_inputs(folder: Path) -> list[str]:
    from ..runs import RunReader

    return RunReader.open(folder / "sums", kind="clip.neurons.sums", function=f"{PROG} describe-neurons").inputs()


def _neuron_report(statistics: Any, decomposition: Any, inputs: list[str], top_images: int) -> list[dict[str, Any]]:
    neurons = statistics.neurons.tolist()
    report = []
    for row, neuron in enumerate(neurons):
        images = [inputs[int(p)] for p in statistics.top_images[row, :top_images].tolist()]
        report.append({
            "neuron": int(neuron),
            "threshold": float(statistics.thresholds[row]),
            "explained": float(statistics.explained[row]),
            "terms": [{"text": str(text), "coefficient": float(value)} for text, value in decomposition.terms(row)],
            "top_images": images,
        })  # fmt: skip
    return report


def _write_reports(out: Path, report: list[dict[str, Any]], layer: int | None) -> None:
    function = f"{PROG} describe-neurons"
    title = f"Neurons of MLP layer {layer}: sparse text decompositions of their principal directions"
    lines = [f"# {title}", ""]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h1>{html.escape(title)}</h1>"]  # fmt: skip
    for entry in report:
        head = f"Neuron {entry['neuron']} (threshold {entry['threshold']:.4g}, explained {entry['explained']:.1%})"
        lines += [f"## {head}", "", "| text | coefficient |", "|---|---|"]
        lines += [f"| {t['text'].replace('|', '/')} | {t['coefficient']:+.3f} |" for t in entry["terms"]]
        lines += ["", "Top images: " + ", ".join(f"`{p}`" for p in entry["top_images"]), ""]
        rows = "".join(f"<tr><td>{html.escape(t['text'])}</td><td>{t['coefficient']:+.3f}</td></tr>"
                       for t in entry["terms"])  # fmt: skip
        parts.append(f"<h2>{html.escape(head)}</h2><table><tr><th>text</th><th>coefficient</th></tr>{rows}</table>")
        parts.append("<p>Top images: " + ", ".join(html.escape(p) for p in entry["top_images"]) + "</p>")
    parts.append("</body></html>")
    for suffix, text in ((".md", "\n".join(lines)), (".html", "\n".join(parts)),
                         (".json", json.dumps({"layer": layer, "neurons": report}, indent=1))):  # fmt: skip
        with atomic_open(out.with_name(out.name + suffix), "w", encoding="utf-8", function=function) as handle:
            handle.write(text)


# ---------------------------------------------------------------- index


def _index_build_command(args: argparse.Namespace) -> int:
    from .data import model_transform
    from .index_runs import build_index_run

    _check_workers(args.workers)
    if not (args.heads or args.layers or args.groups):
        raise UsageError("give the heads to index: --heads L:H,..., --layers L,... or --groups NAME=L:H+L:H")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"--out: {str(out)!r} exists and is not empty; give --overwrite to replace the index")
    groups = dict(args.groups or [])
    if len(groups) != len(args.groups or []):
        raise UsageError("--groups: every group needs its own name")
    device = _device(args.device)
    source = _open_images(args.images)
    loaded = _load_model(args.model, args.pretrained, args.checkpoint, device)
    load = _image_loader(source, model_transform(loaded), device, args.batch_size, args.workers)
    heads = [pair for group in args.heads or [] for pair in group]
    with _process_group(device):
        index = build_index_run(
            loaded.model, source.keys, load, out, heads=heads or None, layers=args.layers, groups=groups or None,
            metric=args.metric, kind=args.kind, sample_size=args.sample_size, shard_size=args.shard_size,
            name=json.dumps({"model": args.model, "pretrained": args.pretrained, "images": source.location}),
        )  # fmt: skip
    if index is not None:
        print(f"{PROG} index build: {index.count} images, keys {', '.join(index.keys)} ({index.kind}) -> {out}")
    return 0


def _query_command(args: argparse.Namespace) -> int:
    from .index import HeadIndex, head_key

    folder = Path(args.db)
    if args.montage is not None and args.image is None and args.text is None:
        raise UsageError("--montage needs a query: --image FILE or --text TEXT")
    key = args.group if args.group is not None else head_key(*args.head)
    recorded = _recorded(folder)
    name, pretrained = recorded.get("model"), recorded.get("pretrained")
    model_name = args.model or name
    if not model_name:
        raise UsageError("--model: the database does not record its model; give --model")
    loaded = _load_model(model_name, args.pretrained if args.model else pretrained, args.checkpoint,
                         _device(args.device))  # fmt: skip
    index = HeadIndex.load(folder, loaded.model)
    if key not in index.keys:
        raise UsageError(f"--group/--head: {key!r} is not a key of {str(folder)!r}; keys: {', '.join(index.keys)}")
    if args.k > index.count:
        raise UsageError(f"-k: expected at most {index.count} (the images in the database), got {args.k}")
    if args.image is not None:
        from .data import model_transform

        image = _read_query_image(args.image, model_transform(loaded)).to(index_device(loaded.model))
        result = index.search_images(loaded.model, image[None], key, k=args.k)
    else:
        from .texts import encode_texts

        direction = encode_texts(loaded.model, [args.text], tokenizer=loaded.tokenizer)
        result = index.search_directions(key, direction, k=args.k)
    ids = result.ids[0] if result.ids is not None else [str(i) for i in result.indices[0].tolist()]
    for rank, (identifier, score) in enumerate(zip(ids, result.scores[0].tolist(), strict=True), start=1):
        print(f"{rank}\t{score:+.4f}\t{identifier}")
    if args.montage is not None:
        _write_montage(args.montage, ids, recorded.get("images"))
        print(f"{PROG} index query: montage -> {args.montage}")
    return 0


def index_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _recorded(folder: Path) -> dict[str, Any]:
    """What ``clip index build`` recorded as the identity's name: model, pretrained tag, image source."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        recorded = json.loads(meta["identity"]["name"])
        return recorded if isinstance(recorded, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # HeadIndex.load reports a damaged folder precisely


def _read_query_image(path: Path, transform: Any) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return transform(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UsageError(f"--image: cannot read {str(path)!r} as an image ({error})") from None


def _montage_tiles(ids: list[Any], images: str | None, size: int) -> list[Any]:
    """The neighbours' pictures from the recorded image source (grey tiles for images no longer readable)."""
    from PIL import Image

    source, where = None, {}
    if images is not None:
        try:
            source = _open_images(images)
            where = {key: position for position, key in enumerate(source.keys)}
        except (OSError, ValueError):
            source = None
    tiles = []
    for identifier in ids:
        try:
            if source is None or identifier not in where:
                raise FileNotFoundError(identifier)
            tiles.append(source.load(where[identifier]).convert("RGB").resize((size, size)))
        except (OSError, ValueError):
            tiles.append(Image.new("RGB", (size, size), (128, 128, 128)))
    return tiles


def _write_montage(path: Path, ids: list[Any], images: str | None, size: int = 128) -> None:
    """A row of the neighbours' pictures, in rank order, saved atomically."""
    from PIL import Image

    canvas = Image.new("RGB", (size * len(ids), size), (255, 255, 255))
    for position, tile in enumerate(_montage_tiles(ids, images, size)):
        canvas.paste(tile, (position * size, 0))
    with atomic_path(path, function=f"{PROG} index query") as temporary:
        canvas.save(temporary, format="PNG")


# ---------------------------------------------------------------- parsers


def add_subcommands(clip_subparsers: Any) -> None:
    """Add ``neurons``, ``describe-neurons`` and ``index {build,query}`` to the ``clip`` command group."""
    neurons = clip_subparsers.add_parser("neurons", help="second-order neuron statistics over a dataset (resumable)")
    model_arguments(neurons)
    _add_run_arguments(neurons)
    neurons.add_argument("--layer", type=int, required=True, help="the MLP layer (negative counts from the end)")
    neurons.add_argument("--neurons", type=_neurons, help="neuron indices N,N,... or START:STOP (default all)")
    neurons.add_argument("--top-k", type=positive_int, default=100, help="top effects per neuron (default 100)")
    neurons.add_argument("--convention", choices=("per_term", "even_split"), default="per_term")
    neurons.add_argument("--out", type=output_folder, required=True, help="the run folder RUN/")
    neurons.add_argument("--overwrite", action="store_true", help="replace a run of other settings in --out")
    neurons.set_defaults(handler=_neurons_command)

    describe = clip_subparsers.add_parser("describe-neurons", help="sparse text decomposition of every neuron")
    describe.add_argument("run", type=existing_folder, help="a folder written by `clip neurons`")
    describe.add_argument("--texts", required=True, help="text bank: a file (one text per line) or a shipped name")
    describe.add_argument("--n-nonzero", type=positive_int, required=True, help="texts per neuron (OMP steps)")
    describe.add_argument("--top-images", type=positive_int, default=5, help="top images listed per neuron")
    describe.add_argument("--report", help="report path prefix (default RUN/neurons -> .md, .html, .json)")
    model_arguments(describe, required=False)
    describe.set_defaults(handler=_describe_command)

    index = clip_subparsers.add_parser("index", help="CLIP-InterpreT databases: per-head FAISS indexes")
    verbs = index.add_subparsers(dest="index_command", required=True)
    build = verbs.add_parser("build", help="index the heads' contributions of a dataset (under torchrun: per rank)")
    model_arguments(build)
    _add_run_arguments(build)
    build.add_argument("--heads", type=_heads, action="append", help="single heads L:H,L:H (repeatable)")
    build.add_argument("--layers", type=_layers, help="every head of these layers L,L")
    build.add_argument("--groups", type=_group, nargs="+", help="head groups NAME=L:H+L:H (summed contributions)")
    build.add_argument("--metric", choices=("cosine", "ip"), default="cosine")
    build.add_argument("--kind", choices=("auto", "flat", "ivf"), default="auto")
    build.add_argument("--sample-size", type=positive_int, default=10_000, help="images for the mean / IVF training")
    build.add_argument("--out", type=output_folder, required=True, help="the database folder DB/")
    build.add_argument("--overwrite", action="store_true", help="replace an existing database in --out")
    build.set_defaults(handler=_index_build_command)

    query = verbs.add_parser("query", help="nearest database images of an image or a text under one head/group")
    query.add_argument("db", type=existing_folder, help="a folder written by `clip index build`")
    what = query.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", type=existing_file, help="query image file")
    what.add_argument("--text", help="query text (searched as a direction)")
    where = query.add_mutually_exclusive_group(required=True)
    where.add_argument("--group", help="a group name of the database")
    where.add_argument("--head", type=_head, help="a single head L:H")
    query.add_argument("-k", type=positive_int, default=8, help="neighbours (default 8)")
    query.add_argument("--montage", type=output_file([".png"]), help="also write the neighbours as a PNG montage")
    model_arguments(query, required=False)
    query.set_defaults(handler=_query_command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run these subcommands alone (``python -m vision_kernels.clip.scale_cli neurons ...``), e.g. under torchrun
    before the ``clip`` group of ``vision-kernels`` includes them."""
    import sys

    from .._cli import run_handler

    parser = argparse.ArgumentParser(prog=PROG)
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    add_subcommands(parser.add_subparsers(dest="clip_command", required=True))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    words = [PROG, args.clip_command] + ([args.index_command] if getattr(args, "index_command", None) else [])
    return run_handler(args.handler, args, " ".join(words))


if __name__ == "__main__":
    raise SystemExit(main())
