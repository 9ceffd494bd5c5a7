"""TextSpan: the covariance form selects the same texts as the direct (original) form, known answers,
explained variance, reconstruction, many heads, text banks and text encoding, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vision_kernels.clip as vc


def head_like_data(images: int, embed: int, rank: int, seed: int = 0, offset: float = 0.5) -> torch.Tensor:
    """Contributions of rank ``rank`` (+ a constant offset) with a decaying spectrum, like a head's outputs."""
    generator = torch.Generator().manual_seed(seed)
    coefficients = torch.randn(images, rank, generator=generator) * torch.linspace(3.0, 0.1, rank)
    directions = torch.randn(rank, embed, generator=generator)
    return coefficients @ directions + offset * torch.randn(embed, generator=generator)


def bank(count: int, embed: int, seed: int = 1) -> torch.Tensor:
    return F.normalize(torch.randn(count, embed, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize(("images", "embed", "rank", "texts", "requested_rank"), [
    (400, 32, 12, 60, 80), (3000, 128, 32, 700, 16), (3000, 128, 32, 700, 32), (1000, 96, 64, 300, 80),
])  # fmt: skip
def test_covariance_form_selects_the_same_texts_as_the_direct_form(images, embed, rank, texts, requested_rank) -> None:
    data = head_like_data(images, embed, rank)
    text_bank = bank(texts, embed)
    fast = vc.text_span(data, text_bank, num_texts=20, rank=requested_rank, method="covariance")
    direct = vc.text_span(data, text_bank, num_texts=20, rank=requested_rank, method="direct")
    assert fast.indices == direct.indices
    assert fast.rank == direct.rank == min(requested_rank, rank + 1)  # the offset adds one direction
    torch.testing.assert_close(fast.explained_variance, direct.explained_variance, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fast.projected_variance, direct.projected_variance, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fast.basis, direct.basis, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(fast.reconstruct(data.double()), direct.reconstruct(data.double()), rtol=1e-8, atol=1e-8)


def test_direct_form_in_float32_agrees_on_a_realistic_head() -> None:
    # Like the original code (float32 projections) on rank-64 head outputs, as in ViT-B heads.
    data = head_like_data(1000, 256, 64, offset=0.0)
    text_bank = bank(300, 256)
    fast = vc.text_span(data, text_bank, num_texts=10)
    direct = vc.text_span(data, text_bank, num_texts=10, method="direct", dtype=torch.float32)
    assert fast.indices == direct.indices and fast.rank == direct.rank == 64


def test_known_answer_first_text_carries_most_variance() -> None:
    # Data varies along texts 3 (std 5), 7 (std 2) and 1 (std 1), orthogonal; the rest of the bank is noise.
    generator = torch.Generator().manual_seed(0)
    embed = 24
    basis = torch.linalg.qr(torch.randn(embed, embed, generator=generator))[0].T  # orthonormal rows
    text_bank = F.normalize(torch.randn(10, embed, generator=generator), dim=-1)
    text_bank[3], text_bank[7], text_bank[1] = basis[0], basis[1], basis[2]
    coefficients = torch.randn(5000, 3, generator=generator) * torch.tensor([5.0, 2.0, 1.0])
    data = coefficients @ basis[:3] + 3.0
    result = vc.text_span(data, text_bank, [f"t{i}" for i in range(10)], num_texts=3)
    assert result.indices == [3, 7, 1] and result.texts == ["t3", "t7", "t1"]
    variances = coefficients.var(0).double()
    torch.testing.assert_close(result.explained_variance, variances.cumsum(0) / variances.sum(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(result.reconstruct(data.double()), data.double(), rtol=1e-6, atol=1e-6)


def test_explained_variance_is_monotone_and_stops_when_exhausted() -> None:
    data = head_like_data(500, 40, 6)
    result = vc.text_span(data, bank(200, 40), num_texts=30)
    assert len(result.indices) == 7  # rank 6 + offset direction: nothing left to explain after 7
    steps = result.explained_variance
    assert bool((steps[1:] >= steps[:-1] - 1e-12).all()) and abs(float(steps[-1]) - 1.0) < 1e-9
    assert len(set(result.indices)) == len(result.indices)
    gram = result.basis @ result.basis.T
    torch.testing.assert_close(gram - torch.diag(gram.diagonal()), torch.zeros_like(gram), atol=1e-9, rtol=0)


def test_many_heads_from_a_decomposition(make_tiny_vit) -> None:
    tower = make_tiny_vit(layers=3)
    decomposition = vc.decompose(tower, torch.randn(40, 3, 32, 32), layers=[1, 2])
    text_bank = bank(30, 24)
    names = [f"text {i}" for i in range(30)]
    results = vc.head_text_spans(decomposition.heads, text_bank, names, layers=decomposition.layers, num_texts=3)
    assert set(results) == {(layer, head) for layer in (1, 2) for head in range(4)}
    single = vc.text_span(decomposition.heads[:, 1, 2], text_bank, names, num_texts=3)
    assert results[(2, 2)].indices == single.indices
    table = vc.format_text_spans({(2, 2): single})
    assert "Layer 2, head 2" in table and single.texts[0] in table
    chosen = vc.head_text_spans(decomposition.heads, text_bank, heads=[(0, 1)], num_texts=2)
    assert list(chosen) == [(0, 1)]


@pytest.mark.parametrize(
    ("contributions", "texts", "kwargs", "error", "message"),
    [
        (
            torch.randn(10, 8),
            torch.randn(0, 8),
            {},
            ValueError,
            r"argument 'text_embeddings' must be a non-empty text bank",
        ),
        (
            torch.randn(10, 8),
            torch.randn(5, 9),
            {},
            ValueError,
            r"argument 'text_embeddings' must have size 8 in dimension 1",
        ),
        (torch.randn(1, 8), torch.randn(5, 8), {}, ValueError, r"argument 'contributions' must hold at least 2 images"),
        (torch.randn(10), torch.randn(5, 8), {}, ValueError, r"argument 'contributions' must have 2 dimensions"),
        (
            torch.full((10, 8), float("nan")),
            torch.randn(5, 8),
            {},
            ValueError,
            r"arguments .contributions. and .text_embeddings. must be finite",
        ),
        (torch.randn(10, 8), torch.randn(5, 8), {"method": "svd"}, ValueError, r"argument 'method' must be one of"),
        (torch.randn(10, 8), torch.randn(5, 8), {"num_texts": 0}, ValueError, r"argument 'num_texts' must be >= 1"),
        (torch.randn(10, 8), torch.randn(5, 8), {"texts": ["a"]}, ValueError, r"argument 'texts' must have one string"),
        ([[1.0]], torch.randn(5, 8), {}, TypeError, r"argument 'contributions' must be a torch.Tensor"),
    ],
)
def test_bad_input(contributions, texts, kwargs, error, message) -> None:
    names = kwargs.pop("texts", None)
    with pytest.raises(error, match=r"vision_kernels\.clip\.text_span: " + message):
        vc.text_span(contributions, texts, names, **kwargs)


# ---------------------------------------------------------------- text banks and embeddings


def test_shipped_text_bank() -> None:
    assert "general" in vc.available_text_banks()
    texts = vc.load_text_bank("general")
    assert len(texts) == 265 and len(set(texts)) == 265
    assert all(t and not t.startswith("#") for t in texts)


def test_text_bank_files(tmp_path: Path) -> None:
    path = tmp_path / "bank.txt"
    path.write_text("# a comment\nA red car\n\n  A blue sky  \n")
    assert vc.load_text_bank(path) == ["A red car", "A blue sky"]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n")
    with pytest.raises(ValueError, match=r"the text bank .*empty.txt' is empty"):
        vc.load_text_bank(empty)
    with pytest.raises(FileNotFoundError, match=r"argument 'source' must be a text file or one of \['general'"):
        vc.load_text_bank(tmp_path / "missing.txt")


def test_encode_texts_with_open_clip(tiny_clip) -> None:
    import open_clip

    texts = ["a photo of a dog", "a red car", "an oil painting"]
    embeddings = vc.encode_texts(tiny_clip, texts, batch_size=2)
    assert embeddings.shape == (3, 32)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    with torch.no_grad():
        want = F.normalize(tiny_clip.encode_text(open_clip.tokenize(texts)), dim=-1)
    torch.testing.assert_close(embeddings, want)
    raw = vc.encode_texts(tiny_clip, texts, normalize=False)
    torch.testing.assert_close(F.normalize(raw, dim=-1), embeddings)


def test_encode_texts_bad_input(tiny_clip, make_tiny_vit) -> None:
    with pytest.raises(ValueError, match=r"argument 'texts' must hold at least one text \(empty bank\)"):
        vc.encode_texts(tiny_clip, [])
    with pytest.raises(TypeError, match=r"argument 'texts' must be a sequence of strings"):
        vc.encode_texts(tiny_clip, [1, 2])
    with pytest.raises(TypeError, match=r"argument 'model' must have a text tower"):
        vc.encode_texts(make_tiny_vit(), ["a dog"])


def test_encode_texts_transformers_needs_a_tokenizer() -> None:
    from transformers import CLIPConfig, CLIPModel

    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    model = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=16)).eval()
    with pytest.raises(TypeError, match=r"argument 'tokenizer' is required for transformers models"):
        vc.encode_texts(model, ["a dog"])

    def tokenizer(batch, padding=True, return_tensors="pt"):  # a stand-in with the CLIPTokenizer interface
        ids = torch.tensor([[49406, 320 + len(t), 49407] for t in batch])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    embeddings = vc.encode_texts(model, ["a dog", "a cat!"], tokenizer=tokenizer)
    assert embeddings.shape == (2, 16)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2))
