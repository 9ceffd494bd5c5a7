"""attention_decomposition: parity with the reference (CPU kernel and emulated CUDA kernel) over shapes,
kept axes, layer lists, dtypes and strides; gradients, torch.library contracts, torch.compile, numpy
interop, bad input, threads, 64-bit offsets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vision_kernels.ops import attention_decomposition
from vision_kernels.reference.attention_decomp import attention_decomposition as reference
from vision_kernels.testing import assert_low_precision_parity, emulated, tolerances

OP = torch.ops.vision_kernels.attention_decomposition
KEEPS = list(itertools.product([True, False], repeat=3))  # (keep_layers, keep_heads, keep_tokens)


def cpu_kernel(values, attn, folded, scale, offset=None, layers=None, keep=(True, True, True), out_dtype=None):
    return attention_decomposition(
        values, attn, folded, scale, offset, layers,
        keep_layers=keep[0], keep_heads=keep[1], keep_tokens=keep[2], out_dtype=out_dtype,
    )  # fmt: skip


def cuda_emulated(values, attn, folded, scale, offset=None, layers=None, keep=(True, True, True), out_dtype=None):
    layer_list = list(range(values.shape[1])) if layers is None else list(layers)
    return emulated(OP)(values, attn, folded, scale, offset, layer_list, *keep, out_dtype, True)


KERNELS = [
    pytest.param(cpu_kernel, id="cpu"),
    pytest.param(cuda_emulated, id="cuda_emulated", marks=pytest.mark.emulation),
]


def make_inputs(b, nl, n, h, d, e, dtype=torch.float32, offset=True):
    values = torch.randn(b, nl, n, h * d).unflatten(-1, (h, d)).to(dtype)  # view of [B, L, N, W]
    attn = torch.softmax(torch.randn(b, nl, h, n), -1).to(dtype)
    folded = torch.randn(nl, h, d, e).to(dtype)
    scale = (torch.rand(b) + 0.5).to(dtype)
    off = torch.randn(b, nl, e).to(dtype) if offset else None
    return values, attn, folded, scale, off


def assert_parity(kernel, inputs, layers=None, keep=(True, True, True), out_dtype=None):
    values = inputs[0]
    got = kernel(*inputs, layers=layers, keep=keep, out_dtype=out_dtype)
    want = reference(*inputs, layers, keep_layers=keep[0], keep_heads=keep[1], keep_tokens=keep[2], out_dtype=out_dtype)
    assert got.shape == want.shape and got.dtype == want.dtype
    low = (torch.float16, torch.bfloat16)
    if values.dtype in low or got.dtype in low:
        exact = reference(
            *(None if t is None else t.double() for t in inputs), layers,
            keep_layers=keep[0], keep_heads=keep[1], keep_tokens=keep[2], out_dtype=torch.float64,
        )  # fmt: skip
        assert_low_precision_parity(got, want, exact, what=f"{values.dtype}->{got.dtype} keep={keep}")
    else:
        tol = tolerances(torch.float64 if values.dtype == torch.float64 else torch.float32)  # accumulation
        scale = float(want.abs().max()) if want.numel() else 1.0
        torch.testing.assert_close(got, want, rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1.0))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("keep", KEEPS, ids=lambda k: "".join("LHN"[i] if k[i] else "-" for i in range(3)))
@pytest.mark.parametrize("with_offset", [False, True])
def test_parity_every_kept_axis_combination(kernel, keep, with_offset) -> None:
    # 70 tokens and 70 columns: partial tiles on both axes for both kernels.
    inputs = make_inputs(2, 3, 70, 2, 12, 70, offset=with_offset)
    assert_parity(kernel, inputs, layers=[2, 0], keep=keep)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1, 1), (2, 2, 5, 3, 4, 7), (1, 2, 9, 2, 16, 33), (3, 1, 17, 4, 3, 130)])
def test_parity_shapes(kernel, shape) -> None:
    inputs = make_inputs(*shape)
    for keep in [(True, True, True), (False, False, False), (True, False, True)]:
        assert_parity(kernel, inputs, keep=keep)


@pytest.mark.parametrize("kernel", KERNELS)
def test_layer_lists_with_repeats_and_any_order(kernel) -> None:
    inputs = make_inputs(2, 4, 6, 2, 5, 9)
    for layers in ([3], [1, 1], [3, 0, 2], [0, 1, 2, 3, 3]):
        for keep in [(True, True, True), (False, True, False)]:
            assert_parity(kernel, inputs, layers=layers, keep=keep)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_input_dtypes(kernel, dtype) -> None:
    inputs = make_inputs(2, 2, 11, 2, 8, 40, dtype=dtype)
    for keep in [(True, True, True), (False, False, False)]:
        assert_parity(kernel, inputs, keep=keep)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    ("in_dtype", "out_dtype"),
    [
        (torch.float32, torch.float16),
        (torch.float32, torch.bfloat16),
        (torch.float32, torch.float64),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
    ],
)
def test_output_dtype_independent_of_input(kernel, in_dtype, out_dtype) -> None:
    inputs = make_inputs(1, 2, 10, 2, 8, 24, dtype=in_dtype)
    for keep in [(True, True, True), (True, False, False)]:
        assert_parity(kernel, inputs, keep=keep, out_dtype=out_dtype)


@pytest.mark.parametrize("kernel", KERNELS)
def test_strided_and_broadcast_inputs(kernel) -> None:
    b, nl, n, h, d, e = 2, 3, 7, 2, 5, 19
    values = torch.randn(b, n, nl, h, d).permute(0, 2, 1, 3, 4)  # [B, L, N, H, Dh], non-contiguous
    attn = torch.rand(b, h, n, nl).permute(0, 3, 1, 2)  # [B, L, H, N], non-contiguous
    folded = torch.randn(nl, h, e, d).transpose(-1, -2)  # [L, H, Dh, E], E not unit-stride
    scale = torch.rand(2 * b)[::2]  # stride 2
    offset = torch.randn(1, 1, e).expand(b, nl, e)  # stride 0
    assert not values.is_contiguous() and folded.stride(-1) != 1
    for keep in KEEPS:
        assert_parity(kernel, (values, attn, folded, scale, offset), keep=keep)
    rows = torch.randn(nl, h, d, e + 5)[..., :e]  # unit stride along E, padded rows: read in place
    assert rows.stride(-1) == 1 and rows.stride(-2) == e + 5
    for keep in [(True, True, True), (False, False, False)]:
        assert_parity(kernel, (values, attn, rows, scale, offset), keep=keep)


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_inputs(kernel) -> None:
    inputs = make_inputs(0, 2, 5, 2, 3, 4)
    assert kernel(*inputs).shape == (0, 2, 2, 5, 4)
    inputs = make_inputs(2, 2, 0, 2, 3, 4)
    assert kernel(*inputs).shape == (2, 2, 2, 0, 4)
    summed = kernel(*inputs, keep=(True, True, False))  # no tokens: zeros plus 0 x offset
    assert summed.shape == (2, 2, 2, 1, 4) and torch.equal(summed, torch.zeros_like(summed))
    inputs = make_inputs(2, 2, 5, 2, 3, 4)
    assert kernel(*inputs, layers=[]).shape == (2, 0, 2, 5, 4)
    none = kernel(*inputs, layers=[], keep=(False, True, True))  # summed over no layer
    assert none.shape == (2, 1, 2, 5, 4) and torch.equal(none, torch.zeros_like(none))


@given(
    b=st.integers(1, 3),
    nl=st.integers(1, 3),
    n=st.integers(1, 20),
    h=st.integers(1, 3),
    d=st.integers(1, 9),
    e=st.integers(1, 40),
    keep=st.sampled_from(KEEPS),
    with_offset=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_parity_property(b, nl, n, h, d, e, keep, with_offset, dtype) -> None:
    inputs = make_inputs(b, nl, n, h, d, e, dtype=dtype, offset=with_offset)
    assert_parity(cpu_kernel, inputs, layers=list(range(nl))[::-1], keep=keep)


def test_summing_in_the_kernel_equals_summing_the_per_token_output() -> None:
    inputs = make_inputs(2, 3, 13, 3, 8, 20)
    full = cpu_kernel(*inputs)  # [B, L, H, N, E]
    torch.testing.assert_close(cpu_kernel(*inputs, keep=(False, False, False))[:, 0, 0, 0], full.sum((1, 2, 3)))
    torch.testing.assert_close(cpu_kernel(*inputs, keep=(True, False, True))[:, :, 0], full.sum(2))


@pytest.mark.parametrize("keep", [(True, True, True), (False, False, False), (True, False, True), (False, True, False)])
def test_gradients(keep) -> None:
    values, attn, folded, scale, offset = (t.double().requires_grad_() for t in make_inputs(2, 2, 3, 2, 2, 3))

    def function(v, a, m, s, o):
        return attention_decomposition(v, a, m, s, o, [1, 0, 1], keep_layers=keep[0], keep_heads=keep[1],
                                       keep_tokens=keep[2])  # fmt: skip

    torch.autograd.gradcheck(function, (values, attn, folded, scale, offset))
    if keep == (True, False, True):  # the backward is itself differentiable (second order, one mode: slow)
        torch.autograd.gradgradcheck(function, (values, attn, folded, scale, offset))
    weights = torch.randn_like(function(values, attn, folded, scale, offset))
    (function(values, attn, folded, scale, offset) * weights).sum().backward()
    ours = [t.grad.clone() for t in (values, attn, folded, scale, offset)]
    for t in (values, attn, folded, scale, offset):
        t.grad = None
    want = reference(values, attn, folded, scale, offset, [1, 0, 1], keep_layers=keep[0], keep_heads=keep[1],
                     keep_tokens=keep[2])  # fmt: skip
    (want * weights).sum().backward()
    for got, t in zip(ours, (values, attn, folded, scale, offset), strict=True):
        torch.testing.assert_close(got, t.grad)


def test_torch_compile_fullgraph() -> None:
    def head_norms(values, attn, folded, scale):
        return attention_decomposition(values, attn, folded, scale, keep_tokens=False).norm(dim=-1)

    compiled = torch.compile(head_norms, fullgraph=True)
    inputs = make_inputs(2, 2, 5, 2, 3, 6, offset=False)[:4]
    torch.testing.assert_close(compiled(*inputs), head_norms(*inputs))


def test_meta_tensors_give_shapes() -> None:
    meta = [torch.empty(s, device="meta") for s in ((2, 3, 5, 4, 8), (2, 3, 4, 5), (3, 4, 8, 16), (2,))]
    out = attention_decomposition(*meta, layers=[0, 2], keep_heads=False, out_dtype=torch.bfloat16)
    assert out.shape == (2, 2, 1, 5, 16) and out.device.type == "meta" and out.dtype == torch.bfloat16


def test_numpy_in_numpy_out() -> None:
    inputs = [t.numpy() for t in make_inputs(1, 2, 3, 2, 2, 4, offset=False)[:4]]
    out = attention_decomposition(*inputs, keep_tokens=False)
    assert isinstance(out, np.ndarray) and out.shape == (1, 2, 2, 1, 4)
    want = reference(*(torch.from_numpy(a) for a in inputs), keep_tokens=False).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def _bad(**changes):
    values, attn, folded, scale, offset = make_inputs(2, 3, 5, 2, 4, 6)
    args = {"values": values, "attn": attn, "folded": folded, "scale": scale, "offset": offset, "layers": None}
    args.update(changes)
    return args


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (
            {"values": torch.randn(2, 3, 5, 8)},
            ValueError,
            r"argument 'values' must have 5 dimensions \[B, L, N, H, Dh\]",
        ),
        ({"attn": torch.randn(2, 3, 2)}, ValueError, r"argument 'attn' must have 4 dimensions"),
        ({"folded": torch.randn(3, 2, 4)}, ValueError, r"argument 'folded' must have 4 dimensions"),
        ({"scale": torch.rand(2, 1)}, ValueError, r"argument 'scale' must have 1 dimensions"),
        ({"attn": torch.rand(2, 3, 2, 6)}, ValueError, r"argument 'attn' must have size 5 in dimension 3 \(N"),
        ({"attn": torch.rand(1, 3, 2, 5)}, ValueError, r"argument 'attn' must have size 2 in dimension 0"),
        ({"folded": torch.randn(3, 3, 4, 6)}, ValueError, r"argument 'folded' must have size 2 in dimension 1 \(H"),
        ({"folded": torch.randn(3, 2, 5, 6)}, ValueError, r"argument 'folded' must have size 4 in dimension 2 \(Dh"),
        ({"scale": torch.rand(3)}, ValueError, r"argument 'scale' must have size 2 in dimension 0"),
        ({"offset": torch.randn(2, 3, 7)}, ValueError, r"argument 'offset' must have size 6 in dimension 2 \(E"),
        ({"offset": torch.randn(2, 6)}, ValueError, r"argument 'offset' must have 3 dimensions"),
        ({"layers": [0, 3]}, IndexError, r"argument 'layers' must hold layer indices in \[0, 3\), got 3 at position 1"),
        ({"layers": [-1]}, IndexError, r"argument 'layers' must hold layer indices in \[0, 3\), got -1"),
        ({"layers": [0] * 257}, ValueError, r"argument 'layers' must list at most 256 layers"),
        ({"values": torch.randn(2, 3, 5, 2, 4).int()}, TypeError, r"argument 'values' must have dtype in"),
        ({"attn": torch.rand(2, 3, 2, 5).double()}, TypeError, r"argument 'attn' must have the dtype of 'values'"),
        ({"offset": torch.randn(2, 3, 6).half()}, TypeError, r"argument 'offset' must have the dtype of 'values'"),
        (
            {"values": torch.full((2, 3, 5, 2, 4), float("nan"))},
            ValueError,
            r"argument 'values' must be finite \(no NaN or Inf\), got nan at index \(0, 0, 0, 0, 0\)",
        ),
        ({"scale": torch.tensor([1.0, float("inf")])}, ValueError, r"argument 'scale' must be finite"),
    ],
)
def test_bad_input(kernel, changes, error, message) -> None:
    args = _bad(**changes)
    with pytest.raises(error, match=r"vision_kernels\.attention_decomposition: " + message):
        kernel(args["values"], args["attn"], args["folded"], args["scale"], args["offset"], args["layers"])


def test_bad_output_dtype_and_argument_types() -> None:
    inputs = make_inputs(1, 1, 2, 1, 2, 3)
    with pytest.raises(TypeError, match=r"argument 'out_dtype' must be one of \{float32, float64, float16, bfloat16\}"):
        attention_decomposition(*inputs, out_dtype=torch.int32)
    with pytest.raises(TypeError, match=r"argument 'folded' must be a torch.Tensor, numpy.ndarray or cupy.ndarray"):
        attention_decomposition(inputs[0], inputs[1], [[1.0]], inputs[3])


def test_nan_propagates_when_unchecked() -> None:
    values, attn, folded, scale, _ = make_inputs(1, 1, 3, 1, 2, 4)
    values[0, 0, 1, 0, 0] = float("nan")
    out = attention_decomposition(values, attn, folded, scale, check_finite=False)
    assert torch.isnan(out[0, 0, 0, 1]).all() and torch.isfinite(out[0, 0, 0, 0]).all()


def test_mixed_devices() -> None:
    values, attn, folded, scale, _ = make_inputs(1, 1, 3, 1, 2, 4)
    with pytest.raises(
        ValueError, match=r"arguments 'values' and 'folded' must be on the same device, got cpu and meta"
    ):
        attention_decomposition(values, attn, torch.empty(folded.shape, device="meta"), scale)


def test_native_core_checks_its_own_arguments() -> None:
    from vision_kernels import _native

    values, attn, folded, scale, _ = make_inputs(1, 2, 3, 1, 2, 4)
    ref = _native.tensor_ref
    out = torch.empty(1, 2, 1, 3, 5)
    with pytest.raises(
        ValueError, match=r"argument 'out' must have size 4 in dimension 4 \(E\), got shape \[1, 2, 1, 3, 5\]"
    ):
        _native.cpu_module().attention_decomposition_cpu(
            ref(values), ref(attn), ref(folded), ref(scale), None, [0, 1], True, True, True, ref(out)
        )
    out = torch.empty(1, 2, 1, 3, 4)
    with pytest.raises(IndexError, match=r"argument 'layers' must hold layer indices in \[0, 2\), got 5"):
        _native.cpu_module().attention_decomposition_cpu(
            ref(values), ref(attn), ref(folded), ref(scale), None, [0, 5], True, True, True, ref(out)
        )
    with pytest.raises(ValueError, match=r"argument 'out' must be contiguous"):
        wide = torch.empty(1, 2, 1, 3, 8)[..., ::2]
        _native.cpu_module().attention_decomposition_cpu(
            ref(values), ref(attn), ref(folded), ref(scale), None, [0, 1], True, True, True, ref(wide)
        )


def test_64bit_offsets_with_strided_values() -> None:
    # Tokens 2^31 + 7 elements apart: element offsets exceed int32; untouched pages stay unallocated.
    stride = 2**31 + 7
    storage = torch.empty(stride + 8)
    rows = torch.randn(2, 1, 4)  # [N, H, Dh]
    storage[:4] = rows[0, 0]
    storage[stride : stride + 4] = rows[1, 0]
    values = storage.as_strided((1, 1, 2, 1, 4), (0, 0, stride, 4, 1))
    attn = torch.tensor([[[[0.25, 0.75]]]])
    folded = torch.randn(1, 1, 4, 3)
    scale = torch.tensor([2.0])
    got = attention_decomposition(values, attn, folded, scale, check_finite=False)
    want = reference(rows[None, None], attn, folded, scale)
    torch.testing.assert_close(got, want)
