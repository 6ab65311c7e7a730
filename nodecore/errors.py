"""Errors raised by solves, each saying what went wrong and what to try."""


class SolverError(RuntimeError):
    """An ODE solve could not produce a trustworthy result."""


class NonFiniteError(SolverError):
    """NaN or Inf appeared in the state during a solve."""


class StepSizeUnderflowError(SolverError):
    """An adaptive solver shrank its step to nothing (stiff dynamics or NaN in the field)."""


class TooManyStepsError(SolverError):
    """A solve took more steps than ``max_steps`` allows."""


def translate_solver_assertion(err: AssertionError) -> Exception:
    """Turn one of torchdiffeq's assertion failures into a nodecore error that says what to try."""
    message = str(err)
    if message.startswith("underflow in dt"):
        return StepSizeUnderflowError(
            f"the adaptive step size underflowed ({message}): the field produced NaN/Inf or the dynamics are "
            "too stiff; check the field and inputs, loosen atol/rtol, or use a fixed-step solver"
        )
    if message.startswith("non-finite values in state"):
        return NonFiniteError(
            "NaN or Inf appeared in the state during the solve: the dynamics blew up; check the field and "
            "inputs, or use tighter tolerances / a smaller step_size"
        )
    if message.startswith("max_num_steps exceeded"):
        return TooManyStepsError(f"the solver took too many steps ({message}); loosen tolerances")
    return err
