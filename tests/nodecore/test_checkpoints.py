import pytest
import torch

from nodecore import MLPFieldSpec, NeuralODE, build_field, load_checkpoint, load_model, model_config, save_checkpoint
from nodecore import __version__


def _model() -> NeuralODE:
    torch.manual_seed(0)
    return NeuralODE(build_field(MLPFieldSpec(hidden=8, depth_variant=True)), solver="tsit5", sensitivity="adjoint")


def test_checkpoint_loads_with_weights_only_and_describes_itself(tmp_path):
    model = _model()
    path = save_checkpoint(tmp_path / "m.pt", model, config=model_config(MLPFieldSpec(hidden=8, depth_variant=True), model))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "nodecore.checkpoint" and raw["nodecore_version"] == __version__
    checkpoint = load_checkpoint(path)
    assert checkpoint.config["ode"]["solver"] == "tsit5"
    assert checkpoint.config["field"]["depth_variant"] is True
    assert all(t.device.type == "cpu" for t in checkpoint.state_dict.values())


def test_rebuilt_model_computes_the_same_trajectory(tmp_path):
    model = _model()
    path = save_checkpoint(tmp_path / "m.pt", model, config=model_config(MLPFieldSpec(hidden=8, depth_variant=True), model))
    rebuilt, _ = load_model(path)
    x = torch.randn(16, 2)
    assert rebuilt.options() == model.options()
    torch.testing.assert_close(rebuilt.trajectory(x), model.trajectory(x))


def test_a_file_that_is_not_a_checkpoint_is_rejected(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable nodecore checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a nodecore checkpoint"):
        load_checkpoint(other)


def test_unserialisable_config_is_rejected_and_nothing_written(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "m.pt", _model(), config={"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "m.pt", _model(), config={})
    assert list(tmp_path.iterdir()) == []


def test_a_node_classifier_needs_a_state_dimension_per_class():
    from nodecore.checkpoints import build_model, classifier_config

    with pytest.raises(ValueError, match="dim=2, classes=6; use kind 'anode'"):
        classifier_config("node", dim=2, n_classes=6)
    augmented = build_model(classifier_config("anode", dim=2, n_classes=6, augment_dims=2))
    assert augmented(torch.zeros(3, 2), torch.linspace(0, 1, 2))[1][-1].shape == (3, 6)
    equilibrium = build_model(classifier_config("deq", dim=2, n_classes=6))
    assert equilibrium(torch.zeros(3, 2)).shape == (3, 6)
