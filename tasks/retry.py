"""Retry settings shared by the stages that can fail transiently."""

from prefect.tasks import exponential_backoff

from tasks.faults import is_retryable

RETRYABLE = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_condition_fn": is_retryable,
}
