"""The torchdyn tutorial's Learner under ``pl.Trainer`` with nodecore models (the ``lightning`` extra)."""

from __future__ import annotations

import functools
import logging
import subprocess
import sys

import pytest

pytest.importorskip("lightning")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from nodecore import Augmenter, NeuralODE, ODEClassifier, ToyDataset, accuracy, evaluate, logits  # noqa: E402
from nodecore.lightning import Learner, dataloader  # noqa: E402

# Noise from Lightning 2.6 on torch 2.13 and from fits without a val loader; filtered in this file only.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*is deprecated"),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
]


@pytest.fixture(autouse=True)
def _quiet_lightning():
    """Silence Lightning's INFO banners (GPU/TPU available, tips, seed set) for these tests only."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


def make_trainer(root, **overrides) -> pl.Trainer:
    options = dict(
        max_epochs=200,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        default_root_dir=root,
    )
    options.update(overrides)
    return pl.Trainer(**options)


@pytest.fixture(scope="module")
def moons():
    X, y = ToyDataset().generate(512, "moons", noise=0.1, seed=0)
    X_test, y_test = ToyDataset().generate(2048, "moons", noise=0.1, seed=1)
    return X, y, X_test, y_test


def tutorial_model(seed: int = 0) -> NeuralODE:
    torch.manual_seed(seed)
    f = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    return NeuralODE(f, sensitivity="adjoint", solver="dopri5")


T_SPAN = torch.linspace(0, 1, 5)


@pytest.mark.slow
def test_tutorial_learner_under_trainer_reaches_99_percent(moons, tmp_path):
    X, y, X_test, y_test = moons
    pl.seed_everything(0)
    model = tutorial_model()
    learner = Learner(model, T_SPAN)
    trainer = make_trainer(tmp_path)
    trainer.fit(learner, dataloader(X, y))

    assert trainer.current_epoch == 200
    assert accuracy(model, X_test, y_test, t_span=T_SPAN) >= 0.99
    metrics = trainer.callback_metrics
    assert {"train_loss", "train_acc", "nfe_forward", "nfe_backward"} <= set(metrics)
    assert metrics["train_loss"] < 0.1
    assert metrics["nfe_forward"] > 0
    assert metrics["nfe_backward"] > 0  # adjoint: the backward solve evaluates the field


def test_augmented_ode_classifier_trains(moons, tmp_path):
    X, y, X_test, y_test = moons
    pl.seed_everything(0)
    f = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4))
    model = ODEClassifier(NeuralODE(f), nn.Linear(4, 2), augmenter=Augmenter(1, 2))
    learner = Learner(model, T_SPAN, lr=0.02)
    before = evaluate(model, X_test, y_test, t_span=T_SPAN)
    model.train()  # evaluate() left it in eval mode; Lightning keeps the mode it finds
    trainer = make_trainer(tmp_path, max_epochs=40)
    trainer.fit(learner, dataloader(X, y, batch_size=128))

    after = evaluate(model, X_test, y_test, t_span=T_SPAN)
    assert after.loss < 0.1 * before.loss
    assert after.accuracy >= 0.95  # measured 0.999 on seeds 0-2
    metrics = trainer.callback_metrics
    assert metrics["nfe_forward"] > 0
    assert metrics["nfe_backward"] == 0  # autograd backpropagates through the solver: no backward solve


def test_validation_logs_val_metrics_equal_to_evaluate(moons, tmp_path):
    X, y, X_test, y_test = moons
    model = tutorial_model()
    learner = Learner(model, T_SPAN)
    trainer = make_trainer(tmp_path, max_epochs=2)
    trainer.fit(learner, dataloader(X, y), dataloader(X_test, y_test, shuffle=False))
    assert {"val_loss", "val_acc", "train_loss"} <= set(trainer.callback_metrics)

    (result,) = trainer.validate(learner, dataloader(X_test, y_test, shuffle=False), verbose=False)
    expected = evaluate(model, X_test, y_test, t_span=T_SPAN)
    assert result["val_loss"] == pytest.approx(expected.loss, rel=1e-5)
    assert result["val_acc"] == pytest.approx(expected.accuracy)
    (tested,) = trainer.test(learner, dataloader(X_test, y_test, shuffle=False), verbose=False)
    assert tested["test_loss"] == pytest.approx(expected.loss, rel=1e-5)


def test_forward_is_logits_and_t_span_follows_the_module():
    model = tutorial_model()
    learner = Learner(model, T_SPAN)
    x = torch.randn(7, 2)
    assert torch.equal(learner(x), logits(model, x, T_SPAN))
    assert "t_span" in dict(learner.named_buffers())
    assert torch.equal(learner.state_dict()["t_span"], T_SPAN)
    assert not any(p is learner.t_span for p in learner.parameters())

    learner.to(torch.float64)  # a buffer moves with the module (dtype here; device on a GPU Trainer)
    assert learner.t_span.dtype == torch.float64
    assert learner(x.double()).dtype == torch.float64


def test_optimizer_is_adam_with_lr_unless_a_factory_is_given():
    default = Learner(tutorial_model(), T_SPAN, lr=0.05).configure_optimizers()
    assert isinstance(default, torch.optim.Adam)
    assert default.param_groups[0]["lr"] == 0.05

    learner = Learner(tutorial_model(), T_SPAN, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    sgd = learner.configure_optimizers()
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["lr"] == 0.1
    assert {id(p) for p in sgd.param_groups[0]["params"]} == {id(p) for p in learner.model.parameters()}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(t_span=torch.tensor([0.0])), "t_span"),
        (dict(t_span=torch.zeros(2, 2)), "t_span"),
        (dict(t_span=T_SPAN, lr=0.0), "lr"),
    ],
)
def test_learner_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Learner(tutorial_model(), **kwargs)


def test_dataloader_is_full_batch_by_default(moons):
    X, y, _, _ = moons
    (batch,) = list(dataloader(X, y))
    assert batch[0].shape == (512, 2) and batch[1].shape == (512,)
    assert sorted(len(b[1]) for b in dataloader(X, y, batch_size=200)) == [112, 200, 200]
    xb, yb = next(iter(dataloader(X, y, shuffle=False)))
    assert torch.equal(xb, X) and torch.equal(yb, y)
    with pytest.raises(ValueError, match="batch_size"):
        dataloader(X, y, batch_size=0)
    with pytest.raises(ValueError, match="expected"):
        dataloader(X, y[:-1])


def test_importing_nodecore_does_not_import_lightning():
    code = "import sys, nodecore; assert not any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_lightning_raises_an_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)  # None in sys.modules: "import lightning" fails
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "nodecore.lightning")
    with pytest.raises(ImportError, match=r"pip install 'nodecore\[lightning\]'"):
        import nodecore.lightning  # noqa: F401
