"""Toy classification datasets for Neural ODE experiments.

Every dataset type is one generator function in the single registry
``_GENERATORS``; :data:`DATASET_TYPES` is derived from it.  A generator takes
``(n_samples, noise, seed)`` positionally and its dataset-specific parameters
as keyword-only arguments with defaults; those defaults are the source of truth
for :func:`resolve_params`, which returns the full effective parameters that
metadata should record.

``noise`` is always the std of isotropic Gaussian noise added to the points
(for ``gaussians`` it adds to the component std ``std_gaussians``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.datasets import make_circles, make_moons

from nodecore._checks import integer, number, positive

__all__ = ["DATASET_TYPES", "ToyDataset", "resolve_params"]

Arrays = tuple[np.ndarray, np.ndarray]
_MAX_SEED = 2**32 - 1  # sklearn's random_state limit


def _class_counts(n_samples: int, n_classes: int) -> list[int]:
    """Split ``n_samples`` into ``n_classes`` counts differing by at most one."""
    base, extra = divmod(n_samples, n_classes)
    return [base + (i < extra) for i in range(n_classes)]


def _finish(X: np.ndarray, y: np.ndarray, noise: float, rng: np.random.Generator) -> Arrays:
    """Add Gaussian noise of std ``noise`` to ``X`` [N, D] and shuffle ``(X, y)`` jointly."""
    if noise > 0:
        X = X + rng.normal(scale=noise, size=X.shape)
    order = rng.permutation(len(y))
    return X[order], y[order]


def _shell(rng: np.random.Generator, n: int, dim: int, r_low: float, r_high: float) -> np.ndarray:
    """Sample ``n`` points uniformly from ``r_low <= |x| <= r_high`` in R^dim; returns [n, dim]."""
    directions = rng.normal(size=(n, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    q = (r_low / r_high) ** dim  # volume fraction of the hole; stable for large dim
    radii = r_high * (q + rng.uniform(size=(n, 1)) * (1.0 - q)) ** (1.0 / dim)
    return directions * radii


def _moons(n_samples: int, noise: float, seed: int) -> Arrays:
    """Two interleaving half circles, exactly ``sklearn.datasets.make_moons``."""
    return make_moons(n_samples=n_samples, noise=noise, shuffle=True, random_state=seed)


def _circles(n_samples: int, noise: float, seed: int, *, factor: float = 0.5) -> Arrays:
    """Two concentric circles (outer class 0), exactly ``sklearn.datasets.make_circles``."""
    number("circles: factor", factor, minimum=0, maximum=1, open_max=True)
    return make_circles(n_samples=n_samples, noise=noise, factor=factor, random_state=seed)


def _spirals(n_samples: int, noise: float, seed: int, *, n_turns: float = 1.5) -> Arrays:
    """Two interleaved Archimedean spirals of radius <= 1, the second rotated by pi."""
    positive("spirals: n_turns", n_turns)
    rng = np.random.default_rng(seed)
    counts = _class_counts(n_samples, 2)
    y = np.repeat(np.arange(2), counts)
    r = np.sqrt(rng.uniform(size=n_samples))  # sqrt: roughly uniform density along the arm
    angle = r * n_turns * 2.0 * math.pi + math.pi * y
    X = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)
    return _finish(X, y, noise, rng)


def _gaussians(
    n_samples: int,
    noise: float,
    seed: int,
    *,
    n_gaussians: int = 6,
    radius: float = 1.0,
    std_gaussians: float = 0.1,
) -> Arrays:
    """Mixture of isotropic Gaussians centred evenly on a circle; label = component index."""
    integer("gaussians: n_gaussians", n_gaussians, minimum=1)
    positive("gaussians: radius", radius)
    number("gaussians: std_gaussians", std_gaussians, minimum=0)
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_gaussians), _class_counts(n_samples, n_gaussians))
    angles = 2.0 * math.pi * y / n_gaussians
    centres = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    X = centres + rng.normal(scale=std_gaussians, size=centres.shape)
    return _finish(X, y, noise, rng)


def _spheres(
    n_samples: int,
    noise: float,
    seed: int,
    *,
    dim: int = 2,
    inner_radius: float = 0.5,
    outer_radius_low: float = 1.0,
    outer_radius_high: float = 1.5,
) -> Arrays:
    """Ball of ``inner_radius`` (class 0) inside a shell ``[low, high]`` (class 1) in R^dim."""
    integer("spheres: dim", dim, minimum=1)
    if not 0 < inner_radius < outer_radius_low <= outer_radius_high:
        raise ValueError(
            "spheres: need 0 < inner_radius < outer_radius_low <= outer_radius_high, got "
            f"{inner_radius}, {outer_radius_low}, {outer_radius_high}"
        )
    rng = np.random.default_rng(seed)
    n_inner, n_outer = _class_counts(n_samples, 2)
    inner = _shell(rng, n_inner, dim, 0.0, inner_radius)
    outer = _shell(rng, n_outer, dim, outer_radius_low, outer_radius_high)
    y = np.repeat(np.arange(2), [n_inner, n_outer])
    return _finish(np.concatenate([inner, outer]), y, noise, rng)


_GENERATORS: dict[str, Callable[..., Arrays]] = {
    "moons": _moons,
    "circles": _circles,
    "spirals": _spirals,
    "gaussians": _gaussians,
    "spheres": _spheres,
}

DATASET_TYPES: tuple[str, ...] = tuple(_GENERATORS)


def _generator(dataset_type: str) -> Callable[..., Arrays]:
    """Return the registered generator for ``dataset_type``, or raise ``ValueError``."""
    if not isinstance(dataset_type, str) or dataset_type not in _GENERATORS:
        raise ValueError(
            f"unknown dataset_type {dataset_type!r}; valid types: {', '.join(DATASET_TYPES)}"
        )
    return _GENERATORS[dataset_type]


def _coerce(dataset_type: str, name: str, value: Any, default: int | float) -> int | float:
    """Check ``value`` has the type of ``default`` (int or finite float) and convert it."""
    where = f"{dataset_type}: parameter {name!r}"
    return integer(where, value) if isinstance(default, int) else number(where, value)


def resolve_params(dataset_type: str, **params: Any) -> dict[str, int | float]:
    """Return the full effective parameters of a dataset type, defaults filled in.

    Names and types are checked here; value ranges are checked by the generator.

    Args:
        dataset_type: one of :data:`DATASET_TYPES`.
        **params: dataset-specific parameters overriding the defaults.

    Returns:
        Dict of every parameter of that generator (sorted by signature order).

    Raises:
        ValueError: unknown ``dataset_type``, unknown parameter name, or wrong type.
    """
    signature = inspect.signature(_generator(dataset_type))
    defaults = {
        p.name: p.default for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY
    }
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for dataset_type {dataset_type!r}; "
            f"valid parameters: {sorted(defaults) if defaults else 'none'}"
        )
    return {
        name: _coerce(dataset_type, name, params.get(name, default), default)
        for name, default in defaults.items()
    }


def _check_seed(seed: Any) -> int:
    """Return ``seed`` as int; ``None`` draws a fresh seed from OS entropy (no global RNG)."""
    if seed is None:
        return int(np.random.default_rng().integers(0, _MAX_SEED, endpoint=True))
    return integer("seed (or None)", seed, minimum=0, maximum=_MAX_SEED)


class ToyDataset:
    """Toy classification datasets with the torchdyn ``ToyDataset().generate`` interface."""

    def generate(
        self,
        n_samples: int,
        noise: float = 0.0,
        dataset_type: str = "moons",
        *,
        seed: int | None = None,
        **params: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate a labelled toy dataset.

        Args:
            n_samples: number of points N (>= 1).
            noise: std of Gaussian noise added to the points (>= 0).
            dataset_type: one of :data:`DATASET_TYPES`.
            seed: RNG seed in [0, 2**32 - 1]; same seed, same data. ``None`` = fresh entropy.
            **params: dataset-specific parameters, see :func:`resolve_params`.

        Returns:
            ``(X, y)``: X float32 [N, D] (D = 2, or ``dim`` for spheres), y int64 [N].

        Raises:
            ValueError: bad ``n_samples``, ``noise``, ``seed``, ``dataset_type`` or params.
        """
        n_samples = integer("n_samples", n_samples, minimum=1)
        noise = number("noise", noise, minimum=0)
        resolved = resolve_params(dataset_type, **params)
        X, y = _generator(dataset_type)(n_samples, noise, _check_seed(seed), **resolved)
        X_t = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        return X_t, torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
