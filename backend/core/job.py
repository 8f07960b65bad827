"""A job as the store holds it: a record with typed fields that callers ask questions of
(``job.state.finished``, ``job.active``), instead of a dict and bare state strings."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from backend.core.states import ACTIVE, JobState


class Record:
    """A store row with typed fields (``job.owner``, ``entry.meta``); ``as_dict`` for code that shows rows as
    tables. No dict access: one spelling per field."""

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict):
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class Job(Record):
    id: int
    kind: str
    owner: str
    state: JobState
    spec: dict
    asked: dict
    given: dict | None
    priority: int
    label: str
    parent_id: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    worker_id: str | None
    pid: int | None
    heartbeat_at: float | None
    exit_code: int | None
    error_class: str | None
    error_message: str | None
    cancel_requested: int

    def __post_init__(self):
        object.__setattr__(self, "state", JobState(self.state))

    @property
    def finished(self) -> bool:
        return self.state.finished

    @property
    def active(self) -> bool:
        return self.state in ACTIVE
