"""Argument checks shared by every nodecore module: one rule for what counts as an integer or a number.

``True`` and ``False`` are not integers here (nor numbers): ``max_iter=True`` is a mistake, not ``1``. Floats
are not integers, even whole ones (``epochs=100.0``). Numbers must be finite real numbers (Python or numpy
scalars; not tensors, not strings). Each check returns the value converted (``int`` / ``float``) and raises
``ValueError`` naming the argument, the bad value and what is valid. Internal: not part of the public surface.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def _kind(value: object, *, integer: bool = False) -> str:
    """``", a bool"`` when the value's type is what is wrong with it (a bool, a float for an integer, a str)."""
    if isinstance(value, numbers.Number) and not isinstance(value, bool) and not integer:
        return ""  # a number out of range or not finite: the value says it all
    return f", a {type(value).__name__}"


def _bounds(minimum: float | None, maximum: float | None, *, open_min: bool, open_max: bool) -> str:
    """``">= 1"``, ``"> 0"``, ``"<= 9"`` or ``"in (0, 1]"``."""
    if minimum is not None and maximum is not None:
        return f"in {'(' if open_min else '['}{minimum}, {maximum}{')' if open_max else ']'}"
    if minimum is not None:
        return f"{'>' if open_min else '>='} {minimum}"
    if maximum is not None:
        return f"{'<' if open_max else '<='} {maximum}"
    return ""


def _in_bounds(value: float, minimum: float | None, maximum: float | None, *, open_min: bool, open_max: bool) -> bool:
    above = minimum is None or (value > minimum if open_min else value >= minimum)
    below = maximum is None or (value < maximum if open_max else value <= maximum)
    return above and below


def integer(name: str, value: object, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (either bound optional).

    Accepts Python and numpy integers; rejects ``bool``, floats (even whole ones) and anything else.

    Raises:
        ValueError: e.g. ``"max_iter must be an integer >= 1, got True, a bool"``.
    """
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not (ok and _in_bounds(value, minimum, maximum, open_min=False, open_max=False)):
        valid = " ".join(filter(None, ("an integer", _bounds(minimum, maximum, open_min=False, open_max=False))))
        raise ValueError(f"{name} must be {valid}, got {value!r}{_kind(value, integer=True) if not ok else ''}")
    return int(value)


def number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_min: bool = False,
    open_max: bool = False,
) -> float:
    """``value`` as a finite ``float`` within the bounds (closed unless ``open_min`` / ``open_max``).

    Accepts Python and numpy real numbers; rejects ``bool``, NaN, +-inf, tensors, strings.

    Raises:
        ValueError: e.g. ``"damping must be a finite number in (0, 1], got 1.5"``.
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and _in_bounds(value, minimum, maximum, open_min=open_min, open_max=open_max)):
        valid = " ".join(filter(None, ("a finite number", _bounds(minimum, maximum, open_min=open_min,
                                                                     open_max=open_max))))
        raise ValueError(f"{name} must be {valid}, got {value!r}{_kind(value) if not ok else ''}")
    return float(value)


def positive(name: str, value: object) -> float:
    """``value`` as a finite ``float > 0`` (tolerances, step sizes, rates).

    Raises:
        ValueError: ``"<name> must be a finite number > 0, got <value>"``.
    """
    return number(name, value, minimum=0, open_min=True)


def choice(name: str, value: T, choices: Iterable[T], *, plural: str | None = None) -> T:
    """``value`` if it is one of ``choices``; a ``bool`` never matches an integer choice (``True`` is not ``1``).

    Args:
        name: what is chosen, for the message (``"solver"``).
        plural: its plural (default ``name + "s"``).

    Raises:
        ValueError: ``"unknown <name> <value>; valid <plural>: a, b, c"``.
    """
    options = tuple(choices)
    for option in options:
        if _same_kind(value, option) and value == option:
            return option
    listed = ", ".join(option if isinstance(option, str) else repr(option) for option in options)
    raise ValueError(f"unknown {name} {value!r}; valid {plural or name + 's'}: {listed}")


def _same_kind(value: object, option: object) -> bool:
    """Whether ``value`` may equal ``option``: bools only match bools, integers only integers (not ``2.0``)."""
    if isinstance(value, bool) or isinstance(option, bool):
        return isinstance(value, bool) and isinstance(option, bool)
    if isinstance(option, numbers.Integral):
        return isinstance(value, numbers.Integral)
    return isinstance(value, type(option))
