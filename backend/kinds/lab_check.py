"""The lab_check job's spec (jobs/lab_check.py): which lab to check. The student checked is the job's owner,
never a field: a check reads only its owner's artifacts (backend/pipeline/labs.py)."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from backend.kinds import Kind

KIND = Kind("lab_check", "jobs.lab_check", cpu_slots=0,
           doc="runs a lab's checks on its owner's artifacts and writes signed evidence when they pass (docs/labs.md)")

TIMEOUT_S = 600          # asking a CPU server a few questions, twice (tuned and base)


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lab: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")


def check(spec: Spec, home: Path, owner: str) -> dict:
    """A light job (no slot). A lab that does not exist or has no check is refused by ``labs.submit_check``, which
    pages and the CLI queue it through (this module imports no area, so the kinds and the queue form no circle);
    the job itself says so too."""
    return {"timeout_s": TIMEOUT_S}
