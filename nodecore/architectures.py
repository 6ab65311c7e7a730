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
    """An MLP vector field ``R^dim -> R^dim``.

    The default is the torchdyn moons tutorial's ``Sequential(Linear(2, 16), Tanh(), Linear(16, 2))``.

    Attributes:
        dim: state dimension.
        hidden: width of each hidden layer.
        layers: number of hidden layers.
        activation: a name from :data:`ACTIVATIONS`.
        depth_variant: feed the depth ``t`` to the first layer through :class:`DepthCat`.
    """

    dim: int = 2
    hidden: int = 16
    layers: int = 1
    activation: str = "tanh"
    depth_variant: bool = False

    def __post_init__(self) -> None:
        for name in ("dim", "hidden", "layers"):
            integer(name, getattr(self, name), minimum=1)
        choice("activation", self.activation, ACTIVATIONS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "MLPFieldSpec":
        return cls(**values)


def build_field(spec: MLPFieldSpec) -> nn.Sequential:
    """Build the vector field described by ``spec`` (weights initialised by PyTorch's RNG)."""
    act = ACTIVATIONS[spec.activation]
    layers: list[nn.Module] = [DepthCat(1)] if spec.depth_variant else []
    width_in = spec.dim + int(spec.depth_variant)
    for _ in range(spec.layers):
        layers += [nn.Linear(width_in, spec.hidden), act()]
        width_in = spec.hidden
    layers.append(nn.Linear(width_in, spec.dim))
    return nn.Sequential(*layers)
