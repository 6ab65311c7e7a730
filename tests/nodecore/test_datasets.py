"""nodecore.datasets against torchdyn's ToyDataset: signature, sample counts, shapes, values, randomness, errors.

Reference numbers marked "torchdyn 1.0.6" were produced by running torchdyn 1.0.6 (the PyPI wheel, unpacked
beside this checkout; numpy 2.4.6, torch 2.13.0 CPU) on the call quoted next to them.
"""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import make_circles, make_moons

from nodecore.datasets import (
    DATASET_TYPES,
    UNLABELLED_TYPES,
    ToyDataset,
    generate_concentric_spheres,
    generate_gaussians,
    generate_moons,
    generate_points,
    randnsphere,
    resolve_params,
)

generate = ToyDataset().generate

# torchdyn 1.0.6: np.random.seed(0); X, y = ToyDataset().generate(6, 'moons', noise=.4); np.random.random_sample()
TORCHDYN_MOONS_6 = [[1.2195254564285278, 0.21952539682388306], [0.28607574105262756, 1.2860757112503052],
                    [-0.7588946223258972, 0.2411053478717804], [0.21795327961444855, 0.7179532647132874],
                    [1.169461965560913, -0.3305380940437317], [2.2583577632904053, 0.7583576440811157]]
TORCHDYN_NEXT_DRAW_AFTER_MOONS_6 = 0.4375872112626925
# torchdyn 1.0.6: np.random.seed(0); ToyDataset().generate(3, 'spirals', noise=.4)
TORCHDYN_SPIRALS_3 = [[8.182591438293457, -6.011703014373779], [-5.523706912994385, -9.649954795837402],
                      [4.628751754760742, -9.237909317016602], [-8.182591438293457, 6.011703014373779],
                      [5.523706912994385, 9.649954795837402], [-4.628751754760742, 9.237909317016602]]
# torchdyn 1.0.6: np.random.seed(0); ToyDataset().generate(4, 'diffeqml', noise=.05) -> (X, None). torchdyn
# integrates the logo's ODE with LSODA (rtol 1e-3), nodecore in closed form: equal to within ~4e-3.
TORCHDYN_DIFFEQML_4 = [[-0.11077195405960083, 0.9856017827987671], [-0.43259724974632263, 1.9605321884155273],
                       [2.0722477436065674, 0.06930386275053024], [-0.08670639991760254, 0.9702844619750977]]
# torchdyn 1.0.6: np.random.seed(0); X, _ = ToyDataset().generate(100000, 'spirals'); X.norm(dim=1).max(), .mean()
TORCHDYN_SPIRALS_RADIUS_MAX, TORCHDYN_SPIRALS_RADIUS_MEAN = 13.613396644592285, 9.068998336791992
# torchdyn 1.0.6 draws these from torch's generator, seeded once (torch.manual_seed(0)) at the start of one
# session that made the calls below (among others). ToyDataset().generate(4096, 'spheres'): per class,
# |x| min / max 0.4997 / 0.5003 (class 1), 0.9997 / 1.0003 (class 0); mean per-coordinate std 0.2887 / 0.5772.
TORCHDYN_SPHERES_STD = {1: 0.2887, 0: 0.5772}
# ToyDataset().generate(4096, 'gaussians'): class means
TORCHDYN_GAUSSIANS_MEANS = [(0.3136, 0.3912), (-0.1120, 0.4889), (-0.4507, 0.2165), (-0.4516, -0.2145),
                            (-0.1104, -0.4867), (0.3142, -0.3914), (0.4972, -0.0017)]  # per-class std ~0.100
# ToyDataset().generate(4096, 'gaussians_spiral'): class means and mean per-coordinate std
TORCHDYN_GAUSSIANS_SPIRAL_MEANS = [(0.0004, 0.9970), (-0.8601, 0.0010), (0.0012, -0.7368), (0.6026, -0.0031),
                                   (-0.0037, 0.4675), (-0.3336, 0.0052), (0.0032, -0.1985)]
TORCHDYN_GAUSSIANS_SPIRAL_STDS = [0.3019, 0.2683, 0.2324, 0.1993, 0.1679, 0.1326, 0.0999]


def test_the_types_are_torchdyns_plus_circles() -> None:
    assert DATASET_TYPES == ("moons", "circles", "spirals", "gaussians", "gaussians_spiral", "spheres")
    assert UNLABELLED_TYPES == ("diffeqml",)


# --------------------------------------------------------------------------------------------------
# Sample counts, shapes, dtypes, class order (torchdyn's)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dataset_type", "n_samples", "options", "dim", "class_sizes"), [
    ("moons", 7, {}, 2, [3, 4]),  # n_samples in all: n // 2 in class 0
    ("circles", 7, {}, 2, [3, 4]),
    ("spirals", 7, {}, 2, [7, 7]),  # n_samples per arm
    ("spheres", 8, {}, 3, [4, 4]),  # 3-D by default
    ("spheres", 7, {"dim": 5}, 5, [4, 3]),  # odd n works (torchdyn fails); n // 2 on the inner sphere
    ("gaussians", 5, {}, 2, [5] * 7),  # n_samples per Gaussian, 7 Gaussians
    ("gaussians", 5, {"n_gaussians": 3, "dim": 4}, 4, [5] * 3),
    ("gaussians_spiral", 5, {}, 2, [5] * 7),
    ("gaussians_spiral", 2, {"n_gaussians": 9, "dim": 3}, 3, [2] * 9),
])
def test_sample_counts_shapes_and_dtypes(dataset_type: str, n_samples: int, options: dict[str, Any], dim: int,
                                         class_sizes: list[int]) -> None:
    X, y = generate(n_samples, dataset_type, seed=0, **options)
    assert X.shape == (sum(class_sizes), dim) and X.dtype == torch.float32 and torch.isfinite(X).all()
    assert y.shape == (sum(class_sizes),) and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == class_sizes


def test_diffeqml_has_no_labels() -> None:
    X, y = generate(7, "diffeqml", seed=0)
    assert X.shape == (7, 2) and X.dtype == torch.float32 and y is None


@pytest.mark.parametrize(("dataset_type", "n_samples", "labels"), [
    ("moons", 5, [0, 0, 1, 1, 1]),
    ("spirals", 2, [0, 0, 1, 1]),
    ("spheres", 4, [1, 1, 0, 0]),  # torchdyn: the inner sphere first, as class 1
    ("gaussians", 1, list(range(7))),
])
def test_points_come_class_by_class_as_in_torchdyn(dataset_type: str, n_samples: int, labels: list[int]) -> None:
    assert generate(n_samples, dataset_type, seed=0)[1].tolist() == labels


def test_one_sample_works_for_every_type() -> None:
    for dataset_type in DATASET_TYPES + UNLABELLED_TYPES:
        X, _ = generate(1, dataset_type, seed=0)
        assert X.shape[0] >= 1


# --------------------------------------------------------------------------------------------------
# Values against torchdyn
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dataset_type", "n_samples", "reference", "atol"), [
    ("moons", 6, TORCHDYN_MOONS_6, 1e-6),
    ("spirals", 3, TORCHDYN_SPIRALS_3, 1e-5),
    ("diffeqml", 4, TORCHDYN_DIFFEQML_4, 5e-3),  # torchdyn's ODE-solver error
])
def test_values_are_torchdyns_after_the_same_numpy_seed(dataset_type: str, n_samples: int, reference: list,
                                                        atol: float) -> None:
    np.random.seed(0)
    X, y = generate(n_samples, dataset_type, noise=0.05 if dataset_type == "diffeqml" else 0.4)
    assert torch.allclose(X, torch.tensor(reference), atol=atol, rtol=0)
    if y is not None:
        assert y.tolist() == [0] * (len(reference) // 2) + [1] * (len(reference) // 2)


def test_moons_move_the_global_generator_as_torchdyns_do() -> None:
    np.random.seed(0)
    generate(6, "moons", noise=0.4)
    assert np.random.random_sample() == TORCHDYN_NEXT_DRAW_AFTER_MOONS_6


def test_spirals_radius_and_mirrored_arms() -> None:
    X, y = generate(100_000, "spirals", seed=0)
    radius = X.norm(dim=1)
    assert abs(radius.max().item() - TORCHDYN_SPIRALS_RADIUS_MAX) < 0.01
    assert abs(radius.mean().item() - TORCHDYN_SPIRALS_RADIUS_MEAN) < 0.05
    assert torch.equal(X[y == 1], -X[y == 0])
    X2, _ = generate(1000, "spirals", noise=0.0, n_turns=1.0, seed=0)
    assert X2.norm(dim=1).max() <= 2 * math.pi + 1e-5


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_spheres_lie_on_torchdyns_radii(dim: int) -> None:
    X, y = generate(400, "spheres", noise=0.0, dim=dim, seed=2)
    radius = X.norm(dim=1)
    assert torch.allclose(radius[y == 1], torch.tensor(0.5), atol=1e-6)
    assert torch.allclose(radius[y == 0], torch.tensor(1.0), atol=1e-6)


def test_spheres_spread_as_torchdyns() -> None:
    X, y = generate(4096, "spheres", seed=0)
    for label, std in TORCHDYN_SPHERES_STD.items():
        points = X[y == label]
        assert abs(points.std(dim=0).mean().item() - std) < 0.01
        assert points.mean(dim=0).abs().max() < 0.05  # uniform on the sphere


def test_spheres_widths_make_a_ball_inside_a_shell() -> None:
    X, y = generate(2000, "spheres", noise=0.0, dim=2, inner_width=0.5, outer_width=0.5, seed=3)
    inner, outer = X[y == 1].norm(dim=1), X[y == 0].norm(dim=1)
    assert inner.max() <= 0.5 + 1e-6 and inner.min() < 0.05
    assert outer.min() >= 1.0 - 1e-6 and outer.max() <= 1.5 + 1e-6
    assert abs((outer < 1.25).float().mean().item() - (1.25**2 - 1) / (1.5**2 - 1)) < 0.05  # uniform in area


@pytest.mark.parametrize(("dataset_type", "means", "stds"), [
    ("gaussians", TORCHDYN_GAUSSIANS_MEANS, [0.1] * 7),
    ("gaussians_spiral", TORCHDYN_GAUSSIANS_SPIRAL_MEANS, TORCHDYN_GAUSSIANS_SPIRAL_STDS),
])
def test_gaussians_sit_where_torchdyns_do(dataset_type: str, means: list, stds: list[float]) -> None:
    X, y = generate(4096, dataset_type, seed=0)
    for label, (mean, std) in enumerate(zip(means, stds)):
        points = X[y == label]
        assert torch.allclose(points.mean(dim=0), torch.tensor(mean), atol=0.02)
        assert abs(points.std(dim=0).mean().item() - std) < 0.01


def test_gaussians_in_more_dimensions_keep_the_circle_in_the_first_two() -> None:
    X, y = generate(500, "gaussians", n_gaussians=4, dim=5, radius=2.0, std_gaussians=0.0, noise=0.0, seed=0)
    for label in range(4):
        angle = 2 * math.pi * (label + 1) / 4
        centre = torch.tensor([2 * math.cos(angle), 2 * math.sin(angle), 0.0, 0.0, 0.0])
        assert torch.allclose(X[y == label], centre.expand(500, 5), atol=1e-6)


def test_gaussians_noise_shifts_each_gaussian_as_a_whole() -> None:
    X, y = generate(50, "gaussians", std_gaussians=0.0, noise=0.3, seed=0)
    for label in range(7):
        points = X[y == label]
        assert torch.allclose(points, points[:1].expand_as(points))  # one shift per Gaussian, as torchdyn's


@pytest.mark.parametrize("n", [1, 2, 7, 201, 4096])
def test_circles_equal_sklearn_unshuffled(n: int) -> None:
    X, y = generate(n, "circles", noise=0.05, factor=0.3, seed=3)
    X_ref, y_ref = make_circles(n_samples=n, noise=0.05, factor=0.3, shuffle=False, random_state=3)
    assert torch.equal(X, torch.from_numpy(X_ref.astype(np.float32))) and y.tolist() == y_ref.tolist()


@pytest.mark.parametrize("n", [1, 2, 7, 201, 4096])
def test_moons_without_noise_equal_sklearn_unshuffled_bit_for_bit(n: int) -> None:
    from nodecore.datasets.static_datasets import _draw_moons

    sizes = [n - n // 2, n // 2]  # the classes' sizes generate() uses
    X, y = _draw_moons(sizes, np.random.RandomState(0), noise=0.0)
    X_ref, y_ref = make_moons(n_samples=tuple(sizes), shuffle=False, noise=None)
    assert X.dtype == X_ref.dtype and np.array_equal(X, X_ref) and y.tolist() == y_ref.tolist()


def test_drawing_moons_and_circles_does_not_import_scikit_learn() -> None:
    code = ("import sys; from nodecore.datasets import generate_points as g; g(64, 'moons', noise=.1, seed=0); "
            "g(64, 'circles', seed=0); g(8, 'moons'); assert 'sklearn' not in sys.modules, 'sklearn imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------------------------------
# Randomness: NumPy's global generator unless seed= is given
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset_type", DATASET_TYPES + UNLABELLED_TYPES)
def test_numpy_seed_makes_a_run_repeatable(dataset_type: str) -> None:
    np.random.seed(5)
    X1, _ = generate(16, dataset_type, noise=0.1)
    X2, _ = generate(16, dataset_type, noise=0.1)  # the global generator moved on
    np.random.seed(5)
    X3, _ = generate(16, dataset_type, noise=0.1)
    assert torch.equal(X1, X3) and not torch.equal(X1, X2)


@pytest.mark.parametrize("dataset_type", DATASET_TYPES + UNLABELLED_TYPES)
def test_an_explicit_seed_ignores_and_keeps_the_global_generator(dataset_type: str) -> None:
    np.random.seed(5)
    expected_next = np.random.random_sample()
    X_global, _ = generate(16, dataset_type, noise=0.1)  # after np.random.seed(5) and one draw...
    np.random.seed(123)
    X1, _ = generate(16, dataset_type, noise=0.1, seed=5)
    np.random.seed(5)
    X2, _ = generate(16, dataset_type, noise=0.1, seed=5)
    assert np.random.random_sample() == expected_next  # untouched by seed=
    assert torch.equal(X1, X2) and not torch.equal(X1, X_global)
    np.random.seed(5)
    assert torch.equal(generate(16, dataset_type, noise=0.1)[0], X1)  # seed=s is np.random.seed(s), privately
    assert not torch.equal(X1, generate(16, dataset_type, noise=0.1, seed=6)[0])


# --------------------------------------------------------------------------------------------------
# generate_points: the pipeline's exact, balanced, shuffled draws
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset_type", DATASET_TYPES)
def test_generate_points_draws_exactly_n_balanced_and_shuffled(dataset_type: str) -> None:
    X, y = generate_points(301, dataset_type, seed=0)
    counts = torch.bincount(y)
    assert X.shape[0] == 301 == len(y) and counts.max() - counts.min() <= 1
    assert len(counts) == (7 if dataset_type.startswith("gaussians") else 2)
    assert len(torch.unique(y[:20])) > 1  # not class by class
    X2, y2 = generate_points(301, dataset_type, seed=0)
    assert torch.equal(X, X2) and torch.equal(y, y2)


def test_generate_points_spreads_few_points_over_the_first_classes() -> None:
    assert sorted(generate_points(2, "gaussians", seed=0)[1].tolist()) == [0, 1]
    X, y = generate_points(9, "diffeqml", seed=0)
    assert X.shape == (9, 2) and y is None


# --------------------------------------------------------------------------------------------------
# torchdyn's calls and module functions
# --------------------------------------------------------------------------------------------------


def test_torchdyn_tutorial_calls_run_unchanged() -> None:
    X, yn = ToyDataset().generate(n_samples=512, noise=1e-1, dataset_type="moons")  # quickstart
    assert X.shape == (512, 2) and yn.long().dtype == torch.int64
    X, yn = ToyDataset().generate(2048 // 6, "gaussians", n_gaussians=6, std_gaussians=0.5, radius=4, dim=2)  # CNF
    assert X.shape == (341 * 6, 2)
    X, yn = ToyDataset().generate(2 << 12, dataset_type="spheres")  # augmentation tutorial: 3-D
    assert X.shape == (2 << 12, 3) and X[yn == 1].shape == (1 << 12, 3)
    X, _ = ToyDataset().generate(512, "diffeqml", noise=5e-2)
    assert X.shape == (512, 2)


def test_module_functions_take_torchdyns_positional_order() -> None:
    X, y = generate_concentric_spheres(10, 0.0, 2, 0.25, 2.0, seed=0)  # n_samples, noise, dim, radii
    assert X.shape == (10, 2) and torch.allclose(X[y == 0].norm(dim=1), torch.tensor(2.0))
    X, y = generate_gaussians(3, 4, 2, 1.0, 0.0, 0.0, seed=0)  # n_samples, n_gaussians, dim, radius, std, noise
    assert X.shape == (12, 2) and torch.allclose(X.norm(dim=1), torch.tensor(1.0))
    np.random.seed(0)
    assert torch.allclose(generate_moons(6, 0.4)[0], torch.tensor(TORCHDYN_MOONS_6), atol=1e-6)  # torchdyn's
    assert randnsphere(4, 2.0, seed=0).shape == (4,) and abs(randnsphere(4, 2.0).norm().item() - 2.0) < 1e-5


def test_generate_moons_function_matches_the_method() -> None:
    X1, y1 = generate_moons(6, 0.4, seed=0)
    X2, y2 = generate(6, "moons", noise=0.4, seed=0)
    assert torch.equal(X1, X2) and torch.equal(y1, y2)


# --------------------------------------------------------------------------------------------------
# resolve_params and errors
# --------------------------------------------------------------------------------------------------


def test_resolve_params_fills_torchdyns_defaults_and_coerces() -> None:
    assert resolve_params("moons") == {"noise": 1e-4}
    assert resolve_params("circles") == {"noise": 1e-4, "factor": 0.5}
    assert resolve_params("gaussians", radius=2) == {
        "n_gaussians": 7, "dim": 2, "radius": 2.0, "std_gaussians": 0.1, "noise": 1e-3}
    assert resolve_params("gaussians_spiral") == {
        "n_gaussians": 7, "n_gaussians_per_loop": 4, "dim": 2, "radius_start": 1.0, "radius_end": 0.2,
        "std_gaussians_start": 0.3, "std_gaussians_end": 0.1, "noise": 1e-3}
    params = resolve_params("spheres", dim=np.int64(2))
    assert params == {"noise": 1e-4, "dim": 2, "inner_radius": 0.5, "outer_radius": 1.0, "inner_width": 0.0,
                      "outer_width": 0.0}
    assert type(params["dim"]) is int and type(params["outer_radius"]) is float
    assert resolve_params("diffeqml") == {"noise": 1e-3}


def test_resolved_params_reproduce_the_data() -> None:
    params = resolve_params("spirals", n_turns=3)
    assert torch.equal(generate(50, "spirals", seed=9, n_turns=3)[0], generate(50, "spirals", seed=9, **params)[0])


def test_unknown_type_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown dataset_type 'blobs'; valid dataset types: ") as info:
        generate(10, "blobs")
    for name in DATASET_TYPES + UNLABELLED_TYPES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="unknown dataset_type 0.1"):
        generate(512, 0.1)  # the old (n_samples, noise, dataset_type) order


def test_the_old_positional_noise_is_refused() -> None:
    with pytest.raises(TypeError):
        generate(512, 0.1, "moons")  # type: ignore[misc]


@pytest.mark.parametrize(("call", "match"), [
    ({"n_samples": 0}, "n_samples must be an integer >= 1, got 0"),
    ({"n_samples": 2.5}, "n_samples"),
    ({"n_samples": True}, "n_samples"),
    ({"noise": -0.1}, "moons: noise must be a finite number >= 0"),
    ({"noise": float("inf")}, "noise"),
    ({"noise": float("nan")}, "noise"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**32}, "seed"),
    ({"seed": True}, "seed"),
    ({"factor": 0.5}, r"unknown parameter\(s\) \['factor'\] for dataset_type 'moons'; valid parameters: \['noise'\]"),
    ({"dataset_type": "circles", "n_turns": 2}, r"n_turns.*valid parameters: \['noise', 'factor'\]"),
    ({"dataset_type": "circles", "factor": 1.0}, "factor"),
    ({"dataset_type": "circles", "factor": "big"}, "factor"),
    ({"dataset_type": "spirals", "n_turns": 0}, "n_turns"),
    ({"dataset_type": "gaussians", "n_gaussians": 0}, "n_gaussians"),
    ({"dataset_type": "gaussians", "n_gaussians": 2.0}, "n_gaussians must be an integer"),
    ({"dataset_type": "gaussians", "std_gaussians": -1.0}, "std_gaussians"),
    ({"dataset_type": "gaussians", "dim": 1}, "gaussians: dim must be an integer >= 2"),
    ({"dataset_type": "gaussians_spiral", "radius_end": -0.1}, "radius_end"),
    ({"dataset_type": "spheres", "dim": 0}, "dim"),
    ({"dataset_type": "spheres", "inner_radius": 1.2}, "inner_radius < outer_radius"),
    ({"dataset_type": "spheres", "inner_width": 0.6}, "inner_width <= inner_radius"),
    ({"dataset_type": "spheres", "outer_width": -1.0}, "outer_width"),
])
def test_bad_arguments_raise_value_error(call: dict[str, Any], match: str) -> None:
    arguments = {"n_samples": 10, "dataset_type": "moons", **call}
    with pytest.raises(ValueError, match=match):
        generate(**arguments)


def test_generate_points_checks_its_count() -> None:
    with pytest.raises(ValueError, match="n_points must be an integer >= 1"):
        generate_points(0, "moons")


def test_import_does_not_pull_in_prefect() -> None:
    code = "import sys, nodecore.datasets; assert 'prefect' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
