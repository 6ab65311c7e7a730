"""Toy datasets for Neural ODE experiments, with torchdyn's ``ToyDataset().generate`` interface.

``ToyDataset().generate(n_samples, dataset_type, **options)`` takes torchdyn's arguments, defaults and sample
counts: ``n_samples`` counts points for ``moons``, ``circles``, ``spheres`` and ``diffeqml``, points *per arm*
for ``spirals`` (``2 * n_samples`` in all) and points *per Gaussian* for ``gaussians`` and ``gaussians_spiral``
(``n_gaussians * n_samples``). Each type is also a function of its own with torchdyn's name and positional
order (:func:`generate_moons`, :func:`generate_concentric_spheres`, ...). Points come class by class, as in
torchdyn; :func:`generate_points` instead draws exactly ``n_points`` in all, classes balanced, shuffled (the
pipeline's datasets).

Randomness: without ``seed`` every draw comes from NumPy's global generator, so ``np.random.seed(s)`` makes
a run repeatable, and ``seed=s`` gives the same data as ``np.random.seed(s)`` followed by the same call
without ``seed`` (a private ``RandomState(s)``, leaving the global generator untouched). For ``moons`` and
``spirals`` the numbers are torchdyn's own after the same ``np.random.seed``; ``diffeqml`` matches it up to
torchdyn's ODE-solver error (~4e-3).

Where nodecore differs from torchdyn on purpose: labels are always int64 (torchdyn's ``spheres`` labels are
float32), torchdyn's ``spheres``, ``gaussians`` and ``gaussians_spiral`` draw from torch's generator (here
NumPy's, like the rest), an odd ``n_samples`` works for ``spheres``, ``gaussians`` in ``dim > 2`` puts the
centres on the circle in the first two coordinates (torchdyn fails for ``dim > 3``), and an unknown type or
option raises ``ValueError`` naming the valid ones (torchdyn returns ``None`` or ignores it).

Every type is one entry of the registry ``_TYPES``: its public generator (whose signature holds the options
and their defaults, read by :func:`resolve_params`), torchdyn's class sizes for ``n_samples``, and the draw.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from nodecore._checks import choice, integer, number, positive

__all__ = [
    "DATASET_TYPES",
    "ToyDataset",
    "UNLABELLED_TYPES",
    "generate_circles",
    "generate_concentric_spheres",
    "generate_diffeqml",
    "generate_gaussians",
    "generate_gaussians_spiral",
    "generate_moons",
    "generate_points",
    "generate_spirals",
    "randnsphere",
    "resolve_params",
]
# `from torchdyn.datasets import *` also hands out the modules it imported (it has no __all__), and
# torchdyn's tutorials use them without importing them: the same here for a star import.
__all__ += ["Tensor", "math", "np", "torch"]

Arrays = tuple[np.ndarray, Optional[np.ndarray]]  # X [N, D] float64, y [N] int or None
Labelled = tuple[Tensor, Tensor]
_MAX_SEED = 2**32 - 1  # numpy's RandomState limit


def _class_counts(n_samples: int, n_classes: int) -> list[int]:
    """Split ``n_samples`` into ``n_classes`` counts differing by at most one, the larger ones first."""
    base, extra = divmod(n_samples, n_classes)
    return [base + (i < extra) for i in range(n_classes)]


def _labels(sizes: Sequence[int]) -> np.ndarray:
    """``[0] * sizes[0] + [1] * sizes[1] + ...`` as an int64 array."""
    return np.repeat(np.arange(len(sizes)), sizes)


def _random_state(seed: Any) -> np.random.RandomState:
    """``RandomState(seed)``; NumPy's global generator (the one ``np.random.seed`` seeds) when ``seed`` is None."""
    if seed is None:
        return np.random.random_sample.__self__  # the global RandomState behind np.random.* (and np.random.seed)
    return np.random.RandomState(integer("seed (or None)", seed, minimum=0, maximum=_MAX_SEED))


def _shell(rng: np.random.RandomState, n: int, dim: int, r_low: float, r_high: float) -> np.ndarray:
    """``n`` points uniform in the volume ``r_low <= |x| <= r_high`` of R^dim (a sphere when equal): [n, dim]."""
    directions = rng.standard_normal((n, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    q = (r_low / r_high) ** dim  # volume fraction of the hole; stable for large dim
    return directions * r_high * (q + rng.random_sample((n, 1)) * (1.0 - q)) ** (1.0 / dim)


# --------------------------------------------------------------------------------------------------
# Draws: (class sizes, generator, resolved options) -> (X, y), checking what resolve_params leaves
# --------------------------------------------------------------------------------------------------


def _draw_moons(sizes: Sequence[int], rng: np.random.RandomState, *, noise: float) -> Arrays:
    # The upper unit half circle (class 0), then the lower one shifted to (1, 0.5), at equal angle steps from
    # one end to the other: scikit-learn's make_moons(shuffle=False), bit for bit (a test checks it), without
    # importing scikit-learn (about 0.6 s, most of the pipeline's dataset stage).
    upper, lower = (np.linspace(0.0, math.pi, n) for n in sizes)
    X = np.concatenate([np.stack([np.cos(upper), np.sin(upper)], axis=1),
                        np.stack([1 - np.cos(lower), 1 - np.sin(lower) - 0.5], axis=1)])
    return X + rng.random_sample((len(X), 1)) * noise, _labels(sizes)  # torchdyn's noise: u * noise along (1, 1)


def _draw_circles(sizes: Sequence[int], rng: np.random.RandomState, *, noise: float, factor: float) -> Arrays:
    number("circles: factor", factor, minimum=0, maximum=1, open_max=True)
    # The unit circle (class 0), then the one of radius factor, at n equal angle steps from 0, then
    # N(0, noise^2) per coordinate: scikit-learn's make_circles(shuffle=False), bit for bit (a test).
    outer, inner = (np.linspace(0.0, 2.0 * math.pi, n, endpoint=False) for n in sizes)
    X = np.concatenate([np.stack([np.cos(outer), np.sin(outer)], axis=1),
                        np.stack([np.cos(inner) * factor, np.sin(inner) * factor], axis=1)])
    return X + rng.normal(scale=noise, size=X.shape), _labels(sizes)


def _draw_spirals(sizes: Sequence[int], rng: np.random.RandomState, *, noise: float, n_turns: float) -> Arrays:
    positive("spirals: n_turns", n_turns)
    n = sizes[0]  # the larger arm; the other arm is the first sizes[1] points mirrored through the origin
    angle = np.sqrt(rng.random_sample((n, 1))) * n_turns * 2.0 * math.pi  # also the radius
    dx, dy = rng.random_sample((n, 1)) * noise, rng.random_sample((n, 1)) * noise
    arm = np.hstack([-np.cos(angle) * angle + dx, np.sin(angle) * angle + dy])
    return np.vstack([arm, -arm[: sizes[1]]]), _labels(sizes)


def _gaussian_blobs(sizes: Sequence[int], rng: np.random.RandomState, *, angles: np.ndarray, radii: np.ndarray,
                    stds: np.ndarray, dim: int, noise: float, name: str) -> Arrays:
    """Blob ``i``: ``sizes[i]`` points of N(centre_i, stds[i]^2 I) all shifted by one N(0, noise^2 I) draw.

    ``centre_i = radii[i] * (cos angles[i], sin angles[i], 0, ..., 0)`` in R^dim.
    """
    integer(f"{name}: dim", dim, minimum=2)
    blobs = []
    for size, angle, radius, std in zip(sizes, angles, radii, stds):
        centre = np.zeros(dim)
        centre[:2] = radius * math.cos(angle), radius * math.sin(angle)
        points = centre + std * rng.standard_normal((size, dim))
        blobs.append(points + noise * rng.standard_normal(dim))
    return np.concatenate(blobs), _labels(sizes)


def _draw_gaussians(sizes: Sequence[int], rng: np.random.RandomState, *, n_gaussians: int, dim: int,
                    radius: float, std_gaussians: float, noise: float) -> Arrays:
    angles = 2.0 * math.pi * np.arange(1, n_gaussians + 1) / n_gaussians
    return _gaussian_blobs(sizes, rng, angles=angles, radii=np.full(n_gaussians, radius),
                           stds=np.full(n_gaussians, std_gaussians), dim=dim, noise=noise, name="gaussians")


def _draw_gaussians_spiral(sizes: Sequence[int], rng: np.random.RandomState, *, n_gaussians: int,
                           n_gaussians_per_loop: int, dim: int, radius_start: float, radius_end: float,
                           std_gaussians_start: float, std_gaussians_end: float, noise: float) -> Arrays:
    angles = 2.0 * math.pi * np.arange(1, n_gaussians + 1) / n_gaussians_per_loop
    return _gaussian_blobs(sizes, rng, angles=angles, radii=np.linspace(radius_start, radius_end, n_gaussians),
                           stds=np.linspace(std_gaussians_start, std_gaussians_end, n_gaussians), dim=dim,
                           noise=noise, name="gaussians_spiral")


def _draw_spheres(sizes: Sequence[int], rng: np.random.RandomState, *, noise: float, dim: int,
                  inner_radius: float, outer_radius: float, inner_width: float, outer_width: float) -> Arrays:
    if not (inner_width <= inner_radius and 0 < inner_radius < outer_radius):
        raise ValueError("spheres: need inner_width <= inner_radius and 0 < inner_radius < outer_radius, got "
                         f"inner_radius={inner_radius}, outer_radius={outer_radius}, inner_width={inner_width}")
    n_outer, n_inner = sizes
    inner = _shell(rng, n_inner, dim, inner_radius - inner_width, inner_radius)
    inner += noise * rng.standard_normal(inner.shape)
    outer = _shell(rng, n_outer, dim, outer_radius, outer_radius + outer_width)
    outer += noise * rng.standard_normal(outer.shape)
    return np.vstack([inner, outer]), np.repeat([1, 0], [n_inner, n_outer])  # torchdyn: inner first, class 1


@lru_cache(maxsize=1)
def _diffeqml_logo() -> np.ndarray:
    """The 2500 points the DiffEqML logo is drawn around: [2500, 2].

    Three trajectories of ``x' = -y + x (1 - |x|^2)``, ``y' = x + y (1 - |x|^2)`` (the unit circle attracts:
    ``r' = r (1 - r^2)``, ``theta' = 1``, solved in closed form) from (0, 2), (-1.6, -1.2) and (1.6, -1.2),
    500 times each on [0, 3.2], then 1000 points on the circle of radius 2.
    """
    t = np.linspace(0.0, 3.2, 500)
    curves = []
    for x0, y0 in ((0.0, 2.0), (-1.6, -1.2), (1.6, -1.2)):
        r = 1.0 / np.sqrt(1.0 + (1.0 / (x0**2 + y0**2) - 1.0) * np.exp(-2.0 * t))
        theta = math.atan2(y0, x0) + t
        curves.append(np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1))
    theta = np.linspace(0.0, 2.0 * math.pi, 1000)
    curves.append(2.0 * np.stack([np.cos(theta), np.sin(theta)], axis=1))
    return np.concatenate(curves)


def _draw_diffeqml(sizes: Sequence[int], rng: np.random.RandomState, *, noise: float) -> Arrays:
    (n,) = sizes
    logo = _diffeqml_logo()
    anchors = logo[(rng.random_sample(n) * len(logo)).astype(np.int64)]  # a Gaussian KDE, bandwidth 0.01
    X = anchors + 0.01 * rng.standard_normal((n, 2))
    return X + noise * rng.standard_normal((n, 2)), None


# --------------------------------------------------------------------------------------------------
# Public generators: torchdyn's names, positional order and defaults
# --------------------------------------------------------------------------------------------------


def _tensors(X: np.ndarray, y: Optional[np.ndarray]) -> tuple[Tensor, Optional[Tensor]]:
    X_t = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    return X_t, None if y is None else torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))


def _generate(dataset_type: str, n_samples: Any, seed: Any, **params: Any) -> tuple[Tensor, Optional[Tensor]]:
    """Check the arguments, then draw ``dataset_type`` with torchdyn's class sizes for ``n_samples``."""
    n_samples = integer("n_samples", n_samples, minimum=1)
    resolved = resolve_params(dataset_type, **params)
    kind = _TYPES[dataset_type]
    return _tensors(*kind.draw(kind.sizes(n_samples, resolved), _random_state(seed), **resolved))


def generate_moons(n_samples: int = 100, noise: float = 1e-4, *, seed: Optional[int] = None) -> Labelled:
    """Two interleaving half circles, ``n_samples`` points in all: ``n_samples // 2`` on the upper moon (class 0),
    then the rest on the lower one (class 1: the upper mirrored through the origin, shifted by (1, 0.5)), evenly
    spaced along each.

    ``noise``: every point moves by ``u * noise`` along (1, 1), ``u ~ U[0, 1)`` (torchdyn's noise).

    Returns:
        ``(X, y)``: X float32 [n_samples, 2], y int64 [n_samples].
    """
    return _generate("moons", **locals())  # every argument, by name


def generate_circles(n_samples: int = 100, noise: float = 1e-4, factor: float = 0.5, *,
                     seed: Optional[int] = None) -> Labelled:
    """Two concentric circles (not in torchdyn): ``n_samples // 2`` points on the unit circle (class 0), then the
    rest on the circle of radius ``factor`` (class 1), plus N(0, noise^2) per coordinate; exactly
    ``sklearn.datasets.make_circles(shuffle=False)``.

    Returns:
        ``(X, y)``: X float32 [n_samples, 2], y int64 [n_samples].
    """
    return _generate("circles", **locals())


def generate_spirals(n_samples: int = 100, noise: float = 1e-4, n_turns: float = 13 / 6, *,
                     seed: Optional[int] = None) -> Labelled:
    """Two interleaved Archimedean spirals, ``n_samples`` points *per arm* (``2 * n_samples`` in all).

    Arm 0 is ``(-t cos t, t sin t)`` plus ``noise * U[0, 1)`` per coordinate, ``t = sqrt(u) * 2 pi n_turns``
    (torchdyn's 780 degrees, radius up to ~13.6); arm 1 (class 1) is arm 0 mirrored through the origin.

    Returns:
        ``(X, y)``: X float32 [2 * n_samples, 2], y int64 [2 * n_samples] (class 0, then class 1).
    """
    return _generate("spirals", **locals())


def generate_concentric_spheres(n_samples: int = 100, noise: float = 1e-4, dim: int = 3,
                                inner_radius: float = 0.5, outer_radius: float = 1.0, *,
                                inner_width: float = 0.0, outer_width: float = 0.0,
                                seed: Optional[int] = None) -> Labelled:
    """Two concentric spheres in R^dim: ``n_samples // 2`` points on the inner one (class 1), then the rest on
    the outer one (class 0), uniform on each, plus N(0, noise^2) per coordinate.

    ``inner_width`` / ``outer_width`` (nodecore's, 0 in torchdyn) thicken them into shells, uniform in volume:
    ``inner_radius - inner_width <= r <= inner_radius`` and ``outer_radius <= r <= outer_radius + outer_width``
    (``inner_width = inner_radius``: a ball).

    Returns:
        ``(X, y)``: X float32 [n_samples, dim], y int64 [n_samples].

    Raises:
        ValueError: unless ``0 <= inner_width <= inner_radius``, ``0 < inner_radius < outer_radius``,
            ``outer_width >= 0`` and ``dim >= 1``.
    """
    return _generate("spheres", **locals())


def generate_gaussians(n_samples: int = 100, n_gaussians: int = 7, dim: int = 2, radius: float = 0.5,
                       std_gaussians: float = 0.1, noise: float = 1e-3, *, seed: Optional[int] = None) -> Labelled:
    """``n_gaussians`` isotropic Gaussians of std ``std_gaussians`` on a circle, ``n_samples`` points *each*.

    Gaussian ``i`` (class ``i``) is centred at angle ``2 pi (i + 1) / n_gaussians`` on the circle of ``radius``
    in the first two coordinates (the others 0); ``noise``: one N(0, noise^2 I) shift per Gaussian.

    Returns:
        ``(X, y)``: X float32 [n_gaussians * n_samples, dim], y int64 (class 0 first).
    """
    return _generate("gaussians", **locals())


def generate_gaussians_spiral(n_samples: int = 100, n_gaussians: int = 7, n_gaussians_per_loop: int = 4,
                              dim: int = 2, radius_start: float = 1.0, radius_end: float = 0.2,
                              std_gaussians_start: float = 0.3, std_gaussians_end: float = 0.1,
                              noise: float = 1e-3, *, seed: Optional[int] = None) -> Labelled:
    """``n_gaussians`` Gaussians along a spiral, ``n_samples`` points *each*.

    Gaussian ``i`` (class ``i``) sits at angle ``2 pi (i + 1) / n_gaussians_per_loop``; its radius and std go
    linearly from ``radius_start`` / ``std_gaussians_start`` (i = 0) to ``radius_end`` / ``std_gaussians_end``;
    ``noise`` as in :func:`generate_gaussians`.

    Returns:
        ``(X, y)``: X float32 [n_gaussians * n_samples, dim], y int64 (class 0 first).
    """
    return _generate("gaussians_spiral", **locals())


def generate_diffeqml(n_samples: int = 100, noise: float = 1e-3, *,
                      seed: Optional[int] = None) -> tuple[Tensor, None]:
    """``n_samples`` points around the DiffEqML logo (three spirals onto the unit circle inside a circle of
    radius 2), for density estimation: a Gaussian KDE of bandwidth 0.01, plus N(0, noise^2) per coordinate.

    Returns:
        ``(X, None)``: X float32 [n_samples, 2]; no labels, as in torchdyn.
    """
    return _generate("diffeqml", **locals())  # type: ignore[return-value]


def randnsphere(dim: int, radius: float, *, seed: Optional[int] = None) -> Tensor:
    """One point uniform on the sphere of ``radius`` in R^dim: float32 [dim]."""
    dim, radius = integer("dim", dim, minimum=1), positive("radius", radius)
    point = _shell(_random_state(seed), 1, dim, radius, radius)
    return torch.from_numpy(point[0].astype(np.float32))


@dataclass(frozen=True)
class _Type:
    generator: Callable[..., tuple[Tensor, Optional[Tensor]]]  # public; its signature holds the options
    sizes: Callable[[int, dict[str, Any]], tuple[int, ...]]  # torchdyn's class sizes for n_samples
    draw: Callable[..., Arrays]
    labelled: bool = True


_TYPES: dict[str, _Type] = {
    "moons": _Type(generate_moons, lambda n, p: (n // 2, n - n // 2), _draw_moons),
    "circles": _Type(generate_circles, lambda n, p: (n // 2, n - n // 2), _draw_circles),
    "spirals": _Type(generate_spirals, lambda n, p: (n, n), _draw_spirals),
    "gaussians": _Type(generate_gaussians, lambda n, p: (n,) * p["n_gaussians"], _draw_gaussians),
    "gaussians_spiral": _Type(generate_gaussians_spiral, lambda n, p: (n,) * p["n_gaussians"],
                              _draw_gaussians_spiral),
    "spheres": _Type(generate_concentric_spheres, lambda n, p: (n - n // 2, n // 2), _draw_spheres),
    "diffeqml": _Type(generate_diffeqml, lambda n, p: (n,), _draw_diffeqml, labelled=False),
}

#: The labelled (classification) types: the pipeline's choices.
DATASET_TYPES: tuple[str, ...] = tuple(name for name, kind in _TYPES.items() if kind.labelled)
#: Types with no labels (``y`` is None), for density estimation.
UNLABELLED_TYPES: tuple[str, ...] = tuple(name for name, kind in _TYPES.items() if not kind.labelled)


def _options(dataset_type: Any) -> dict[str, Any]:
    """The options of ``dataset_type`` and their defaults, read from its generator's signature."""
    name = choice("dataset_type", dataset_type, _TYPES, plural="dataset types")
    parameters = inspect.signature(_TYPES[name].generator).parameters.values()
    return {p.name: p.default for p in parameters if p.name not in ("n_samples", "seed")}


def resolve_params(dataset_type: str, **params: Any) -> dict[str, int | float]:
    """The full effective options of a dataset type, defaults filled in (``noise`` included).

    Names, types and signs are checked here (every option is a count >= 1 or a number >= 0); the rest of
    each type's ranges when drawing.

    Args:
        dataset_type: one of :data:`DATASET_TYPES` or :data:`UNLABELLED_TYPES`.
        **params: options overriding the defaults.

    Returns:
        Dict of every option, in signature order: ints for integer options, floats for the rest.

    Raises:
        ValueError: unknown ``dataset_type`` (naming the valid ones), unknown option name, or wrong type.
    """
    defaults = _options(dataset_type)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for dataset_type {dataset_type!r}; "
                         f"valid parameters: {list(defaults)}")
    resolved = {}
    for name, default in defaults.items():  # every option is a count >= 1 or a number >= 0
        value, where = params.get(name, default), f"{dataset_type}: {name}"
        if isinstance(default, int):
            resolved[name] = integer(where, value, minimum=1)
        else:
            resolved[name] = number(where, value, minimum=0)
    return resolved


class ToyDataset:
    """Toy datasets with torchdyn's ``ToyDataset().generate`` interface."""

    def generate(self, n_samples: int, dataset_type: str, *, seed: Optional[int] = None,
                 **params: Any) -> tuple[Tensor, Optional[Tensor]]:
        """Generate a toy dataset, as torchdyn does.

        Args:
            n_samples: points in all for ``moons``, ``circles``, ``spheres``, ``diffeqml``; per arm for
                ``spirals``; per Gaussian for ``gaussians`` and ``gaussians_spiral`` (>= 1).
            dataset_type: one of :data:`DATASET_TYPES` or :data:`UNLABELLED_TYPES`.
            seed: in [0, 2**32 - 1]; None draws from NumPy's global generator (``np.random.seed``).
            **params: the type's options (``noise``, ``dim``, ...), see its ``generate_*`` function and
                :func:`resolve_params`.

        Returns:
            ``(X, y)``: X float32 [N, D], y int64 [N] class by class (None for ``diffeqml``).

        Raises:
            ValueError: bad ``n_samples``, ``seed``, ``dataset_type`` or options.
        """
        resolve_params(dataset_type, **params)  # name and check the options before calling the generator
        return _TYPES[dataset_type].generator(n_samples, seed=seed, **params)


def generate_points(n_points: int, dataset_type: str, *, seed: Optional[int] = None,
                    **params: Any) -> tuple[Tensor, Optional[Tensor]]:
    """Exactly ``n_points`` of ``dataset_type`` in all, classes balanced, in random order (nodecore's).

    The classes' sizes differ by at most one, the lower labels the larger; otherwise as
    :meth:`ToyDataset.generate` with the same options (``gaussians``: ``n_points // n_gaussians`` or one more
    per Gaussian; ``spirals``: the second arm mirrors the first).

    Returns:
        ``(X, y)``: X float32 [n_points, D], y int64 [n_points] (None for ``diffeqml``).

    Raises:
        ValueError: bad ``n_points``, ``seed``, ``dataset_type`` or options.
    """
    n_points = integer("n_points", n_points, minimum=1)
    resolved = resolve_params(dataset_type, **params)
    kind, rng = _TYPES[dataset_type], _random_state(seed)
    X, y = kind.draw(_class_counts(n_points, len(kind.sizes(1, resolved))), rng, **resolved)
    order = rng.permutation(n_points)
    return _tensors(X[order], None if y is None else y[order])
