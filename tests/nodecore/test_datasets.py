"""Tests for nodecore.datasets: values, determinism, shapes and errors."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import make_circles, make_moons

from nodecore.datasets import DATASET_TYPES, ToyDataset, resolve_params

EXPECTED_DIM = {"moons": 2, "circles": 2, "spirals": 2, "gaussians": 2, "spheres": 2}


def generate(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    return ToyDataset().generate(*args, **kwargs)


def test_dataset_types_is_the_registry() -> None:
    assert DATASET_TYPES == ("moons", "circles", "spirals", "gaussians", "spheres")
    assert set(EXPECTED_DIM) == set(DATASET_TYPES)


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_moons_equals_sklearn(noise: float) -> None:
    X, y = generate(300, noise, "moons", seed=7)
    X_ref, y_ref = make_moons(n_samples=300, noise=noise, shuffle=True, random_state=7)
    assert torch.equal(X, torch.from_numpy(X_ref.astype(np.float32)))
    assert torch.equal(y, torch.from_numpy(y_ref.astype(np.int64)))


def test_circles_equals_sklearn_with_factor() -> None:
    X, y = generate(200, 0.05, "circles", seed=3, factor=0.3)
    X_ref, y_ref = make_circles(n_samples=200, noise=0.05, factor=0.3, random_state=3)
    assert torch.equal(X, torch.from_numpy(X_ref.astype(np.float32)))
    assert torch.equal(y, torch.from_numpy(y_ref))


def test_torchdyn_tutorial_usage() -> None:
    X, yn = ToyDataset().generate(n_samples=512, noise=1e-1, dataset_type="moons")
    assert yn[0].int().dtype == torch.int32
    assert yn.long().dtype == torch.int64
    assert torch.Tensor(X).shape == (512, 2)


@pytest.mark.parametrize("dataset_type", DATASET_TYPES)
def test_shapes_dtypes_and_balance(dataset_type: str) -> None:
    X, y = generate(301, 0.1, dataset_type, seed=0)
    assert X.shape == (301, EXPECTED_DIM[dataset_type]) and X.dtype == torch.float32
    assert y.shape == (301,) and y.dtype == torch.int64
    assert torch.isfinite(X).all()
    counts = torch.bincount(y)
    assert counts.sum() == 301 and counts.max() - counts.min() <= 1
    assert len(counts) == (6 if dataset_type == "gaussians" else 2)


@pytest.mark.parametrize("dataset_type", DATASET_TYPES)
def test_deterministic_for_seed_and_varies_across_seeds(dataset_type: str) -> None:
    X1, y1 = generate(64, 0.1, dataset_type, seed=11)
    X2, y2 = generate(64, 0.1, dataset_type, seed=11)
    X3, _ = generate(64, 0.1, dataset_type, seed=12)
    assert torch.equal(X1, X2) and torch.equal(y1, y2)
    assert not torch.equal(X1, X3)


def test_does_not_touch_global_rng() -> None:
    np.random.seed(0)
    expected = np.random.random_sample()
    np.random.seed(0)
    for dataset_type in DATASET_TYPES:
        generate(16, 0.1, dataset_type, seed=1)
        generate(16, 0.1, dataset_type)
    assert np.random.random_sample() == expected


def test_single_sample_works() -> None:
    for dataset_type in DATASET_TYPES:
        X, y = generate(1, 0.0, dataset_type, seed=0)
        assert X.shape[0] == 1 and y.shape == (1,)


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_spheres_are_nested(dim: int) -> None:
    X, y = generate(400, 0.0, "spheres", seed=2, dim=dim)
    radii = X.norm(dim=1)
    assert X.shape == (400, dim)
    assert radii[y == 0].max() <= 0.5 + 1e-6
    assert radii[y == 1].min() >= 1.0 - 1e-6 and radii[y == 1].max() <= 1.5 + 1e-6
    assert radii[y == 0].max() < radii[y == 1].min()


def test_spheres_custom_radii() -> None:
    X, y = generate(200, 0.0, "spheres", seed=2, dim=3, inner_radius=1.0,
                    outer_radius_low=2.0, outer_radius_high=2.0)
    radii = X.norm(dim=1)
    assert radii[y == 0].max() <= 1.0 + 1e-6
    assert torch.allclose(radii[y == 1], torch.full_like(radii[y == 1], 2.0))


def test_gaussians_cluster_around_centres_on_circle() -> None:
    X, y = generate(600, 0.0, "gaussians", seed=4, n_gaussians=4, radius=2.0,
                    std_gaussians=0.01)
    for k in range(4):
        angle = 2 * math.pi * k / 4
        centre = torch.tensor([2.0 * math.cos(angle), 2.0 * math.sin(angle)])
        assert (X[y == k] - centre).norm(dim=1).max() < 0.1


def test_gaussians_noise_adds_spread() -> None:
    X0, _ = generate(2000, 0.0, "gaussians", seed=4, std_gaussians=0.0, n_gaussians=1)
    X1, _ = generate(2000, 0.2, "gaussians", seed=4, std_gaussians=0.0, n_gaussians=1)
    assert torch.equal(X0, torch.tensor([[1.0, 0.0]]).expand(2000, 2))
    assert abs(X1.std(dim=0).mean().item() - 0.2) < 0.02


def test_spirals_interleave_with_opposite_arms() -> None:
    X, y = generate(500, 0.0, "spirals", seed=5, n_turns=2.0)
    radii = X.norm(dim=1)
    assert radii.max() <= 1.0 + 1e-6
    # with noise 0, rotating class 0 by pi maps it onto the class-1 arm: same radius law
    angle0 = torch.atan2(X[y == 0, 1], X[y == 0, 0])
    expected = torch.remainder(radii[y == 0] * 2.0 * 2 * math.pi + math.pi, 2 * math.pi) - math.pi
    diff = torch.remainder(angle0 - expected + math.pi, 2 * math.pi) - math.pi
    assert diff.abs().max() < 1e-4


def test_unknown_type_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="'blobs'") as info:
        generate(10, 0.0, "blobs")
    for name in DATASET_TYPES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_samples": 0}, "n_samples"),
        ({"n_samples": 2.5}, "n_samples"),
        ({"n_samples": True}, "n_samples"),
        ({"noise": -0.1}, "noise"),
        ({"noise": float("inf")}, "noise"),
        ({"noise": float("nan")}, "noise"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"factor": 0.5}, r"unknown parameter.*factor.*valid parameters: none"),
        ({"dataset_type": "circles", "n_turns": 2}, r"n_turns.*valid parameters: \['factor'\]"),
        ({"dataset_type": "circles", "factor": 1.0}, "factor"),
        ({"dataset_type": "circles", "factor": "big"}, "factor"),
        ({"dataset_type": "spirals", "n_turns": 0}, "n_turns"),
        ({"dataset_type": "gaussians", "n_gaussians": 0}, "n_gaussians"),
        ({"dataset_type": "gaussians", "n_gaussians": 2.0}, "n_gaussians.*integer"),
        ({"dataset_type": "gaussians", "std_gaussians": -1.0}, "std_gaussians"),
        ({"dataset_type": "spheres", "dim": 0}, "dim"),
        ({"dataset_type": "spheres", "inner_radius": 1.2}, "inner_radius"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, match: str) -> None:
    call = {"n_samples": 10, "noise": 0.0, "dataset_type": "moons", **kwargs}
    with pytest.raises(ValueError, match=match):
        generate(**call)


def test_resolve_params_fills_defaults_and_coerces() -> None:
    assert resolve_params("moons") == {}
    assert resolve_params("circles") == {"factor": 0.5}
    assert resolve_params("gaussians", radius=2) == {
        "n_gaussians": 6, "radius": 2.0, "std_gaussians": 0.1,
    }
    params = resolve_params("spheres", dim=np.int64(3))
    assert params == {"dim": 3, "inner_radius": 0.5, "outer_radius_low": 1.0,
                      "outer_radius_high": 1.5}
    assert type(params["dim"]) is int and type(params["inner_radius"]) is float
    with pytest.raises(ValueError, match="valid types"):
        resolve_params("nope")


def test_resolved_params_reproduce_the_data() -> None:
    params = resolve_params("spirals", n_turns=3)
    X1, _ = generate(50, 0.1, "spirals", seed=9, n_turns=3)
    X2, _ = generate(50, 0.1, "spirals", seed=9, **params)
    assert torch.equal(X1, X2)


def test_import_does_not_pull_in_prefect() -> None:
    code = "import sys, nodecore.datasets; assert 'prefect' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
