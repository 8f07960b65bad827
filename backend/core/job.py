"""A job as the store holds it: a record with typed fields that callers ask questions of
(``job.state.finished``, ``job.active``), instead of a dict and bare state strings."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from backend.core.states import ACTIVE, JobState


class Record:
    """Read access by field name too (``job["owner"]``), for code that shows rows as tables."""

    def __getitem__(self, name: str):
        return getattr(self, name)

    def get(self, name: str, default=None):
        return getattr(self, name, default)

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
