import pytest
import torch
from torch import nn

from nodecore import (
    History,
    MLPFieldSpec,
    NeuralODE,
    NonFiniteError,
    ToyDataset,
    build_field,
    evaluate,
    load_model,
    model_config,
    save_checkpoint,
    train,
)
from nodecore.checkpoints import load_checkpoint

T_SPAN = torch.linspace(0, 1, 3)


def _model(seed: int = 0, **options) -> NeuralODE:
    torch.manual_seed(seed)
    return NeuralODE(build_field(MLPFieldSpec()), **{"solver": "rk4", **options})


@pytest.fixture(scope="module")
def moons():
    return ToyDataset().generate(128, "moons", noise=0.1, seed=0)


def test_callback_sees_every_epoch_and_history_matches(moons):
    X, y = moons
    seen = []
    history = train(_model(), X, y, t_span=T_SPAN, epochs=5, callback=seen.append)
    assert [s.epoch for s in seen] == [0, 1, 2, 3, 4]
    assert history.epochs == seen
    assert all(s.nfe_forward > 0 and 0 <= s.accuracy <= 1 for s in seen)
    assert seen[-1].loss < seen[0].loss
    assert History.from_dict(history.to_dict()) == history


def test_adjoint_training_reports_backward_nfe(moons):
    X, y = moons
    history = train(_model(solver="dopri5", sensitivity="adjoint"), X, y, t_span=T_SPAN, epochs=2)
    assert all(e.nfe_backward > 0 for e in history.epochs)


def test_minibatch_training_lowers_the_loss(moons):
    X, y = moons
    history = train(_model(), X, y, t_span=T_SPAN, epochs=8, batch_size=32, seed=3)
    assert history.epochs[-1].loss < history.epochs[0].loss


def test_resuming_from_a_checkpoint_matches_an_uninterrupted_run(moons, tmp_path):
    X, y = moons
    straight = _model()
    train(straight, X, y, t_span=T_SPAN, epochs=6)

    first = _model()
    optimizer = torch.optim.Adam(first.parameters(), lr=0.01)
    history = train(first, X, y, t_span=T_SPAN, epochs=3, optimizer=optimizer)
    path = save_checkpoint(tmp_path / "ckpt.pt", first, config=model_config(MLPFieldSpec(), first), epoch=3,
                           history=history.to_dict(), optimizer=optimizer)

    resumed, checkpoint = load_model(path)
    optimizer = torch.optim.Adam(resumed.parameters(), lr=0.01)
    optimizer.load_state_dict(checkpoint.optimizer_state)
    rest = train(resumed, X, y, t_span=T_SPAN, epochs=6, start_epoch=checkpoint.epoch, optimizer=optimizer)
    assert [e.epoch for e in rest.epochs] == [3, 4, 5]
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert load_checkpoint(path).history["epoch"] == [0, 1, 2]


class _NaNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x, t_span):
        return t_span, (x * self.w * float("nan")).unsqueeze(0)


def test_nan_loss_raises_instead_of_training_on(moons):
    X, y = moons
    with pytest.raises(NonFiniteError, match="epoch 0"):
        train(_NaNModel(), X, y, t_span=T_SPAN, epochs=3)


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": -1}, "epochs must be"),
    ({"epochs": 3, "start_epoch": 4}, "start_epoch"),
    ({"epochs": 3, "batch_size": 0}, "batch_size"),
])
def test_bad_training_arguments_are_rejected(moons, kwargs, match):
    X, y = moons
    with pytest.raises(ValueError, match=match):
        train(_model(), X, y, t_span=T_SPAN, **kwargs)


def test_mismatched_data_is_rejected(moons):
    X, y = moons
    with pytest.raises(ValueError, match="expected X"):
        train(_model(), X, y[:-1], t_span=T_SPAN, epochs=1)


def test_evaluate_reports_loss_accuracy_and_nfe(moons):
    X, y = moons
    model = _model()
    train(model, X, y, t_span=T_SPAN, epochs=5)
    metrics = evaluate(model, X, y, t_span=T_SPAN)
    with torch.no_grad():
        final = model(X, T_SPAN)[1][-1]
    assert metrics.accuracy == pytest.approx((final.argmax(1) == y).float().mean().item())
    assert metrics.loss == pytest.approx(torch.nn.functional.cross_entropy(final, y).item())
    assert metrics.nfe_forward == 8  # rk4 on the t_span grid: 2 steps x 4 evaluations


def test_resuming_mini_batch_training_matches_an_uninterrupted_run(moons):
    X, y = moons
    straight = _model()
    train(straight, X, y, t_span=T_SPAN, epochs=4, batch_size=32, seed=5)
    resumed = _model()
    optimizer = torch.optim.Adam(resumed.parameters(), lr=0.01)
    train(resumed, X, y, t_span=T_SPAN, epochs=2, batch_size=32, seed=5, optimizer=optimizer)
    train(resumed, X, y, t_span=T_SPAN, epochs=4, start_epoch=2, batch_size=32, seed=5, optimizer=optimizer)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)
