"""Self-describing checkpoints: weights + config + library version, never a pickled module.

A checkpoint is a dict of plain values and CPU tensors that ``torch.load(path, weights_only=True)`` reads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nodecore._version import __version__
from nodecore.architectures import MLPFieldSpec, build_field
from nodecore.names import MODEL_KINDS
from nodecore.classifiers import ODEClassifier
from nodecore.deq import DEQClassifier
from nodecore.fields import Augmenter
from nodecore.files import atomic_write
from nodecore.neuralode import NeuralODE

CHECKPOINT_FORMAT = "nodecore.checkpoint"
CHECKPOINT_VERSION = 1
# NeuralODE's defaults before 0.2.0, when they became torchdyn's (tsit5, no seminorm, stepping onto every point):
# an older checkpoint's ode options are read with these, so it rebuilds the model it was trained as.
_DEFAULTS_BEFORE_0_2 = {"solver": "dopri5", "seminorm": True}


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds.

    Attributes:
        state_dict: the model's weights (CPU tensors).
        config: JSON-compatible description of the model and of how it was trained.
        nodecore_version: the version that wrote it.
        epoch: epochs completed when written.
        history: per-epoch statistics (``History.to_dict()``), if saved.
        optimizer_state: the optimizer's ``state_dict()``, if saved (for resuming).
    """

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    nodecore_version: str
    epoch: int = 0
    history: dict[str, list] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    config: dict[str, Any],
    epoch: int = 0,
    history: dict[str, list] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Atomically write a checkpoint of ``model`` to ``path``.

    Raises:
        ValueError: ``config`` or ``history`` is not JSON-serialisable.
    """
    try:
        config_json = json.dumps(config, sort_keys=True)
        history_json = json.dumps(history or {})
    except TypeError as err:
        raise ValueError(f"checkpoint config and history must be JSON-serialisable: {err}") from None
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "nodecore_version": __version__,
        "config": config_json,
        "epoch": int(epoch),
        "history": history_json,
        "state_dict": _to_cpu(model.state_dict()),
        "optimizer_state": _to_cpu(optimizer.state_dict()) if optimizer is not None else None,
    }
    with atomic_write(path) as handle:
        torch.save(payload, handle)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

    Raises:
        ValueError: the file is not a nodecore checkpoint, or one of an unsupported format version.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"{path} is not a readable nodecore checkpoint: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a nodecore checkpoint (no format={CHECKPOINT_FORMAT!r} entry)")
    if payload.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {payload.get('format_version')!r}; "
            f"this nodecore ({__version__}) reads version {CHECKPOINT_VERSION}"
        )
    return Checkpoint(
        state_dict=payload["state_dict"],
        config=_with_defaults_of(payload["nodecore_version"], json.loads(payload["config"])),
        nodecore_version=payload["nodecore_version"],
        epoch=payload["epoch"],
        history=json.loads(payload["history"]),
        optimizer_state=payload["optimizer_state"],
    )




def _with_defaults_of(version: str, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the NeuralODE defaults of the nodecore ``version`` that wrote it made explicit."""
    ode = config.get("ode")
    if not isinstance(ode, dict) or _release(version) >= (0, 2):
        return config
    ode = _DEFAULTS_BEFORE_0_2 | ode
    if ode.get("interpolator") is None and ode.get("backend", "nodecore") == "nodecore":
        ode["interpolator"] = "dense"  # None meant dense output then; it now steps onto every point
    return config | {"ode": ode}


def _release(version: str) -> tuple[int, ...]:
    """``'0.1.0'`` -> ``(0, 1, 0)``: the leading numeric parts of a version string (local parts ignored)."""
    parts = []
    for part in version.split("+")[0].split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def _check_order(spec: MLPFieldSpec, ode: dict[str, Any], where: str) -> None:
    """Raise unless ``spec`` is the field of a Neural ODE of the order ``ode`` (its options) asks for."""
    order = ode.get("order", 1)
    if order != spec.order:
        n = spec.dim // order if isinstance(order, int) and order >= 1 and spec.dim % order == 0 else None
        fix = (f"MLPFieldSpec(dim={spec.dim}, out_dim={n}, ...)" if n is not None
               else f"a field spec with dim a multiple of {order}")
        raise ValueError(
            f"{where}: the field spec maps dim={spec.dim} -> {spec.width_out}, the field of an order-{spec.order} "
            f"Neural ODE, but the model's order is {order!r}; the field of an order-k model maps the state "
            f"[x, ..., x^(k-1)] (k n wide) to x^(k) (n wide): use {fix}"
        )


def model_config(spec: MLPFieldSpec, model: NeuralODE) -> dict[str, Any]:
    """The part of a checkpoint config that rebuilds a plain Neural ODE: ``{"kind", "field", "ode"}``.

    Raises:
        ValueError: ``spec`` is not a field of ``model.order`` (``spec.order != model.order``), or not the
            architecture of ``model``'s field (other layers, sizes or activation): the checkpoint would reload
            another model than the one saved.
    """
    ode = model.options()
    _check_order(spec, ode, "model_config")
    with torch.device("meta"):  # the spec's field without drawing weights: no allocation, no RNG of the caller's
        described = build_field(spec)
    field = model.vf.vf
    if not isinstance(field, nn.Module) or _architecture(described) != _architecture(field):
        actual = _leaves(field) if isinstance(field, nn.Module) else [type(field).__name__]
        raise ValueError(
            f"model_config: the spec describes the field {' -> '.join(_leaves(described))} (an nn.Sequential), but "
            f"the model's field is {type(field).__name__}: {' -> '.join(actual)}, so a checkpoint saved with this "
            "config would reload another model. Give the MLPFieldSpec of the model's field, or, for a field no "
            "MLPFieldSpec describes, save any config and rebuild the model yourself: "
            "model.load_state_dict(load_checkpoint(path).state_dict)"
        )
    return {"kind": "node", "field": spec.to_dict(), "ode": ode}


def _architecture(module: nn.Module) -> tuple:
    """What rebuilding ``module`` from a spec must reproduce: every submodule's place, class and numeric settings
    (sizes, an activation's constants), and every weight's name and shape."""
    modules = tuple((name, type(m).__name__, _settings(m)) for name, m in module.named_modules())
    return modules, tuple((name, tuple(v.shape)) for name, v in module.state_dict().items())


def _settings(module: nn.Module) -> tuple:
    """A module's public numeric attributes, as floats (``Softplus(beta=1)`` is the default ``beta=1.0``); flags such
    as ``inplace`` do not change the numbers and are left out."""
    return tuple(sorted((key, float(value)) for key, value in vars(module).items()
                        if isinstance(value, (int, float)) and not isinstance(value, bool) and not key.startswith("_")))


def _leaves(module: nn.Module) -> list[str]:
    """``module``'s leaf modules as their reprs, for messages."""
    return [repr(m) for m in module.modules() if next(m.children(), None) is None]


def classifier_config(kind: str, *, dim: int, n_classes: int, field: MLPFieldSpec | None = None,
                      ode: dict[str, Any] | None = None, augment_dims: int = 0, hidden: int = 32,
                      deq: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config that :func:`build_model` turns into a classifier of ``kind`` (one of :data:`MODEL_KINDS`).

    * ``node``: the torchdyn tutorial's model, logits = final state (``field.dim == dim``);
    * ``anode``: :class:`~nodecore.classifiers.ODEClassifier` with an ``Augmenter(1, augment_dims)``, a
      field in ``dim + augment_dims`` dimensions and a linear readout to ``n_classes``;
    * ``deq``: :class:`~nodecore.deq.DEQClassifier` with ``hidden`` units and ``deq`` options.

    Raises:
        ValueError: an unknown kind (the message lists the valid ones).
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; valid kinds: {', '.join(MODEL_KINDS)}")
    if kind == "node" and n_classes > dim:
        raise ValueError(
            f"a 'node' model reads its class scores from the final state, so it needs at least as many state "
            f"dimensions as classes: dim={dim}, classes={n_classes}; use kind 'anode' (linear readout) or 'deq'"
        )
    config: dict[str, Any] = {"kind": kind, "dim": dim, "n_classes": n_classes}
    if kind == "deq":
        return config | {"hidden": hidden, "deq": dict(deq or {})}
    augment_dims = augment_dims if kind == "anode" else 0
    return config | {"field": (field or MLPFieldSpec(dim=dim + augment_dims)).to_dict(), "ode": dict(ode or {}),
                     "augment_dims": augment_dims}


# What build_model reads of a config, per model kind.
_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "node": ("field", "ode"),
    "anode": ("field", "ode", "n_classes", "augment_dims"),
    "deq": ("dim", "hidden", "n_classes", "deq"),
}


def build_model(config: dict[str, Any]) -> nn.Module:
    """Build an untrained model from a config made by :func:`model_config` or :func:`classifier_config`.

    Raises:
        ValueError: an unknown kind, a config without what that kind needs (one not made by those functions), or a
            field spec that is not the field of the order the ``ode`` options give.
    """
    kind = config.get("kind", "node")
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; valid kinds: {', '.join(MODEL_KINDS)}")
    missing = [key for key in _REQUIRED_KEYS[kind] if key not in config]
    if missing:
        raise ValueError(
            f"the config does not describe a {kind!r} model: it has no {', '.join(map(repr, missing))} (configs made "
            "by model_config or classifier_config have them; the config saved was "
            f"{{{', '.join(map(repr, sorted(config)))}}}); build the model yourself and load the weights: "
            "model.load_state_dict(load_checkpoint(path).state_dict)"
        )
    if kind == "deq":
        return DEQClassifier(config["dim"], config["hidden"], config["n_classes"], **config["deq"])
    spec = MLPFieldSpec.from_dict(config["field"])
    _check_order(spec, config["ode"], "build_model")
    node = NeuralODE(build_field(spec), **config["ode"])
    if kind == "node":
        return node
    return ODEClassifier(node, nn.Linear(spec.dim, config["n_classes"]),  # "anode"
                         augmenter=Augmenter(1, config["augment_dims"]))


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], *, source: str | os.PathLike[str]) -> nn.Module:
    """``model.load_state_dict(weights)``, after checking that every tensor fits; returns ``model``.

    Args:
        model: built from the checkpoint's config (:func:`build_model`).
        weights: the checkpoint's ``state_dict``.
        source: where the weights come from (the checkpoint file), for the message.

    Raises:
        ValueError: names ``source`` and each tensor the file has with another shape than the model's, lacks, or
            has and the model does not (instead of torch's bare size-mismatch ``RuntimeError``).
    """
    expected = model.state_dict()
    problems = [
        f"{name} is {list(weights[name].shape)} in the file but {list(tensor.shape)} in the model"
        for name, tensor in expected.items()
        if name in weights and isinstance(weights[name], torch.Tensor) and weights[name].shape != tensor.shape
    ]
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    if missing:
        problems.append(f"missing from the file: {', '.join(missing)}")
    if unexpected:
        problems.append(f"in the file but not in the model: {', '.join(unexpected)}")
    if problems:
        raise ValueError(
            f"{source}: the checkpoint's weights do not fit the {type(model).__name__} its config describes: "
            f"{'; '.join(problems)}. The config and the weights come from different models (or the config was "
            "edited); save the checkpoint again from the trained model"
        )
    model.load_state_dict(weights)
    return model


def load_model(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model saved at ``path`` (a ``NeuralODE`` or another kind) with its weights, on ``device``.

    Raises:
        ValueError: not a readable nodecore checkpoint (see :func:`load_checkpoint`), a config that describes no
            model (not made by :func:`model_config` or :func:`classifier_config`), or weights that do not fit the
            model the config describes: the message names the file (and each mismatching parameter).
    """
    checkpoint = load_checkpoint(path)
    try:
        model = build_model(checkpoint.config)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return load_weights(model, checkpoint.state_dict, source=path).to(device), checkpoint
