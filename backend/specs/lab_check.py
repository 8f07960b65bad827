"""The lab_check job's spec (jobs/lab_check.py): which lab to check. The student checked is the job's owner,
never a field: a check reads only its owner's artifacts (backend/labs.py)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from backend import labs

TIMEOUT_S = 600          # asking a CPU server a few questions, twice (tuned and base)


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lab: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")


def resources(spec: Spec) -> dict:
    """A light job (no slot); refused at submit when the lab does not exist or has no check."""
    labs.get(spec.lab)
    return {"timeout_s": TIMEOUT_S}
