"""Fixtures for tests of the pyplot helpers: import both into a test module to use them there."""

from __future__ import annotations

from collections.abc import Iterator

import matplotlib.pyplot as plt
import pytest


@pytest.fixture(autouse=True, scope="module")
def agg_backend() -> Iterator[None]:
    """Draw headless (Agg) in the importing module, whatever the session's backend; restore it afterwards."""
    previous = plt.get_backend()
    plt.switch_backend("agg")
    yield
    plt.close("all")
    plt.switch_backend(previous)


@pytest.fixture(autouse=True)
def no_open_figures() -> Iterator[None]:
    """Each test starts and ends with no pyplot figure open."""
    plt.close("all")
    yield
    plt.close("all")
