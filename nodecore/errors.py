"""Errors and warnings nodecore raises, each saying what went wrong and what to try."""

import os


class InputShapeError(ValueError, RuntimeError):
    """A model's input does not have the shape its layers take (e.g. a state ``[B, 3]`` for a field built for 2).

    The message names the input's shape and, where the first layer declares it, the ``in_features`` it takes;
    torch's own error is chained as ``__cause__``. Both a ``ValueError`` and a ``RuntimeError``: code written for
    torchdyn, where torch's ``RuntimeError`` comes through, catches it as before.
    """


class CorruptFileError(ValueError):
    """A file is damaged: truncated, or with bytes that fail its checksums or cannot be decoded.

    A ``ValueError``, not an ``OSError``: reading the same bytes again fails again, so retrying cannot help;
    regenerate the file. The message names the file; the reader's own error is chained as ``__cause__``.

    Attributes:
        path: the damaged file (None when not given).
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)  # args stay (message,), so the error pickles (Prefect stores failures)
        self.path = path


class SolverError(RuntimeError):
    """An ODE solve could not produce a trustworthy result."""


class NonFiniteError(SolverError):
    """NaN or Inf appeared in the state during a solve."""


class StepSizeUnderflowError(SolverError):
    """An adaptive solver shrank its step to nothing (stiff dynamics or NaN in the field)."""


class TooManyStepsError(SolverError):
    """A solve took more steps than ``max_steps`` allows."""


class StabilityWarning(RuntimeWarning):
    """A constant-step solve probably blew up: the final state is huge compared with the initial one.

    Raised as a warning, not an error, since such growth can be genuine. The rule (checked once, at the end of
    each solve with constant steps) is in :class:`~nodecore.neuralode.NeuralODE`'s docstring.
    """


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
