"""vision_kernels.clip.decompose: exactness against the models' own encode_image (open_clip ViT-B-32,
ViT-B-16, ViT-L-14, every open_clip block option, transformers CLIP vision models), agreement with the
materializing reference of the original code, the captured quantities, layouts, dtypes, gradients,
the fold cache and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vision_kernels.clip as vc
from vision_kernels.reference.attention_decomp import materialized_decomposition

# ---------------------------------------------------------------- exactness on real architectures


@pytest.mark.parametrize(("name", "batch"), [("ViT-B-32", 2), ("ViT-B-16", 2), ("ViT-L-14", 1)])
def test_sum_of_terms_is_encode_image(open_clip_model, rel_err, name, batch) -> None:
    model = open_clip_model(name)
    images = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        plain = model.encode_image(images)
        normalized = model.encode_image(images, normalize=True)
    for convention in vc.CONVENTIONS:
        for normalize, target in ((False, plain), (True, normalized)):
            decomposition = vc.decompose(model, images, convention=convention, normalize=normalize, keep_capture=False)
            assert decomposition.heads.shape == (
                batch,
                model.visual.transformer.layers,
                model.visual.transformer.resblocks[0].attn.num_heads,
                plain.shape[1],
            )
            assert rel_err(decomposition.total(), target) < 1e-5, (name, convention, normalize)
            assert rel_err(decomposition.output, target) < 1e-5


@pytest.mark.parametrize(("convention", "normalize"), [("per_term", False), ("even_split", True)])
def test_per_token_terms_match_the_materializing_reference(open_clip_model, convention, normalize) -> None:
    # The reference builds [B, N, N, H, D] per-query-row tensors as the original code does and
    # linearizes the final LayerNorm on [B, L, N, H, width]; the kernel folds everything instead.
    model = open_clip_model("ViT-B-32")
    images = torch.randn(1, 3, 224, 224)
    ours = vc.decompose(model, images, per_token=True, convention=convention, normalize=normalize)
    want = materialized_decomposition(model, images, convention=convention, normalize=normalize)
    heads = ours.heads.permute(0, 1, 3, 2, 4)  # [B, L, N, H, E] as the reference
    scale = float(want["heads"].abs().max())
    torch.testing.assert_close(heads, want["heads"], rtol=1e-4, atol=1e-5 * scale)
    for key in ("mlps", "embedding", "bias", "output"):
        torch.testing.assert_close(
            getattr(ours, key), want[key], rtol=1e-4, atol=1e-5 * float(want[key].abs().max() + 1e-12)
        )


def test_conventions_differ_only_in_how_the_mean_is_shared(make_tiny_vit) -> None:
    model = make_tiny_vit()  # perturbed: non-zero biases (a random open_clip model has none)
    images = torch.randn(2, 3, 32, 32)
    per_term = vc.decompose(model, images)
    even = vc.decompose(model, images, convention="even_split")
    torch.testing.assert_close(per_term.total(), even.total(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(per_term.heads, even.heads, atol=1e-4)
    assert torch.count_nonzero(even.bias) == 0 and torch.count_nonzero(per_term.bias) > 0


# ---------------------------------------------------------------- open_clip options


OPTIONS = {
    "layer_scale": {"ls_init_value": 0.5},
    "quick_gelu": {"act_layer": "quick_gelu"},
    "qk_norm": {"qk_norm": True},
    "scale_heads": {"scale_heads": True},
    "scale_fc": {"scale_fc": True},
    "no_ln_pre": {"no_ln_pre": True},
    "final_ln_after_pool": {"final_ln_after_pool": True},
    "sin_cos_positions": {"pos_embed_type": "sin_cos_2d"},
    "patch_dropout_in_eval": {"patch_dropout": 0.5},
    "everything": {
        "ls_init_value": 0.3,
        "act_layer": "quick_gelu",
        "qk_norm": True,
        "scale_heads": True,
        "scale_fc": True,
    },
}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("convention", vc.CONVENTIONS)
def test_open_clip_block_options_are_folded_exactly(make_tiny_vit, rel_err, option, convention) -> None:
    from open_clip.transformer import QuickGELU

    options = dict(OPTIONS[option])
    if options.get("act_layer") == "quick_gelu":
        options["act_layer"] = QuickGELU
    tower = make_tiny_vit(**options)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = tower(images)
    for normalize in (False, True):
        decomposition = vc.decompose(tower, images, per_token=True, convention=convention, normalize=normalize)
        target = F.normalize(want, dim=-1) if normalize else want
        assert rel_err(decomposition.total(), target) < 1e-5


def test_no_projection(make_tiny_vit, rel_err) -> None:
    tower = make_tiny_vit()
    tower.proj = None
    images = torch.randn(2, 3, 32, 32)
    decomposition = vc.decompose(tower, images)
    assert decomposition.heads.shape == (2, 2, 4, 64)
    with torch.no_grad():
        assert rel_err(decomposition.total(), tower(images)) < 1e-5


def _cosine_reference_forward(tower: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Independent forward of scaled-cosine attention blocks (open_clip 3.3's own path fails on 4-d bmm)."""
    x = tower._embeds(images)
    for block in tower.transformer.resblocks:
        attention = block.attn
        y = block.ln_1(x)
        q, k, v = F.linear(y, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
        heads = attention.num_heads
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
        logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)
        weights = torch.softmax(logits * attention.logit_scale.clamp(max=attention.logit_scale_max).exp(), dim=-1)
        merged = (weights @ v).transpose(1, 2).flatten(2)
        x = x + block.ls_1(attention.out_proj(merged))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return tower.ln_post(x[:, 0]) @ tower.proj


def test_scaled_cosine_attention(make_tiny_vit, rel_err) -> None:
    tower = make_tiny_vit(scaled_cosine_attn=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = _cosine_reference_forward(tower, images)
    for convention in vc.CONVENTIONS:
        assert rel_err(vc.decompose(tower, images, per_token=True, convention=convention).total(), want) < 1e-5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2}, "attention pooling"),
        ({"pool_type": "avg"}, "pool_type='avg'"),
        ({"pool_type": "none"}, "pool_type='none'"),
        ({"scale_attn": True}, "scale_attn"),
        ({"scale_attn_inner": True}, "scale_attn_inner"),
    ],
)
def test_configurations_that_cannot_be_decomposed_exactly(make_tiny_vit, options, message) -> None:
    tower = make_tiny_vit(**options)
    with pytest.raises(
        ValueError,
        match=r"vision_kernels\.clip\.decompose: argument 'model' cannot be decomposed exactly: .*" + message,
    ):
        vc.decompose(tower, torch.randn(1, 3, 32, 32))


def test_unsupported_model_types() -> None:
    from open_clip.modified_resnet import ModifiedResNet

    resnet = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=16, heads=2, image_size=64, width=8).eval()
    wrapper = nn.Module()
    wrapper.visual = resnet
    with pytest.raises(
        TypeError, match=r"argument 'model' must be an open_clip ViT .* got ModifiedResNet \(timm and ResNet"
    ):
        vc.decompose(wrapper, torch.randn(1, 3, 64, 64))
    with pytest.raises(TypeError, match=r"argument 'model' must be an open_clip ViT .* got Linear"):
        vc.decompose(nn.Linear(3, 3), torch.randn(1, 3, 64, 64))
    with pytest.raises(TypeError, match=r"argument 'model' must be a torch.nn.Module, got str"):
        vc.decompose("ViT-B-32", torch.randn(1, 3, 224, 224))


# ---------------------------------------------------------------- transformers


def _hf_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=32,
        patch_size=8, projection_dim=24,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["with_projection", "clip_model", "vision_only"])
@pytest.mark.parametrize("convention", vc.CONVENTIONS)
def test_transformers_models(rel_err, perturbed, kind, convention) -> None:
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = _hf_config()
    images = torch.randn(2, 3, 32, 32)
    if kind == "with_projection":
        model = CLIPVisionModelWithProjection(config).eval()
    elif kind == "clip_model":
        text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
        model = CLIPModel(CLIPConfig(vision_config=config.to_dict(), text_config=text, projection_dim=24)).eval()
    else:
        model = CLIPVisionModel(config).eval()
    perturbed(model)  # non-trivial LayerNorm gains and biases
    with torch.no_grad():
        if kind == "with_projection":
            want = model(pixel_values=images).image_embeds
        elif kind == "clip_model":
            out = model.get_image_features(pixel_values=images)
            want = out if isinstance(out, torch.Tensor) else out.pooler_output
        else:
            want = model(pixel_values=images).pooler_output
    decomposition = vc.decompose(model, images, per_token=True, convention=convention)
    assert decomposition.heads.shape == (2, 3, 4, 17, want.shape[1])
    assert rel_err(decomposition.total(), want) < 1e-5


# ---------------------------------------------------------------- captured quantities


def test_capture_matches_the_modules_own_computations(make_tiny_vit) -> None:
    tower = make_tiny_vit(ls_init_value=0.5)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cap = vc.capture(tower, images, keep_mlp_tokens=True, keep_neurons=True, keep_residual_tokens=True)
        x = tower._embeds(images)
        torch.testing.assert_close(cap.residual_tokens[:, 0], x)
        torch.testing.assert_close(cap.embedding, x[:, 0])
        for layer, block in enumerate(tower.transformer.resblocks):
            y = block.ln_1(x)
            # attention rows as nn.MultiheadAttention itself returns them
            _, weights = block.attn(y, y, y, need_weights=True, average_attn_weights=False)  # [B, H, N, N]
            torch.testing.assert_close(cap.attention[:, layer], weights[:, :, 0], rtol=1e-5, atol=1e-6)
            value_weight = block.attn.in_proj_weight[128:]
            value_bias = block.attn.in_proj_bias[128:]
            torch.testing.assert_close(cap.values[:, layer].flatten(2), F.linear(y, value_weight, value_bias))
            var, mean = torch.var_mean(x, -1, unbiased=False)
            torch.testing.assert_close(cap.ln1_mean[:, layer], mean)
            torch.testing.assert_close(cap.ln1_std[:, layer], (var + block.ln_1.eps).sqrt())
            after = block(x)
            torch.testing.assert_close(cap.residual_tokens[:, layer + 1], after, rtol=1e-5, atol=1e-5)
            mlp = cap.mlp_tokens[:, layer]
            torch.testing.assert_close(
                block.mlp.c_proj(cap.neurons[:, layer]) * block.ls_2.gamma, mlp, rtol=1e-5, atol=1e-6
            )
            torch.testing.assert_close(cap.mlp_out[:, layer], mlp[:, 0])
            x = after
        rebuilt = cap.embedding + cap.attention_out.sum(1) + cap.mlp_out.sum(1)
        torch.testing.assert_close(rebuilt, cap.residual, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cap.output, tower(images), rtol=1e-5, atol=1e-5)
    assert cap.attention.sum(-1).sub(1).abs().max() < 1e-5
    assert cap.grid == (4, 4) and cap.num_layers == 2 and cap.num_heads == 4
    assert cap.neurons.shape == (2, 2, 17, 128)


def test_decomposition_keeps_the_capture(make_tiny_vit) -> None:
    tower = make_tiny_vit()
    decomposition = vc.decompose(tower, torch.randn(2, 3, 32, 32), keep_mlp_tokens=True)
    assert decomposition.capture is not None and decomposition.capture.mlp_tokens.shape == (2, 2, 17, 64)
    assert vc.decompose(tower, torch.randn(2, 3, 32, 32), keep_capture=False).capture is None


# ---------------------------------------------------------------- layouts


def test_axes_and_layer_subsets(make_tiny_vit, rel_err) -> None:
    tower = make_tiny_vit(layers=4)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = tower(images)
    full = vc.decompose(tower, images, per_token=True)
    assert full.head_axes == ("image", "layer", "head", "token", "dim") and full.heads.shape == (2, 4, 4, 17, 24)
    assert torch.count_nonzero(full.other_heads) == 0
    for kwargs, axes in [
        ({}, ("image", "layer", "head", "dim")),
        ({"per_head": False}, ("image", "layer", "dim")),
        ({"per_token": True, "per_head": False, "per_layer": False}, ("image", "token", "dim")),
        ({"per_layer": False}, ("image", "head", "dim")),
    ]:
        decomposition = vc.decompose(tower, images, **kwargs)
        assert decomposition.head_axes == axes
        assert rel_err(decomposition.total(), want) < 1e-5
        expected = full.head_sum(axes)
        torch.testing.assert_close(decomposition.heads, expected, rtol=1e-5, atol=1e-6)
    subset = vc.decompose(tower, images, layers=[-1, 1])
    assert subset.layers == (3, 1) and subset.heads.shape == (2, 2, 4, 24)
    torch.testing.assert_close(subset.heads[:, 0], full.head_sum(("image", "layer", "head", "dim"))[:, 3])
    torch.testing.assert_close(
        subset.other_heads, full.head_sum(("image", "layer", "dim"))[:, [0, 2]].sum(1), rtol=1e-5, atol=1e-6
    )
    assert rel_err(subset.total(), want) < 1e-5
    assert subset.layer_position(1) == 1
    with pytest.raises(IndexError, match=r"layer 2 was not decomposed"):
        subset.layer_position(2)
    with pytest.raises(ValueError, match=r"argument 'keep' names axes \['token'\]"):
        subset.head_sum(("image", "token"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_term_dtypes(make_tiny_vit, dtype) -> None:
    tower = make_tiny_vit()
    images = torch.randn(2, 3, 32, 32)
    reference = vc.decompose(tower, images, per_token=True)
    low = vc.decompose(tower, images, per_token=True, dtype=dtype)
    assert low.heads.dtype == dtype and low.mlps.dtype == dtype
    tolerance = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-6}[dtype]
    scale = float(reference.heads.abs().max())
    torch.testing.assert_close(low.heads.float(), reference.heads, rtol=tolerance, atol=tolerance * scale)


def test_batches_give_the_same_result(make_tiny_vit) -> None:
    tower = make_tiny_vit()
    images = torch.randn(5, 3, 32, 32)
    whole = vc.decompose(tower, images, per_token=True)
    chunked = vc.decompose(tower, images, per_token=True, batch_size=2)
    torch.testing.assert_close(chunked.heads, whole.heads)
    torch.testing.assert_close(chunked.capture.values, whole.capture.values)
    torch.testing.assert_close(chunked.output, whole.output)


def test_gradients_reach_the_images(make_tiny_vit) -> None:
    tower = make_tiny_vit(ls_init_value=0.5)
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    weights = torch.randn(2, 24)
    (vc.decompose(tower, images, requires_grad=True).total().float() * weights).sum().backward()
    ours = images.grad.clone()
    images.grad = None
    (tower(images) * weights).sum().backward()
    torch.testing.assert_close(ours, images.grad, rtol=1e-4, atol=1e-6)


def test_fold_cache_follows_weight_updates(make_tiny_vit, rel_err) -> None:
    tower = make_tiny_vit()
    first = vc.folded_head_matrices(tower)
    assert vc.folded_head_matrices(tower) is first
    assert vc.folded_head_matrices(tower, centered=False) is not first
    with torch.no_grad():
        tower.transformer.resblocks[1].attn.out_proj.weight.mul_(2.0)
    second = vc.folded_head_matrices(tower)
    assert second is not first
    torch.testing.assert_close(second[1], 2 * first[1])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(vc.decompose(tower, images).total(), tower(images)) < 1e-5
    vc.clear_fold_cache()
    assert vc.folded_head_matrices(tower) is not second


def test_folded_matrices_are_centred_per_term(make_tiny_vit) -> None:
    tower = make_tiny_vit(ls_init_value=0.5)
    centred = vc.folded_head_matrices(tower).double()  # [L, H, Dh, E]
    raw = vc.folded_head_matrices(tower, centered=False).double()
    final = vc.as_vision_tower(tower).final_norm()
    direction = final.weight.double() @ final.proj.double()  # gamma @ proj: the direction the centering removes
    block = tower.transformer.resblocks[0]
    per_head = block.attn.out_proj.weight.double().t().reshape(4, 16, 64) * block.ls_1.gamma.double()
    correction = per_head.mean(-1, keepdim=True) * direction  # [H, Dh, E], rank one per head
    torch.testing.assert_close(centred[0], raw[0] - correction, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (torch.randn(3, 32, 32), ValueError, r"argument 'images' must have 4 dimensions \[B, C, H, W\], got 3"),
        (
            torch.randn(1, 1, 32, 32),
            ValueError,
            r"argument 'images' must have 3 channels in dimension 1, got shape \[1, 1, 32, 32\]",
        ),
        (
            torch.randn(1, 3, 64, 32),
            ValueError,
            r"argument 'images' must be 32 x 32 pixels \(the model's image size\), got shape \[1, 3, 64, 32\]",
        ),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, r"argument 'images' must be a floating tensor"),
        (
            torch.empty(1, 3, 32, 32, device="meta"),
            ValueError,
            r"arguments 'images' and 'model' must be on the same device, got meta and cpu",
        ),
        ([[1.0]], TypeError, r"argument 'images' must be a torch.Tensor, got list"),
    ],
)
def test_bad_images(make_tiny_vit, images, error, message) -> None:
    with pytest.raises(error, match=r"vision_kernels\.clip\.decompose: " + message):
        vc.decompose(make_tiny_vit(), images)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"layers": [0, 2]},
            IndexError,
            r"argument 'layers' must hold layer indices in \[-2, 2\) for a model with 2 layers, got 2 at position 1",
        ),
        ({"layers": -3}, IndexError, r"argument 'layers' must hold layer indices in \[-2, 2\)"),
        ({"layers": []}, ValueError, r"argument 'layers' must list at least one layer"),
        (
            {"convention": "mean"},
            ValueError,
            r"argument 'convention' must be one of \('per_term', 'even_split'\), got 'mean'",
        ),
        ({"dtype": torch.int8}, TypeError, r"argument 'dtype' must be float32, float64, float16 or bfloat16"),
        ({"batch_size": 0}, ValueError, r"argument 'batch_size' must be >= 1, got 0"),
    ],
)
def test_bad_arguments(make_tiny_vit, kwargs, error, message) -> None:
    with pytest.raises(error, match=r"vision_kernels\.clip\.decompose: " + message):
        vc.decompose(make_tiny_vit(), torch.randn(1, 3, 32, 32), **kwargs)


def test_load_clip_random_weights_and_unknown_names() -> None:
    loaded = vc.load_clip("ViT-B-32")
    assert loaded.pretrained is None and loaded.tokenizer is not None and not loaded.model.training
    assert vc.as_vision_tower(loaded.model).image_size == (224, 224)
    with pytest.raises(ValueError, match=r"argument 'name' must be an open_clip model name"):
        vc.load_clip("ViT-Q-99")
