"""Tests for nodecore._checks, the one home of argument checks, and for its use across the public API."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from nodecore import (
    DEQ,
    Augmenter,
    DEQCell,
    DampedPendulum,
    GalerkinLinear,
    LotkaVolterra,
    MLPFieldSpec,
    NeuralODE,
    ToyDataset,
    get_root_finder,
    get_solver,
    plot_state_space,
    train,
)
from nodecore._checks import choice, integer, number, positive


# --------------------------------------------------------------------------------------------------
# The helpers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", [True, False])
def test_bool_is_not_an_integer(flag: bool) -> None:
    with pytest.raises(ValueError) as info:
        integer("max_iter", flag, minimum=0)
    assert str(info.value) == f"max_iter must be an integer >= 0, got {flag!r}, a bool"


@pytest.mark.parametrize("bad", [2.0, 2.5, np.float64(3.0)])
def test_floats_are_not_integers_even_whole_ones(bad) -> None:
    with pytest.raises(ValueError, match=rf"^epochs must be an integer >= 1, got {re.escape(repr(bad))}, a float(64)?$"):
        integer("epochs", bad, minimum=1)


@pytest.mark.parametrize("bad", ["3", None, torch.tensor(3)])
def test_other_types_are_not_integers(bad) -> None:
    with pytest.raises(ValueError, match=rf"^n must be an integer, got .*, a {type(bad).__name__}$"):
        integer("n", bad)


def test_integers_are_checked_against_their_bounds_and_returned_as_int() -> None:
    assert integer("n", np.int64(3), minimum=1) == 3 and type(integer("n", np.int64(3))) is int
    assert integer("seed", 0, minimum=0, maximum=9) == 0
    with pytest.raises(ValueError, match=r"^seed must be an integer in \[0, 9\], got 10$"):
        integer("seed", 10, minimum=0, maximum=9)
    with pytest.raises(ValueError, match=r"^n_points must be an integer >= 2, got 1$"):
        integer("n_points", 1, minimum=2)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0, 0.0, -1e-3])
def test_positive_numbers_are_finite_and_above_zero(bad) -> None:
    with pytest.raises(ValueError) as info:
        positive("atol", bad)
    assert str(info.value) == f"atol must be a finite number > 0, got {bad!r}"


@pytest.mark.parametrize("bad", [True, "1e-3", torch.tensor(1e-3), None])
def test_positive_numbers_are_real_numbers(bad) -> None:
    with pytest.raises(ValueError, match=rf"^rtol must be a finite number > 0, got .*, a {type(bad).__name__}$"):
        positive("rtol", bad)


def test_numbers_report_their_interval_and_return_float() -> None:
    assert positive("lr", 1) == 1.0 and type(positive("lr", np.float32(0.5))) is float
    assert number("damping", 1, minimum=0, maximum=1, open_min=True) == 1.0
    with pytest.raises(ValueError, match=r"^damping must be a finite number in \(0, 1\], got 0$"):
        number("damping", 0, minimum=0, maximum=1, open_min=True)
    with pytest.raises(ValueError, match=r"^contraction must be a finite number in \(0, 1\), got 1.0$"):
        number("contraction", 1.0, minimum=0, maximum=1, open_min=True, open_max=True)
    with pytest.raises(ValueError, match=r"^noise must be a finite number >= 0, got -0.5$"):
        number("noise", -0.5, minimum=0)


def test_choice_lists_the_valid_options_and_never_matches_across_kinds() -> None:
    assert choice("order", 2, (1, 2)) == 2 and choice("order", np.int64(1), (1, 2)) == 1
    with pytest.raises(ValueError, match=r"^unknown order True; valid orders: 1, 2$"):
        choice("order", True, (1, 2))
    with pytest.raises(ValueError, match=r"^unknown order 2.0; valid orders: 1, 2$"):
        choice("order", 2.0, (1, 2))
    with pytest.raises(ValueError, match=r"^unknown loss \['mse'\]; valid losses: mse, l1$"):
        choice("loss", ["mse"], ("mse", "l1"), plural="losses")


# --------------------------------------------------------------------------------------------------
# One rule across the public API: True is not an integer, nor a number
# --------------------------------------------------------------------------------------------------

FIELD = nn.Linear(2, 2)

BOOL_INPUTS = {
    "NeuralODE atol": (lambda: NeuralODE(FIELD, atol=True), "atol"),
    "NeuralODE step_size": (lambda: NeuralODE(FIELD, solver="euler", step_size=True), "step_size"),
    "NeuralODE max_steps": (lambda: NeuralODE(FIELD, max_steps=True), "max_steps"),
    "NeuralODE order": (lambda: NeuralODE(FIELD, order=True), "order"),
    "MLPFieldSpec dim": (lambda: MLPFieldSpec(dim=True), "dim"),
    "Augmenter augment_dims": (lambda: Augmenter(1, True), "augment_dims"),
    "GalerkinLinear n_basis": (lambda: GalerkinLinear(2, 2, n_basis=True), "n_basis"),
    "DEQ max_iter": (lambda: DEQ(DEQCell(2, 4), max_iter=True), "max_iter"),
    "DEQ damping": (lambda: DEQ(DEQCell(2, 4), damping=True), "damping"),
    "DEQCell hidden": (lambda: DEQCell(2, True), "hidden"),
    "LotkaVolterra alpha": (lambda: LotkaVolterra(alpha=True), "alpha"),
    "DampedPendulum damping": (lambda: DampedPendulum(damping=True), "damping"),
    "ToyDataset n_samples": (lambda: ToyDataset().generate(True, "moons"), "n_samples"),
    "ToyDataset seed": (lambda: ToyDataset().generate(10, "moons", seed=True), "seed"),
    "train epochs": (lambda: train(NeuralODE(FIELD), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long),
                                   t_span=torch.linspace(0, 1, 2), epochs=True), "epochs"),
    "train batch_size": (lambda: train(NeuralODE(FIELD), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long),
                                       t_span=torch.linspace(0, 1, 2), epochs=1, batch_size=True), "batch_size"),
    "plot max_points": (lambda: plot_state_space(np.zeros((2, 3, 2)), np.zeros(3), max_points=True), "max_points"),
    "get_solver": (lambda: get_solver(True), "solver"),
    "get_root_finder": (lambda: get_root_finder(True), "root finder"),
}


@pytest.mark.parametrize("case", list(BOOL_INPUTS), ids=list(BOOL_INPUTS))
def test_every_public_check_refuses_a_bool(case: str) -> None:
    build, name = BOOL_INPUTS[case]
    with pytest.raises(ValueError) as info:
        build()
    message = str(info.value)
    assert name in message and "True" in message, message
    assert "a bool" in message or "valid" in message, message  # says why, or lists what is valid
