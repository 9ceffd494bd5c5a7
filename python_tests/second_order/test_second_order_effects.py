"""second_order_effects: parity with the reference (CPU kernel and emulated CUDA kernel) over shapes, layer lists,
dtypes and strides; gradients, torch.library contracts, torch.compile, numpy interop, bad input, threads, 64-bit
offsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vision_kernels.ops import second_order_effects
from vision_kernels.reference.second_order import second_order_effects as reference
from vision_kernels.testing import assert_low_precision_parity, emulated, tolerances

OP = torch.ops.vision_kernels.second_order_effects


def cpu_kernel(attn, ln_std, act, directions, scale, offset=None, layers=None, out_dtype=None):
    return second_order_effects(attn, ln_std, act, directions, scale, offset, layers, out_dtype=out_dtype)


def cuda_emulated(attn, ln_std, act, directions, scale, offset=None, layers=None, out_dtype=None):
    layer_list = list(range(attn.shape[1])) if layers is None else list(layers)
    return emulated(OP)(attn, ln_std, act, directions, scale, offset, layer_list, out_dtype, True)


KERNELS = [
    pytest.param(cpu_kernel, id="cpu"),
    pytest.param(cuda_emulated, id="cuda_emulated", marks=pytest.mark.emulation),
]


def make_inputs(b, nl, h, n, nn, e, s=None, dtype=torch.float32, offset=True):
    """attn [B, L, H, N], ln_std [B, L, N], act [B, N, Nn], directions [S, H, Nn, E], scale [B], offset [B, E]."""
    s = nl if s is None else s
    attn = torch.softmax(torch.randn(b, nl, h, n), -1).to(dtype)
    ln_std = (torch.rand(b, nl, n) + 0.5).to(dtype)
    act = torch.randn(b, n, nn).to(dtype)
    directions = torch.randn(s, h, nn, e).to(dtype)
    scale = (torch.rand(b) + 0.5).to(dtype)
    off = torch.randn(b, e).to(dtype) if offset else None
    return attn, ln_std, act, directions, scale, off


def assert_parity(kernel, inputs, layers=None, out_dtype=None):
    got = kernel(*inputs, layers=layers, out_dtype=out_dtype)
    want = reference(*inputs, layers, out_dtype=out_dtype)
    assert got.shape == want.shape and got.dtype == want.dtype
    low = (torch.float16, torch.bfloat16)
    if inputs[0].dtype in low or got.dtype in low:
        exact = reference(*(None if t is None else t.double() for t in inputs), layers, out_dtype=torch.float64)
        assert_low_precision_parity(got, want, exact, what=f"{inputs[0].dtype}->{got.dtype}")
    else:
        tol = tolerances(torch.float64 if inputs[0].dtype == torch.float64 else torch.float32)
        magnitude = float(want.abs().max()) if want.numel() else 1.0
        torch.testing.assert_close(got, want, rtol=tol["rtol"], atol=tol["atol"] * max(magnitude, 1.0))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("with_offset", [False, True])
def test_parity_partial_tiles(kernel, with_offset) -> None:
    # 37 images, 70 columns, 19 neurons: partial tiles of both kernels on every axis.
    inputs = make_inputs(37, 3, 2, 9, 19, 70, s=2, offset=with_offset)
    assert_parity(kernel, inputs, layers=[2, 0])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    "shape", [(1, 1, 1, 1, 1, 1), (2, 2, 3, 5, 4, 7), (3, 4, 2, 17, 33, 40), (1, 2, 12, 50, 16, 64)]
)
def test_parity_shapes(kernel, shape) -> None:
    inputs = make_inputs(*shape)
    assert_parity(kernel, inputs)


@pytest.mark.parametrize("kernel", KERNELS)
def test_layer_lists_with_repeats_any_order_and_many_pairs(kernel) -> None:
    for layers in ([3], [1, 1], [3, 0, 2], [0, 1, 2, 3, 3, 2]):  # the last: 18 pairs, two 16-deep slices
        inputs = make_inputs(2, 4, 3, 6, 5, 9, s=len(layers))
        assert_parity(kernel, inputs, layers=layers)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_input_dtypes(kernel, dtype) -> None:
    assert_parity(kernel, make_inputs(3, 2, 2, 11, 9, 40, dtype=dtype))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    ("in_dtype", "out_dtype"),
    [(torch.float32, torch.float16), (torch.float32, torch.bfloat16), (torch.float32, torch.float64),
     (torch.float16, torch.float32), (torch.bfloat16, torch.float32)],
)  # fmt: skip
def test_output_dtype_independent_of_input(kernel, in_dtype, out_dtype) -> None:
    assert_parity(kernel, make_inputs(2, 2, 2, 10, 7, 24, dtype=in_dtype), out_dtype=out_dtype)


@pytest.mark.parametrize("kernel", KERNELS)
def test_strided_and_broadcast_inputs(kernel) -> None:
    b, nl, h, n, nn, e = 3, 3, 2, 7, 6, 19
    attn = torch.rand(b, h, n, nl).permute(0, 3, 1, 2)  # [B, L, H, N], non-contiguous
    ln_std = (torch.rand(b, n, nl) + 0.5).permute(0, 2, 1)  # [B, L, N]
    act = torch.randn(b, n, 3 * nn)[..., ::3]  # a strided neuron subset
    directions = torch.randn(nl, h, e, nn).transpose(-1, -2)  # [S, H, Nn, E], E not unit-stride
    scale = torch.rand(2 * b)[::2] + 0.5
    offset = torch.randn(1, e).expand(b, e)  # stride 0
    assert not act.is_contiguous() and directions.stride(-1) != 1
    assert_parity(kernel, (attn, ln_std, act, directions, scale, offset))
    neuron_major = torch.randn(nn, nl, h, e).permute(1, 2, 0, 3)  # the layout neuron_directions builds
    assert neuron_major.stride(0) == h * neuron_major.stride(1)  # read in place by the CPU kernel
    assert_parity(kernel, (attn, ln_std, act, neuron_major, scale, offset))
    padded = torch.randn(nl, h, nn, e + 5)[..., :e]  # unit stride along E, padded rows
    assert_parity(kernel, (attn, ln_std, act, padded, scale, None), layers=[2, 0, 1])


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_inputs(kernel) -> None:
    assert kernel(*make_inputs(0, 2, 2, 5, 3, 4)).shape == (0, 3, 4)
    assert kernel(*make_inputs(2, 2, 2, 5, 0, 4)).shape == (2, 0, 4)
    inputs = make_inputs(2, 2, 2, 0, 3, 4)  # no tokens: the offset alone
    out = kernel(*inputs)
    torch.testing.assert_close(out, inputs[5][:, None, :].expand(2, 3, 4))
    inputs = make_inputs(2, 2, 2, 5, 3, 4, s=0)  # no later layer
    out = kernel(*inputs, layers=[])
    torch.testing.assert_close(out, inputs[5][:, None, :].expand(2, 3, 4))


@given(
    b=st.integers(1, 5),
    nl=st.integers(1, 3),
    h=st.integers(1, 3),
    n=st.integers(1, 20),
    nn=st.integers(1, 20),
    e=st.integers(1, 40),
    with_offset=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_parity_property(b, nl, h, n, nn, e, with_offset, dtype) -> None:
    inputs = make_inputs(b, nl, h, n, nn, e, dtype=dtype, offset=with_offset)
    assert_parity(cpu_kernel, inputs, layers=list(range(nl))[::-1])


def test_linear_in_activations_and_additive_over_layers() -> None:
    attn, ln_std, act, directions, scale, _ = make_inputs(2, 3, 2, 8, 5, 12)
    full = cpu_kernel(attn, ln_std, act, directions, scale)
    parts = sum(cpu_kernel(attn, ln_std, act, directions[s : s + 1], scale, layers=[s]) for s in range(3))
    torch.testing.assert_close(full, parts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cpu_kernel(attn, ln_std, 2 * act, directions, scale), 2 * full, rtol=1e-5, atol=1e-5)


def test_gradients() -> None:
    inputs = tuple(t.double().requires_grad_() for t in make_inputs(2, 3, 2, 4, 3, 5, s=2))

    def function(a, s, x, d, c, o):
        return second_order_effects(a, s, x, d, c, o, [2, 0])

    torch.autograd.gradcheck(function, inputs)
    weights = torch.randn_like(function(*inputs))
    (function(*inputs) * weights).sum().backward()
    ours = [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    (reference(*inputs, [2, 0]) * weights).sum().backward()
    for got, t in zip(ours, inputs, strict=True):
        torch.testing.assert_close(got, t.grad)


def test_torch_compile_fullgraph() -> None:
    def effect_norms(attn, ln_std, act, directions, scale):
        return second_order_effects(attn, ln_std, act, directions, scale).norm(dim=-1)

    compiled = torch.compile(effect_norms, fullgraph=True)
    inputs = make_inputs(2, 2, 2, 5, 3, 6, offset=False)[:5]
    torch.testing.assert_close(compiled(*inputs), effect_norms(*inputs))


def test_meta_tensors_give_shapes() -> None:
    shapes = ((2, 4, 3, 5), (2, 4, 5), (2, 5, 7), (2, 3, 7, 16), (2,))
    meta = [torch.empty(s, device="meta") for s in shapes]
    out = second_order_effects(*meta, layers=[1, 3], out_dtype=torch.bfloat16)
    assert out.shape == (2, 7, 16) and out.device.type == "meta" and out.dtype == torch.bfloat16


def test_numpy_in_numpy_out() -> None:
    arrays = [t.numpy() for t in make_inputs(2, 2, 2, 3, 4, 5, offset=False)[:5]]
    out = second_order_effects(*arrays)
    assert isinstance(out, np.ndarray) and out.shape == (2, 4, 5)
    np.testing.assert_allclose(out, reference(*(torch.from_numpy(a) for a in arrays)).numpy(), rtol=1e-5, atol=1e-6)


def _bad(**changes):
    attn, ln_std, act, directions, scale, offset = make_inputs(2, 3, 2, 5, 4, 6)
    args = {"attn": attn, "ln_std": ln_std, "act": act, "directions": directions, "scale": scale, "offset": offset}
    args["layers"] = None
    args.update(changes)
    return args


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"attn": torch.rand(2, 3, 5)}, ValueError, r"argument 'attn' must have 4 dimensions \[B, L, H, N\]"),
        ({"ln_std": torch.rand(2, 3)}, ValueError, r"argument 'ln_std' must have 3 dimensions \[B, L, N\]"),
        ({"act": torch.rand(2, 5)}, ValueError, r"argument 'activations' must have 3 dimensions \[B, N, Nn\]"),
        ({"directions": torch.rand(3, 2, 4)}, ValueError, r"argument 'directions' must have 4 dimensions"),
        ({"scale": torch.rand(2, 1)}, ValueError, r"argument 'scale' must have 1 dimensions"),
        ({"ln_std": torch.rand(2, 3, 6) + 1}, ValueError, r"argument 'ln_std' must have size 5 in dimension 2 \(N"),
        ({"act": torch.rand(2, 4, 4)}, ValueError, r"argument 'activations' must have size 5 in dimension 1 \(N"),
        ({"act": torch.rand(1, 5, 4)}, ValueError, r"argument 'activations' must have size 2 in dimension 0 \(B"),
        (
            {"directions": torch.rand(3, 2, 5, 6)},
            ValueError,
            r"argument 'directions' must have size 4 in dimension 2 \(Nn, the neurons of activations\)",
        ),
        (
            {"directions": torch.rand(2, 2, 4, 6)},
            ValueError,
            r"argument 'directions' must have size 3 in dimension 0 \(S, the number of listed layers\)",
        ),
        ({"directions": torch.rand(3, 3, 4, 6)}, ValueError, r"argument 'directions' must have size 2 in dimension 1"),
        ({"scale": torch.rand(3)}, ValueError, r"argument 'scale' must have size 2 in dimension 0"),
        ({"offset": torch.randn(2, 7)}, ValueError, r"argument 'offset' must have size 6 in dimension 1 \(E"),
        ({"offset": torch.randn(2, 1, 6)}, ValueError, r"argument 'offset' must have 2 dimensions"),
        (
            {"layers": [0, 1, 3]},
            IndexError,
            r"argument 'layers' must hold layer indices in \[0, 3\), got 3 at position 2",
        ),
        ({"layers": [0, -1, 1]}, IndexError, r"argument 'layers' must hold layer indices in \[0, 3\), got -1"),
        ({"attn": torch.rand(2, 3, 2, 5).int()}, TypeError, r"argument 'attn' must have dtype in"),
        ({"act": torch.rand(2, 5, 4).double()}, TypeError, r"argument 'activations' must have the dtype of 'attn'"),
        ({"offset": torch.randn(2, 6).half()}, TypeError, r"argument 'offset' must have the dtype of 'attn'"),
        (
            {"act": torch.full((2, 5, 4), float("nan"))},
            ValueError,
            r"argument 'activations' must be finite \(no NaN or Inf\), got nan at index \(0, 0, 0\)",
        ),
        ({"scale": torch.tensor([1.0, float("inf")])}, ValueError, r"argument 'scale' must be finite"),
        ({"ln_std": torch.zeros(2, 3, 5)}, ValueError, r"argument 'ln_std' must be > 0 \(a LayerNorm's"),
    ],
)
def test_bad_input(kernel, changes, error, message) -> None:
    a = _bad(**changes)
    with pytest.raises(error, match=r"vision_kernels\.second_order_effects: " + message):
        kernel(a["attn"], a["ln_std"], a["act"], a["directions"], a["scale"], a["offset"], a["layers"])


def test_too_many_layers_and_argument_types() -> None:
    attn, ln_std, act, directions, scale, _ = make_inputs(1, 1, 1, 2, 2, 3)
    many = torch.randn(257, 1, 2, 3)
    with pytest.raises(ValueError, match=r"argument 'layers' must list at most 256 layers"):
        second_order_effects(attn, ln_std, act, many, scale, layers=[0] * 257)
    with pytest.raises(TypeError, match=r"argument 'out_dtype' must be one of \{float32, float64, float16, bfloat16\}"):
        second_order_effects(attn, ln_std, act, directions, scale, out_dtype=torch.int64)
    with pytest.raises(TypeError, match=r"argument 'directions' must be a torch.Tensor, numpy.ndarray or cupy"):
        second_order_effects(attn, ln_std, act, [[1.0]], scale)


def test_nan_propagates_when_unchecked() -> None:
    attn, ln_std, act, directions, scale, _ = make_inputs(1, 1, 1, 3, 2, 4)
    directions[0, 0, 1, 2] = float("nan")
    out = second_order_effects(attn, ln_std, act, directions, scale, check_finite=False)
    assert torch.isnan(out[0, 1, 2]) and torch.isfinite(out[0, 0]).all() and torch.isfinite(out[0, 1, :2]).all()


def test_mixed_devices() -> None:
    attn, ln_std, act, directions, scale, _ = make_inputs(1, 1, 1, 3, 2, 4)
    with pytest.raises(
        ValueError, match=r"arguments 'attn' and 'directions' must be on the same device, got cpu and meta"
    ):
        second_order_effects(attn, ln_std, act, torch.empty(directions.shape, device="meta"), scale)


def test_native_core_checks_its_own_arguments() -> None:
    from vision_kernels import _native

    attn, ln_std, act, directions, scale, _ = make_inputs(1, 2, 1, 3, 2, 4)
    ref = _native.tensor_ref
    core = _native.cpu_module()
    with pytest.raises(
        ValueError, match=r"argument 'out' must have size 4 in dimension 2 \(E\), got shape \[1, 2, 5\]"
    ):
        core.second_order_effects_cpu(ref(attn), ref(ln_std), ref(act), ref(directions), ref(scale), None, [0, 1],
                                      ref(torch.empty(1, 2, 5)))  # fmt: skip
    with pytest.raises(IndexError, match=r"argument 'layers' must hold layer indices in \[0, 2\), got 7"):
        core.second_order_effects_cpu(ref(attn), ref(ln_std), ref(act), ref(directions), ref(scale), None, [0, 7],
                                      ref(torch.empty(1, 2, 4)))  # fmt: skip
    with pytest.raises(ValueError, match=r"argument 'out' must be contiguous"):
        core.second_order_effects_cpu(ref(attn), ref(ln_std), ref(act), ref(directions), ref(scale), None, [0, 1],
                                      ref(torch.empty(1, 2, 8)[..., ::2]))  # fmt: skip


@pytest.mark.emulation
def test_emulated_kernel_checks_its_workspace() -> None:
    from vision_kernels import _native

    attn, ln_std, act, directions, scale, _ = make_inputs(1, 2, 1, 3, 2, 4)
    ref = _native.tensor_ref
    core = _native.emulation_module()
    out = torch.empty(1, 2, 4)
    with pytest.raises(ValueError, match=r"argument 'workspace' must have size 2 in dimension 1 \(P, the"):
        core.second_order_effects_cuda(ref(attn), ref(ln_std), ref(act), ref(directions), ref(scale), None, [0, 1],
                                       ref(out), ref(torch.empty(1, 3, 2)), 0)  # fmt: skip
    with pytest.raises(TypeError, match=r"argument 'workspace' must have dtype in \{float32\}, got float64"):
        core.second_order_effects_cuda(ref(attn), ref(ln_std), ref(act), ref(directions), ref(scale), None, [0, 1],
                                       ref(out), ref(torch.empty(1, 2, 2, dtype=torch.float64)), 0)  # fmt: skip


def test_64bit_offsets_with_strided_activations() -> None:
    # Tokens 2^31 + 7 elements apart: element offsets exceed int32; untouched pages stay unallocated.
    stride = 2**31 + 7
    storage = torch.empty(stride + 8)
    rows = torch.randn(2, 3)  # [N, Nn]
    storage[:3] = rows[0]
    storage[stride : stride + 3] = rows[1]
    act = storage.as_strided((1, 2, 3), (0, stride, 1))
    attn, ln_std, _, directions, scale, _ = make_inputs(1, 1, 2, 2, 3, 5)
    got = second_order_effects(attn, ln_std, act, directions, scale, check_finite=False)
    torch.testing.assert_close(got, reference(attn, ln_std, rows[None], directions, scale))
