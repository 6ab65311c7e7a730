import json

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


# --- higher-order models ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order, depth_variant", [(1, False), (2, True), (3, False), (4, True)])
def test_an_order_k_mlp_model_round_trips_through_load_model_bit_for_bit(tmp_path, order, depth_variant):
    spec = MLPFieldSpec(dim=2 * order, out_dim=2, hidden=8, depth_variant=depth_variant)
    assert spec.order == order
    torch.manual_seed(0)
    model = NeuralODE(build_field(spec), "tsit5", order=order, sensitivity="adjoint", t_span=[0.0, 0.5, 1.0])
    path = save_checkpoint(tmp_path / "m.pt", model, config=model_config(spec, model))
    torch.manual_seed(1)  # the rebuilt model starts from other weights: the file's must replace them
    rebuilt, checkpoint = load_model(path)
    assert checkpoint.config["ode"]["order"] == order and rebuilt.order == order
    assert rebuilt.options() == model.options()
    assert rebuilt.vf.vf[-1].out_features == 2
    x = torch.randn(5, 2 * order)
    t_eval, trajectory = model(x)
    t_rebuilt, trajectory_rebuilt = rebuilt(x)
    assert torch.equal(t_rebuilt, t_eval) and torch.equal(trajectory_rebuilt, trajectory)
    assert trajectory.shape == (3, 5, 2 * order)


def test_a_square_spec_serialises_as_before_and_out_dim_equal_to_dim_is_square():
    assert MLPFieldSpec(hidden=8).to_dict() == {"dim": 2, "hidden": 8, "layers": 1, "activation": "tanh",
                                                "depth_variant": False}
    assert MLPFieldSpec(dim=3, out_dim=3) == MLPFieldSpec(dim=3) and MLPFieldSpec(dim=3, out_dim=3).order == 1
    spec = MLPFieldSpec(dim=6, out_dim=2, layers=2)
    assert MLPFieldSpec.from_dict(spec.to_dict()) == spec
    assert [m.out_features for m in build_field(spec) if isinstance(m, torch.nn.Linear)] == [16, 16, 2]


def test_a_checkpoint_written_before_out_dim_and_order_existed_still_loads(tmp_path):
    # What an earlier nodecore wrote: a field spec without out_dim and ODE options without order.
    torch.manual_seed(0)
    model = NeuralODE(build_field(MLPFieldSpec(hidden=8)), solver="rk4", step_size=0.1)
    ode = {key: value for key, value in model.options().items() if key != "order"}
    old_field = {"dim": 2, "hidden": 8, "layers": 1, "activation": "tanh", "depth_variant": False}
    path = save_checkpoint(tmp_path / "old.pt", model, config={"kind": "node", "field": old_field, "ode": ode})
    rebuilt, _ = load_model(path)
    x = torch.randn(4, 2)
    assert rebuilt.order == 1
    assert torch.equal(rebuilt(x, torch.linspace(0, 1, 3))[1], model(x, torch.linspace(0, 1, 3))[1])


def test_an_order_2_augmented_classifier_builds_from_its_config():
    from nodecore.checkpoints import build_model, classifier_config

    config = classifier_config("anode", dim=2, n_classes=3, augment_dims=2, field=MLPFieldSpec(dim=4, out_dim=2),
                               ode={"order": 2, "solver": "rk4", "step_size": 0.25})
    model = build_model(config)
    assert model(torch.zeros(3, 2), torch.linspace(0, 1, 2))[1][-1].shape == (3, 3)


def test_inconsistent_higher_order_specs_fail_with_the_fix_in_the_message(tmp_path):
    from nodecore.checkpoints import build_model

    with pytest.raises(ValueError, match=r"out_dim must divide dim.*dim=5, out_dim=2"):
        MLPFieldSpec(dim=5, out_dim=2)
    with pytest.raises(ValueError, match="out_dim must be an integer >= 1"):
        MLPFieldSpec(dim=4, out_dim=0)
    with pytest.raises(ValueError, match="unknown MLPFieldSpec entries 'width'; valid entries: dim, "):
        MLPFieldSpec.from_dict({"dim": 2, "width": 3})
    spec = MLPFieldSpec(dim=6, out_dim=2)
    with pytest.raises(ValueError, match=r"model_config: .* order-3 .* model's order is 2.*out_dim=3"):
        model_config(spec, NeuralODE(build_field(MLPFieldSpec(dim=6, out_dim=3)), order=2))
    # A hand-edited config: a square field with order 3 in the ODE options.
    config = {"kind": "node", "field": MLPFieldSpec(dim=6).to_dict(), "ode": {"order": 3}}
    with pytest.raises(ValueError, match=r"build_model: the field spec maps dim=6 -> 6.*MLPFieldSpec\(dim=6, out_dim=2"):
        build_model(config)
    config = {"kind": "node", "field": MLPFieldSpec(dim=5).to_dict(), "ode": {"order": 3}}
    with pytest.raises(ValueError, match="dim a multiple of 3"):
        build_model(config)


def _as_written_by(path, version: str, ode: dict) -> None:
    """Rewrite a checkpoint file as an older nodecore wrote it: its version and its ode options."""
    raw = torch.load(path, weights_only=True)
    config = json.loads(raw["config"])
    raw["config"] = json.dumps(config | {"ode": ode}, sort_keys=True)
    torch.save(raw | {"nodecore_version": version}, path)


def test_a_checkpoint_from_before_0_2_rebuilds_with_the_defaults_it_was_trained_with(tmp_path):
    """Until 0.2.0 NeuralODE defaulted to dopri5, seminorm on and dense output (interpolator None): such a
    checkpoint rebuilds that model, not one with today's torchdyn defaults."""
    model = _model()
    path = save_checkpoint(tmp_path / "m.pt", model, config=model_config(MLPFieldSpec(hidden=8, depth_variant=True), model))
    _as_written_by(path, "0.1.0", {"sensitivity": "adjoint", "interpolator": None})
    old, _ = load_model(path)
    assert (old.solver.name, old.seminorm, old.interpolator) == ("dopri5", True, "dense")
    _as_written_by(path, "0.1.0", {"solver": "rk4", "seminorm": False, "interpolator": "step"})
    explicit, _ = load_model(path)  # what was written down stays
    assert (explicit.solver.name, explicit.seminorm, explicit.interpolator) == ("rk4", False, "step")
    _as_written_by(path, __version__, {"sensitivity": "adjoint"})
    new, _ = load_model(path)
    assert (new.solver.name, new.seminorm, new.interpolator) == ("tsit5", False, None)
