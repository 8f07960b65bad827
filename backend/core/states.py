"""Job states and the only transitions allowed between them."""
from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"          # the worker died under the job

    @property
    def finished(self) -> bool:
        return self in FINISHED

    @property
    def unsuccessful(self) -> bool:
        """Ended without success: failed, cancelled or lost (the ones Retry and Resume are for)."""
        return self in FINISHED and self != JobState.SUCCEEDED


FINISHED = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.LOST}
ACTIVE = {JobState.STARTING, JobState.RUNNING}
PENDING = {JobState.QUEUED, *ACTIVE}           # not finished yet

TRANSITIONS: dict[JobState, set[JobState]] = {
    JobState.QUEUED: {JobState.STARTING, JobState.CANCELLED},
    JobState.STARTING: {JobState.RUNNING, JobState.FAILED, JobState.CANCELLED, JobState.LOST},
    JobState.RUNNING: {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.LOST},
    JobState.SUCCEEDED: set(),
    JobState.FAILED: set(),
    JobState.CANCELLED: set(),
    JobState.LOST: set(),               # Retry queues a new job with the same spec
}


class InvalidTransition(ValueError):
    pass


def check(old: JobState | str, new: JobState | str) -> None:
    old, new = JobState(old), JobState(new)
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"job cannot go from {old.value} to {new.value}")
