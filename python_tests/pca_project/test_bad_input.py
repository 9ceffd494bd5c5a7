"""pca_project / pca_reconstruct refuse bad input with one clear message (issue 16 items 1, 2, 4, 9), on the
CPU kernel and the emulated CUDA kernel: every tensor argument (the optional mean included) on another
device, wrong dtypes and shapes, std <= 0, NaN/Inf, empty inputs; numpy and DLPack inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vision_kernels.ops import pca_project, pca_reconstruct
from vision_kernels.testing import DLPackProducer, each_tensor_moved, emulated

PROJECT, RECONSTRUCT = torch.ops.vision_kernels.pca_project, torch.ops.vision_kernels.pca_reconstruct
P_NAME, R_NAME = r"vision_kernels\.pca_project: ", r"vision_kernels\.pca_reconstruct: "


def project_cpu(w, mean, std, basis, check_finite=True):
    return pca_project(w, mean, std, basis, check_finite=check_finite)


def project_emulated(w, mean, std, basis, check_finite=True):
    return emulated(PROJECT)(w, mean, std, basis, check_finite)


def reconstruct_cpu(coeffs, mean, std, basis, out_dtype=None, check_finite=True):
    return pca_reconstruct(coeffs, mean, std, basis, out_dtype=out_dtype, check_finite=check_finite)


def reconstruct_emulated(coeffs, mean, std, basis, out_dtype=None, check_finite=True):
    return emulated(RECONSTRUCT)(coeffs, mean, std, basis, out_dtype, check_finite)


def params(cpu, emu):
    return [pytest.param(cpu, id="cpu"), pytest.param(emu, id="cuda_emulated", marks=pytest.mark.emulation)]


PROJECTS = params(project_cpu, project_emulated)
RECONSTRUCTS = params(reconstruct_cpu, reconstruct_emulated)


def space(dims: int = 12, components: int = 3) -> dict[str, torch.Tensor]:
    basis = torch.linalg.qr(torch.randn(dims, components)).Q.contiguous()
    return {"mean": torch.randn(dims), "std": torch.rand(dims) + 0.5, "basis": basis}


def project_arguments(rows: int = 2) -> dict[str, torch.Tensor]:
    return {"w": torch.randn(rows, 12), **space()}


def reconstruct_arguments(rows: int = 2) -> dict[str, torch.Tensor]:
    return {"coeffs": torch.randn(rows, 3), **space()}


@pytest.mark.parametrize("kernel", PROJECTS)
@pytest.mark.parametrize("moved", ["w", "mean", "std", "basis"])
def test_project_refuses_any_tensor_argument_on_the_meta_device(kernel, moved: str) -> None:
    case = dict(each_tensor_moved(project_arguments()))[moved]
    with pytest.raises(ValueError, match=P_NAME + r"arguments '\w+' and '\w+' must be on the same device, got"):
        kernel(**case)


@pytest.mark.parametrize("kernel", RECONSTRUCTS)
@pytest.mark.parametrize("moved", ["coeffs", "mean", "std", "basis"])
def test_reconstruct_refuses_any_tensor_argument_on_the_meta_device(kernel, moved: str) -> None:
    case = dict(each_tensor_moved(reconstruct_arguments()))[moved]
    with pytest.raises(ValueError, match=R_NAME + r"arguments '\w+' and '\w+' must be on the same device, got"):
        kernel(**case)


def test_all_meta_gives_shapes() -> None:
    meta = {name: t.to("meta") for name, t in project_arguments().items()}
    assert pca_project(**meta).shape == (2, 3)
    meta = {name: t.to("meta") for name, t in reconstruct_arguments().items()}
    assert pca_reconstruct(**meta).shape == (2, 12)


def nan_at(t: torch.Tensor, value: float = math.nan) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[1] = value
    return t


@pytest.mark.parametrize("kernel", PROJECTS)
@pytest.mark.parametrize("rows", [2, 40], ids=["fused", "blocked"])
@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda a: {"w": nan_at(a["w"])}, ValueError, r"argument 'w' must be finite \(no NaN or Inf\), got nan"),
        (lambda a: {"mean": nan_at(a["mean"], math.inf)}, ValueError, r"argument 'mean' must be finite"),
        (lambda a: {"std": nan_at(a["std"], math.inf)}, ValueError, r"argument 'std' must be finite"),
        (lambda a: {"std": nan_at(a["std"], math.nan)}, ValueError, r"argument 'std' must be > 0 everywhere"),
        (lambda a: {"std": nan_at(a["std"], 0.0)}, ValueError, r"argument 'std' must be > 0 everywhere .*got 0.0"),
        (lambda a: {"basis": nan_at(a["basis"])}, ValueError, r"argument 'basis' must be finite"),
        (lambda a: {"w": a["w"].long()}, TypeError, r"argument 'w' must have dtype in"),
        (lambda a: {"w": a["w"].half()}, TypeError, r"argument 'w' must have the dtype of 'basis' or its"),
        (lambda a: {"std": a["std"].long()}, TypeError, r"argument 'std' must have dtype in"),
        (lambda a: {"mean": a["mean"][:5]}, ValueError, r"argument 'mean' must have size 12 in dimension 0"),
        (lambda a: {"basis": a["basis"][:5]}, ValueError, r"argument 'basis' must have size 12 in dimension 0"),
        (lambda a: {"w": a["w"][:, :0], "basis": a["basis"][:0]}, ValueError, r"argument 'basis' must have size >= 1"),
    ],
)
def test_project_bad_values(kernel, rows, change, error, message) -> None:
    arguments = project_arguments(rows)
    with pytest.raises(error, match=P_NAME + message):
        kernel(**{**arguments, **change(arguments)})


@pytest.mark.parametrize("kernel", RECONSTRUCTS)
@pytest.mark.parametrize("rows", [2, 40], ids=["fused", "blocked"])
@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda a: {"coeffs": nan_at(a["coeffs"])}, ValueError, r"argument 'coeffs' must be finite"),
        (lambda a: {"mean": nan_at(a["mean"])}, ValueError, r"argument 'mean' must be finite"),
        (lambda a: {"std": -a["std"]}, ValueError, r"argument 'std' must be > 0 everywhere"),
        (lambda a: {"basis": nan_at(a["basis"], -math.inf)}, ValueError, r"argument 'basis' must be finite"),
        (lambda a: {"coeffs": a["coeffs"][:, :2]}, ValueError, r"argument 'basis' must have size 2 in dimension 1"),
        (lambda a: {"coeffs": a["coeffs"].int()}, TypeError, r"argument 'coeffs' must have dtype in"),
        (lambda a: {"out_dtype": torch.int64}, TypeError, r"argument 'out_dtype' must be a floating dtype"),
    ],
)
def test_reconstruct_bad_values(kernel, rows, change, error, message) -> None:
    arguments = reconstruct_arguments(rows)
    with pytest.raises(error, match=R_NAME + message):
        kernel(**{**arguments, **change(arguments)})


PAIRS = [
    pytest.param(project_cpu, reconstruct_cpu, id="cpu"),
    pytest.param(project_emulated, reconstruct_emulated, id="cuda_emulated", marks=pytest.mark.emulation),
]


@pytest.mark.parametrize(("project", "reconstruct"), PAIRS)
def test_empty_batches_and_the_finite_opt_out(project, reconstruct) -> None:
    assert project(**project_arguments(0)).shape == (0, 3)
    assert reconstruct(**reconstruct_arguments(0)).shape == (0, 12)
    arguments = project_arguments()
    arguments["w"] = nan_at(arguments["w"])
    assert bool(project(**arguments, check_finite=False)[0].isnan().all())


def test_non_arrays_are_type_errors() -> None:
    arguments = project_arguments()
    with pytest.raises(TypeError, match=P_NAME + r"argument 'std' must be a torch.Tensor, numpy.ndarray or cupy"):
        pca_project(arguments["w"], None, 1.0, arguments["basis"])
    with pytest.raises(TypeError, match=R_NAME + r"argument 'mean' must be a torch.Tensor, numpy.ndarray or cupy"):
        pca_reconstruct(torch.randn(3), [0.0] * 12, arguments["std"], arguments["basis"])


def test_numpy_and_dlpack_inputs() -> None:
    arguments = {name: t.double().numpy() for name, t in project_arguments().items()}
    coefficients = pca_project(**arguments)
    assert isinstance(coefficients, np.ndarray) and coefficients.shape == (2, 3)
    foreign = pca_project(**{name: DLPackProducer(a) for name, a in arguments.items()})
    assert isinstance(foreign, torch.Tensor)
    np.testing.assert_allclose(foreign.numpy(), coefficients)
    weights = pca_reconstruct(DLPackProducer(coefficients), None, arguments["std"], arguments["basis"])
    assert isinstance(weights, torch.Tensor) and weights.shape == (2, 12)
