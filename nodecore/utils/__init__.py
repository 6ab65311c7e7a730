"""torchdyn's ``torchdyn.utils`` plotting helpers by their names, drawn with nodecore's plots.

As torchdyn's, each draws on a new pyplot figure, left current (``plot_traj_vf_1D``: on pyplot's current axes),
and returns None (``plot_traj_vf_1D``: torchdyn's ``(S, X, U, V)``, with the figure as ``.figure``), so
``plt.gcf()``, ``plt.savefig``, ``plt.show()`` and Jupyter's inline display see it. pyplot is imported on the
first call; headless (no display) matplotlib draws with Agg. For figures outside pyplot, use
:mod:`nodecore.plotting`. They live in :mod:`nodecore.utils.plots`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from nodecore.utils.plots import (
    plot_2d_boundary,
    plot_2D_depth_trajectory,
    plot_2d_flows,
    plot_2D_space_depth,
    plot_2D_state_space,
    plot_3D_dataset,
    plot_static_vector_field,
    plot_traj_vf_1D,
)

__all__ = ["plot_2D_depth_trajectory", "plot_2D_space_depth", "plot_2D_state_space", "plot_2d_boundary",
           "plot_2d_flows", "plot_3D_dataset", "plot_static_vector_field", "plot_traj_vf_1D"]
# torchdyn's `from torchdyn.utils import *` also hands out the modules it imported (it has no __all__), and its
# tutorials use them without importing them; these names keep that code running. Only a star import of
# nodecore.utils loads pyplot: `import nodecore` does not.
STAR_IMPORT_MODULES = ("torch", "nn", "np", "mpl", "plt")
__all__ += STAR_IMPORT_MODULES


def __getattr__(name: str) -> Any:
    if name == "plt":
        import matplotlib.pyplot as plt

        return plt
    if name == "mpl":
        import matplotlib as mpl

        return mpl
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "mpl", "plt"])
