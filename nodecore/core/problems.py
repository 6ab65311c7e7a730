"""torchdyn's ``torchdyn.core.problems`` import path: the problem classes, defined in their own modules, and the
solve functions torchdyn's module also hands out."""

from nodecore.core import MultipleShootingProblem
from nodecore.core.utils import standardize_vf_call_signature
from nodecore.models.sde import SDEProblem
from nodecore.numerics.odeint import odeint
from nodecore.numerics.shooting import odeint_mshooting
from nodecore.numerics.solvers.ode import str_to_ms_solver, str_to_solver
from nodecore.problems import ODEProblem

__all__ = ["MultipleShootingProblem", "ODEProblem", "SDEProblem", "odeint", "odeint_mshooting",
           "standardize_vf_call_signature", "str_to_ms_solver", "str_to_solver"]
