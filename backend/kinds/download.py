"""The download job's spec (jobs/download.py): which hub, repository, revision and files."""
from __future__ import annotations

from pathlib import Path

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from backend.kinds import Kind
from backend.workspace import models
from backend.core.errors import UserError

KIND = Kind("download", "jobs.download", cpu_slots=0,
           doc="fetches a model from Hugging Face, ModelScope or OpenXLab (or the bundled one) and registers it")

REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9._-]{1,96}$")


REVISION_RE = re.compile(r"^[A-Za-z0-9._/-]{1,100}$")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Literal["huggingface", "modelscope", "openxlab", "bundled"] = "huggingface"
    repo_id: str = ""                  # owner/name on the hub (not used by "bundled")
    revision: str = ""                 # branch, tag or commit; "" = the hub's default
    allow_patterns: list[str] = []     # only files matching one of these globs (e.g. "*.json")
    name: str = ""                     # registry and folder name; "" = the repo's last part
    endpoint: str = ""                 # a mirror; "" = $HF_ENDPOINT / $MODELSCOPE_ENDPOINT / the hub
    verify: bool = True                # check each file's checksum against the listing

    @field_validator("repo_id", "revision", "name", "endpoint")
    @classmethod
    def strip(cls, v: str) -> str:
        return v.strip()

    @field_validator("revision")
    @classmethod
    def revision_ok(cls, v: str) -> str:
        if v and (not REVISION_RE.fullmatch(v) or ".." in v):
            raise UserError("err.spec.revision", value=v)
        return v

    @field_validator("endpoint")
    @classmethod
    def endpoint_ok(cls, v: str) -> str:
        if v and not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", v):
            raise UserError("err.spec.url", value=v)
        return v.rstrip("/")

    @field_validator("allow_patterns")
    @classmethod
    def patterns_ok(cls, v: list[str]) -> list[str]:
        out = [p.strip() for item in v for p in item.split(",") if p.strip()]
        for p in out:
            if p.startswith("/") or ".." in p.split("/") or "\\" in p or len(p) > 200:
                raise UserError("err.spec.pattern", value=p)
        return out

    @model_validator(mode="after")
    def target(self):
        if self.source == "bundled":
            self.repo_id, self.name = "", self.name or models.BUNDLED_NAME
            if self.name != models.BUNDLED_NAME:
                raise UserError("err.spec.bundled_name", name=models.BUNDLED_NAME)
            return self
        if self.source == "openxlab" and (self.revision or self.allow_patterns):
            raise UserError("err.spec.openxlab")
        if not REPO_RE.fullmatch(self.repo_id) or ".." in self.repo_id:
            raise UserError("err.spec.repo_id", value=self.repo_id)
        self.name = models.check_name(self.name or self.repo_id.split("/")[-1])
        return self


def check(spec: Spec, home: Path, owner: str) -> dict:
    """A name the registry holds for another model is refused."""
    row = models.get(spec.name, home) if spec.source != "bundled" else None
    if row and (row.meta.get("source"), row.meta.get("id")) != (spec.source, spec.repo_id):
        raise UserError("err.spec.model_exists", name=spec.name, source=row.meta.get('source'),
                        id=row.meta.get('id') or row.path)
    return {"engine": "openxlab"} if spec.source == "openxlab" else {}
