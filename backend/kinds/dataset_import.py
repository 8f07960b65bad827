"""The dataset_import job's spec (jobs/dataset_import.py): where a dataset comes from."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from backend.kinds import Kind
from backend.core.errors import UserError

KIND = Kind("dataset_import", "jobs.dataset_import", cpu_slots=0,
           doc="imports a dataset from Hugging Face, ModelScope or a URL into the workspace")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Literal["huggingface", "modelscope", "url"]
    id: str                        # "owner/name" for a hub, an http(s) URL for url
    name: str = ""                 # dataset name in the workspace; default from the id
    split: str = "train"           # files whose path names this split are preferred
    subset: str = ""               # a sub-folder / configuration to take files from
    revision: str = ""
    max_rows: int = 0              # 0 = all

    @field_validator("id")
    @classmethod
    def plain_id(cls, v: str) -> str:
        v = v.strip()
        if not v or any(c in v for c in " \n\t;|`$"):
            raise UserError("err.spec.dataset_id", value=v)
        return v
