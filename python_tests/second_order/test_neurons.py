"""Second-order effects of neurons on real (random-weight) models: the factorized kernel path against the direct
definition, both conventions, exactness against the captured MLP output, directions, caching and bad input."""

from __future__ import annotations

import pytest
import torch

import vision_kernels.clip as vc
from vision_kernels.clip.neurons import NeuronDirections
from vision_kernels.ops import second_order_effects
from vision_kernels.reference.second_order import direct_second_order_effects, direct_write_effects
from vision_kernels.testing import emulated


@pytest.mark.parametrize("convention", ["per_term", "even_split"])
@pytest.mark.parametrize("normalize", [True, False])
def test_factorized_equals_direct_definition_with_layer_scale(layerscale_vit, make_images, rel, convention, normalize):
    images = make_images(3)
    got = vc.neuron_effects(layerscale_vit, images, 1, convention=convention, normalize=normalize)
    want = direct_second_order_effects(layerscale_vit, images, 1, convention=convention, normalize=normalize)
    assert got.shape == (3, 128, 24)
    assert rel(got, want) < 1e-4


def test_neuron_subset_and_later_layer_subset(layerscale_vit, make_images, rel) -> None:
    images = make_images(2, seed=1)
    neurons = [100, 3, 3, 57]
    got = vc.neuron_effects(layerscale_vit, images, 0, neurons, later_layers=[3, -2])
    want = direct_second_order_effects(layerscale_vit, images, 0, neurons, later_layers=[3, 2])
    assert got.shape == (2, 4, 24) and rel(got, want) < 1e-4
    full = vc.neuron_effects(layerscale_vit, images, 0, later_layers=[3, 2])
    torch.testing.assert_close(got, full[:, neurons])


def test_vit_b32_random_weights(open_clip_model, rel) -> None:
    model = open_clip_model("ViT-B-32")
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    neurons = [0, 777, 3071]
    got = vc.neuron_effects(model, images, 9, neurons)  # the paper's layer: two later layers of 12 heads
    want = direct_second_order_effects(model, images, 9, neurons)
    assert got.shape == (1, 3, 512) and rel(got, want) < 1e-4
    split = vc.neuron_effects(model, images, 9, neurons, convention="even_split", later_layers=[11])
    assert rel(split, direct_second_order_effects(model, images, 9, neurons, convention="even_split",
                                                  later_layers=[11])) < 1e-4  # fmt: skip


def test_transformers_model(hf_vision, make_images, rel) -> None:
    images = make_images(2)
    for convention in ("per_term", "even_split"):
        got = vc.neuron_effects(hf_vision, images, 0, convention=convention)
        want = direct_second_order_effects(hf_vision, images, 0, convention=convention)
        assert got.shape == (2, 48, 16) and rel(got, want) < 1e-4


def test_all_neurons_plus_bias_is_the_effect_of_the_whole_mlp_output(layerscale_vit, make_images, rel) -> None:
    # The neurons' writes plus the output bias are exactly the MLP output the forward pass recorded.
    images = make_images(2, seed=2)
    cap = vc.capture(layerscale_vit, images, keep_mlp_tokens=True)
    mlp = cap.mlp_tokens[:, 1]  # [B, N, W]
    block = layerscale_vit.transformer.resblocks[1]
    bias = (block.mlp.c_proj.bias * block.ls_2.gamma).expand_as(mlp)
    whole = direct_write_effects(layerscale_vit, images, mlp[:, :, None], [2, 3])[:, 0]
    from_bias = direct_write_effects(layerscale_vit, images, bias[:, :, None], [2, 3])[:, 0]
    neurons = vc.neuron_effects(layerscale_vit, images, 1, normalize=False).sum(1)
    assert rel(neurons + from_bias, whole) < 1e-4


def test_even_split_shares_are_the_same_for_every_neuron(layerscale_vit, make_images) -> None:
    # Zero activations leave only the even split's shares: identical for every neuron, zero per term.
    images = make_images(2)
    directions = vc.neuron_directions(layerscale_vit, 1, convention="even_split")
    cap = vc.capture(layerscale_vit, images, keep_neurons=[1])
    from vision_kernels.clip.neurons import _split_offset

    offset = _split_offset(directions, cap, 4).float()
    zero = torch.zeros_like(cap.layer_neurons(1))
    out = second_order_effects(cap.attention, cap.ln1_std, zero, directions.directions, 1 / cap.final_std, offset,
                               list(directions.later_layers))  # fmt: skip
    torch.testing.assert_close(out, offset[:, None].expand_as(out))
    per_term = vc.neuron_directions(layerscale_vit, 1)
    assert torch.equal(second_order_effects(cap.attention, cap.ln1_std, zero, per_term.directions, 1 / cap.final_std,
                                            None, [2, 3]), torch.zeros_like(out))  # fmt: skip


@pytest.mark.emulation
def test_emulated_cuda_kernel_on_captured_inputs(layerscale_vit, make_images, rel) -> None:
    images = make_images(2)
    directions = vc.neuron_directions(layerscale_vit, 1, list(range(0, 128, 5)))
    cap = vc.capture(layerscale_vit, images, keep_neurons=[1])
    act = cap.layer_neurons(1)[..., directions.neurons]
    args = (cap.attention, cap.ln1_std, act, directions.directions, 1 / cap.final_std, None)
    layers = list(directions.later_layers)
    got = emulated(torch.ops.vision_kernels.second_order_effects)(*args, layers, None, True)
    assert rel(got, second_order_effects(*args, layers)) < 1e-5


def test_directions_layout_and_definition(layerscale_vit) -> None:
    directions = vc.neuron_directions(layerscale_vit, 2, [5, 9], dtype=torch.float64)
    assert isinstance(directions, NeuronDirections) and directions.directions.shape == (1, 4, 2, 24)
    assert directions.later_layers == (3,) and directions.neurons.tolist() == [5, 9]
    block, later = layerscale_vit.transformer.resblocks[2], layerscale_vit.transformer.resblocks[3]
    write = (block.mlp.c_proj.weight[:, 9] * block.ls_2.gamma).double()
    write = write - write.mean()  # per-term centering
    value = (later.attn.in_proj_weight[128:] @ (later.ln_1.weight * write.float())).double()  # [H * Dh]
    folded = vc.folded_head_matrices(layerscale_vit).double()[3]  # [H, Dh, E]
    want = torch.einsum("hd,hde->he", value.view(4, 16), folded)
    torch.testing.assert_close(directions.directions[0, :, 1], want, rtol=1e-5, atol=1e-6)
    assert directions.directions.permute(2, 0, 1, 3).is_contiguous()  # neuron-major memory


def test_directions_are_cached_and_rebuilt_when_weights_change(make_tiny_vit, make_images) -> None:
    model = make_tiny_vit(layers=3)
    first = vc.neuron_directions(model, 0)
    assert vc.neuron_directions(model, 0) is first
    assert vc.neuron_directions(model, 0, convention="even_split") is not first
    before = vc.neuron_effects(model, make_images(1), 0)
    with torch.no_grad():
        model.transformer.resblocks[2].attn.in_proj_weight.mul_(2.0)  # values of a later layer
    rebuilt = vc.neuron_directions(model, 0)
    assert rebuilt is not first and not torch.equal(rebuilt.directions, first.directions)
    assert not torch.allclose(vc.neuron_effects(model, make_images(1), 0), before)


def test_batches_directions_dtype_and_out(layerscale_vit, make_images) -> None:
    images = make_images(5)
    whole = vc.neuron_effects(layerscale_vit, images, 1)
    batched = vc.neuron_effects(layerscale_vit, images, 1, batch_size=2)
    torch.testing.assert_close(batched, whole)
    out = torch.full((5, 128, 24), float("nan"), dtype=torch.float64)
    assert vc.neuron_effects(layerscale_vit, images, 1, out=out, batch_size=3) is out
    torch.testing.assert_close(out.float(), whole, rtol=1e-5, atol=1e-6)
    directions = vc.neuron_directions(layerscale_vit, 1, dtype=torch.bfloat16)
    low = vc.neuron_effects(layerscale_vit, images, 1, directions=directions)
    assert low.dtype == torch.bfloat16
    assert float((low.float() - whole).abs().max()) < 0.05 * float(whole.abs().max())


def test_capture_of_chosen_neuron_layers(layerscale_vit, make_images) -> None:
    images = make_images(2)
    every = vc.capture(layerscale_vit, images, keep_neurons=True)
    some = vc.capture(layerscale_vit, images, keep_neurons=[-1, 1])
    assert some.neuron_layers == (1, 3) and some.neurons.shape == (2, 2, 17, 128)
    assert every.neuron_layers == (0, 1, 2, 3)
    torch.testing.assert_close(some.layer_neurons(3), every.neurons[:, 3])
    assert vc.capture(layerscale_vit, images).neuron_layers is None
    with pytest.raises(IndexError, match=r"capture: argument 'keep_neurons' must hold layer indices in \[-4, 4\)"):
        vc.capture(layerscale_vit, images, keep_neurons=[4])
    with pytest.raises(IndexError, match=r"argument 'layer' must be one of the captured layers \[1, 3\], got 0"):
        some.layer_neurons(0)
    with pytest.raises(ValueError, match=r"the capture holds no MLP activations"):
        vc.capture(layerscale_vit, images).layer_neurons(0)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m, x: vc.neuron_effects(m, x, 4), IndexError, r"argument 'layer' must be an MLP layer with at least"),
        (lambda m, x: vc.neuron_effects(m, x, 3), IndexError, r"argument 'layer' must be an MLP layer"),
        (lambda m, x: vc.neuron_effects(m, x, -1), IndexError, r"argument 'layer' must be an MLP layer"),
        (lambda m, x: vc.neuron_effects(m, x, -5), IndexError, r"got -5"),
        (
            lambda m, x: vc.neuron_effects(m, x, 1, [0, 128]),
            IndexError,
            r"argument 'neurons' must hold neuron indices in \[0, 128\) \(the MLP width\), got 128 at position 1",
        ),
        (lambda m, x: vc.neuron_effects(m, x, 1, [-1]), IndexError, r"argument 'neurons' must hold neuron indices"),
        (lambda m, x: vc.neuron_effects(m, x, 1, []), ValueError, r"argument 'neurons' must list at least one"),
        (
            lambda m, x: vc.neuron_effects(m, x, 1, later_layers=[1]),
            IndexError,
            r"argument 'later_layers' must hold layers after the MLP layer 1 and below 4, got 1 at position 0",
        ),
        (lambda m, x: vc.neuron_effects(m, x, 1, later_layers=[]), ValueError, r"must list at least one layer"),
        (lambda m, x: vc.neuron_effects(m, x, 1, convention="x"), ValueError, r"argument 'convention' must be one"),
        (
            lambda m, x: vc.neuron_effects(m, x, 1, out=torch.empty(2, 128, 23)),
            ValueError,
            r"argument 'out' must have shape \[2, 128, 24\], got \[2, 128, 23\]",
        ),
        (
            lambda m, x: vc.neuron_effects(m, x, 1, directions=vc.neuron_directions(m, 0)),
            ValueError,
            r"argument 'directions' was built for layer 0, later layers \[1, 2, 3\]",
        ),
        (lambda m, x: vc.neuron_effects(m, x[:, :, :16], 1), ValueError, r"argument 'images' must be 32 x 32 pixels"),
        (lambda m, x: vc.neuron_effects(m, x, 1, batch_size=0), ValueError, r"argument 'batch_size' must be >= 1"),
    ],
)
def test_bad_input(layerscale_vit, make_images, call, error, message) -> None:
    with pytest.raises(error, match=message):
        call(layerscale_vit, make_images(2))


def test_a_layer_norm_between_neurons_and_projection_is_rejected(make_tiny_vit, make_images) -> None:
    from open_clip.transformer import CustomResidualAttentionBlock

    model = make_tiny_vit(layers=2)
    model.transformer.resblocks[0] = CustomResidualAttentionBlock(64, 4, mlp_ratio=2.0, scale_fc=True).eval()
    with pytest.raises(ValueError, match=r"scale_fc \(a LayerNorm between the MLP neurons and c_proj\)"):
        vc.neuron_effects(model, make_images(1), 0)
