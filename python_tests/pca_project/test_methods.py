"""Sampling new models and edit directions (planted data with labels tied to known directions)."""

from __future__ import annotations

import pytest
import torch

from vision_kernels.weightspace import (
    apply_edit,
    edit_direction,
    edit_directions,
    edit_weights,
    fit_exact,
    read_adapter,
    sample_coefficients,
)


@pytest.fixture(scope="module")
def space(planted):
    return fit_exact(planted.weights, 8, names=None)


def planted_direction_in_space(space, planted, direction: torch.Tensor) -> torch.Tensor:
    """A planted direction (coefficients of the planted basis) expressed in the fitted coordinates."""
    weight_step = planted.sigma * (planted.directions @ direction.double())  # [D] in weight units
    return (weight_step / space.std.double()) @ space.basis.double()  # fitted coordinates


def test_samples_follow_the_per_component_gaussians(space) -> None:
    generator = torch.Generator().manual_seed(0)
    samples = sample_coefficients(space, 4000, generator=generator)
    assert samples.shape == (4000, 8) and samples.dtype == torch.float32
    torch.testing.assert_close(samples.double().std(0), space.coefficient_std, rtol=0.05, atol=0)
    assert float((samples.double().mean(0) - space.coefficient_mean).abs().max()) < 0.1 * float(
        space.coefficient_std.max()
    )
    narrow = sample_coefficients(space, 4000, scale=0.5, n_components=3, generator=generator)
    assert narrow.shape == (4000, 3)
    torch.testing.assert_close(narrow.double().std(0), 0.5 * space.coefficient_std[:3], rtol=0.05, atol=0)
    again = sample_coefficients(space, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, sample_coefficients(space, 5, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match=r"argument 'scale' must be > 0"):
        sample_coefficients(space, 1, scale=0)
    with pytest.raises(IndexError, match=r"argument 'n_components' must be in \[1, 9\)"):
        sample_coefficients(space, 1, n_components=9)


def test_sampled_models_become_adapters(tmp_path, planted) -> None:
    space = fit_exact(planted.weights, 5)
    from dataclasses import replace

    space = replace(space, layout=planted.layout)
    coefficients = sample_coefficients(space, 2, generator=torch.Generator().manual_seed(2))
    folder = space.export_adapter(tmp_path / "sample", coefficients[0], format="diffusers")
    vector = read_adapter(folder).vector()
    torch.testing.assert_close(vector, space.reconstruct(coefficients[0]), rtol=0, atol=0)
    torch.testing.assert_close(space.project(vector), coefficients[0], rtol=1e-4, atol=1e-4)


def test_edit_direction_recovers_a_planted_direction(space, planted) -> None:
    # A continuous attribute tied to the first planted direction (plus label noise).
    generator = torch.Generator().manual_seed(5)
    labels = planted.coefficients[:, 0] + 0.5 * torch.randn(80, generator=generator, dtype=torch.float64)
    direction = edit_direction(space.coefficients, labels)
    assert direction.shape == (8,) and float(direction.norm()) == pytest.approx(1.0)
    truth = planted_direction_in_space(space, planted, torch.tensor([1.0, 0, 0, 0, 0]))
    cosine = torch.nn.functional.cosine_similarity(direction.double(), truth, dim=0)
    assert float(cosine) > 0.98, cosine


def test_correlated_attributes_are_projected_out(space, planted) -> None:
    # "beard" follows planted direction 0 but correlates with "male" (planted direction 1): its raw
    # direction leaks into male's; projecting male out leaves a direction orthogonal to male's and
    # closer to the planted beard direction.
    c = planted.coefficients
    generator = torch.Generator().manual_seed(6)
    beard = (c[:, 0] + 0.8 * c[:, 1] + torch.randn(80, generator=generator, dtype=torch.float64) > 0).double()
    male = (c[:, 1] + torch.randn(80, generator=generator, dtype=torch.float64) > 0).double()
    coordinates = space.coefficients[:, :5]
    raw = edit_direction(coordinates, beard)
    clean = edit_direction(coordinates, beard, project_out={"male": male})
    male_direction = edit_direction(coordinates, male)
    assert abs(float(raw @ male_direction)) > 0.3
    assert abs(float(clean @ male_direction)) < 1e-5
    truth = planted_direction_in_space(space, planted, torch.tensor([1.0, 0, 0, 0, 0]))[:5]
    assert float(clean.double() @ truth) / float(truth.norm()) > float(raw.double() @ truth) / float(truth.norm())
    both = edit_directions(coordinates, {"beard": beard, "male": male})
    torch.testing.assert_close(both["beard"], clean)
    assert abs(float(both["male"] @ raw)) < abs(float(male_direction @ raw))
    as_vectors = edit_direction(coordinates, beard, project_out=[male_direction])
    torch.testing.assert_close(as_vectors, clean, rtol=1e-5, atol=1e-6)


def test_edits_move_models_along_the_direction(space, planted) -> None:
    direction = edit_direction(space.coefficients, planted.coefficients[:, 2])
    c = space.coefficients[:3]
    edited = apply_edit(c, direction, 2.5)
    torch.testing.assert_close(edited - c, 2.5 * direction.expand(3, 8))
    assert apply_edit(c[:, :5], direction, 1.0).shape == (3, 5)
    # Editing full weights keeps what lies outside the space, and moves the in-space part by the edit.
    w = planted.weights[0]
    moved = edit_weights(space, w, direction, 2.5)
    torch.testing.assert_close(space.project(moved) - space.project(w), 2.5 * direction, rtol=1e-3, atol=1e-3)


def test_bad_labels() -> None:
    c = torch.randn(10, 3)
    with pytest.raises(ValueError, match=r"argument 'labels' must have one label per model \(10\), got 9"):
        edit_direction(c, torch.zeros(9))
    with pytest.raises(ValueError, match=r"argument 'labels' must vary across models"):
        edit_direction(c, torch.ones(10))
    with pytest.raises(ValueError, match=r"argument 'labels' must be finite"):
        edit_direction(c, torch.tensor([float("nan")] + [0.0] * 9))
    labels = torch.arange(10.0)
    with pytest.raises(ValueError, match=r"give no direction left after projecting out"):
        edit_direction(c, labels, project_out={"same": labels})
