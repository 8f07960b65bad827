"""The dataset_stats job's spec (jobs/dataset_stats.py)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from backend.kinds import Kind

KIND = Kind("dataset_stats", "jobs.dataset_stats", cpu_slots=0,
           doc="rows, fields, duplicates, languages and a token-length histogram of a dataset")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str                                 # registry name or a file in the workspace's datasets
    model: str = ""                              # registry model name; empty = lengths in characters
    max_length: int = Field(2048, ge=1)
    bins: int = Field(30, ge=2, le=200)
    limit: int = Field(0, ge=0)                  # 0 = every row
