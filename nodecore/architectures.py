"""Vector-field architectures described by small specs, so a field can be rebuilt from a checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, Mapping

from torch import nn

from nodecore._checks import choice, integer
from nodecore.fields import DepthCat

ACTIVATIONS: Mapping[str, type[nn.Module]] = MappingProxyType(
    {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU, "silu": nn.SiLU}
)


@dataclass(frozen=True)
class MLPFieldSpec:
    """An MLP vector field ``R^dim -> R^out_dim`` (square, ``R^dim -> R^dim``, unless ``out_dim`` is given).

    The default is the torchdyn moons tutorial's ``Sequential(Linear(2, 16), Tanh(), Linear(16, 2))``. The field
    of ``NeuralODE(order=k)`` maps the state ``[x, x', ..., x^(k-1)]`` (``dim = k n``) to ``x^(k)``
    (``out_dim = n``): ``MLPFieldSpec(dim=6, out_dim=2)`` is an order-3 field, and :attr:`order` says so.

    Attributes:
        dim: state dimension (the field's input width, not counting the depth column).
        hidden: width of each hidden layer.
        layers: number of hidden layers.
        activation: a name from :data:`ACTIVATIONS`.
        depth_variant: feed the depth ``t`` to the first layer through :class:`DepthCat`.
        out_dim: the field's output width, a divisor of ``dim``; ``None`` (the default) means ``dim``, and
            ``out_dim=dim`` is stored as ``None``, so each field has one spec.

    Raises:
        ValueError: a width that is not a positive integer, an unknown activation, or an ``out_dim`` that does not
            divide ``dim``.
    """

    dim: int = 2
    hidden: int = 16
    layers: int = 1
    activation: str = "tanh"
    depth_variant: bool = False
    out_dim: int | None = None

    def __post_init__(self) -> None:
        for name in ("dim", "hidden", "layers"):
            integer(name, getattr(self, name), minimum=1)
        choice("activation", self.activation, ACTIVATIONS)
        if self.out_dim is None:
            return
        integer("out_dim", self.out_dim, minimum=1)
        if self.dim % self.out_dim:
            raise ValueError(
                f"out_dim must divide dim: the field of an order-k Neural ODE maps the state [x, ..., x^(k-1)] "
                f"(dim = k n) to x^(k) (out_dim = n); got dim={self.dim}, out_dim={self.out_dim}"
            )
        if self.out_dim == self.dim:
            object.__setattr__(self, "out_dim", None)

    @property
    def width_out(self) -> int:
        """The field's output width: ``out_dim``, or ``dim`` for a square field."""
        return self.dim if self.out_dim is None else self.out_dim

    @property
    def order(self) -> int:
        """The order of the Neural ODE this field drives: ``dim // width_out`` (1 for a square field)."""
        return self.dim // self.width_out

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain values; a square spec leaves ``out_dim`` out, so it reads as it did before."""
        values = asdict(self)
        if self.out_dim is None:
            del values["out_dim"]
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "MLPFieldSpec":
        """The spec :meth:`to_dict` wrote (a dict without ``out_dim`` is a square field).

        Raises:
            ValueError: a key that is not a field of the spec (the message lists the valid ones), or a bad value.
        """
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown MLPFieldSpec entries {', '.join(map(repr, unknown))}; valid entries: "
                             f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**values)


def build_field(spec: MLPFieldSpec) -> nn.Sequential:
    """Build the vector field described by ``spec`` (weights initialised by PyTorch's RNG)."""
    act = ACTIVATIONS[spec.activation]
    layers: list[nn.Module] = [DepthCat(1)] if spec.depth_variant else []
    width_in = spec.dim + int(spec.depth_variant)
    for _ in range(spec.layers):
        layers += [nn.Linear(width_in, spec.hidden), act()]
        width_in = spec.hidden
    layers.append(nn.Linear(width_in, spec.width_out))
    return nn.Sequential(*layers)
