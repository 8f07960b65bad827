"""dataset_import: bring a dataset from Hugging Face, ModelScope or a plain URL into the workspace's
datasets folder as one file, and register it. Tokens (HF_TOKEN, MODELSCOPE_API_TOKEN) come as
secrets in the environment."""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
import time
import urllib.parse
from pathlib import Path


from backend.core import defaults, url_guard
from backend.workspace import datasets
from backend.core.errors import BAD_INPUT, DOWNLOAD
from backend.kinds.dataset_import import Spec
from jobs.common import Job, JobError, run

DATA_PATTERNS = ["*.jsonl", "*.json", "*.csv", "*.parquet", "*.txt"]
SKIP = ("dataset_info", "dataset_infos", "README", "config", ".gitattributes", "state.json")


def pick_files(folder: Path, split: str = "train", subset: str = "") -> list[Path]:
    """The data files of a downloaded dataset: those under ``subset`` and naming ``split`` when
    there are any, in one format (the most common one), in name order."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and ".cache" not in p.parts
             and any(fnmatch.fnmatch(p.name.lower(), pat) for pat in DATA_PATTERNS)
             and not p.name.startswith(SKIP)]
    if subset:
        files = [p for p in files if subset in p.relative_to(folder).parts] or files
    if split:
        named = [p for p in files if re.search(rf"(^|[/_.\-]){re.escape(split)}([/_.\-]|$)",
                                               str(p.relative_to(folder)))]
        files = named or files
    if not files:
        return []
    exts = [p.suffix.lower() for p in files]
    common = max(set(exts), key=exts.count)
    return [p for p in files if p.suffix.lower() == common]


def place(files: list[Path], target_dir: Path, name: str, max_rows: int = 0) -> Path:
    """One dataset file from the downloaded ones: a single file is moved as it is, several (or a row
    limit) are written as one JSONL. Never overwrites."""
    import json

    if not files:
        raise JobError("the download holds no data file (jsonl, json, csv, parquet, txt)", BAD_INPUT,
                       "check the dataset id, subset and split")
    if len(files) == 1 and not max_rows:
        target = target_dir / (name + files[0].suffix.lower())
        if target.exists():
            raise JobError(f"{target.name} already exists in the workspace", BAD_INPUT, "choose another name")
        shutil.move(str(files[0]), target)
        return target
    target = target_dir / (name + ".jsonl")
    if target.exists():
        raise JobError(f"{target.name} already exists in the workspace", BAD_INPUT, "choose another name")
    rows = 0
    with open(target, "x", encoding="utf-8") as out:
        for f in files:
            for _, rec in datasets.iter_records(f, skip_bad=True):
                out.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
                rows += 1
                if max_rows and rows >= max_rows:
                    return target
    return target


def download_url(url: str, folder: Path, job: Job) -> list[Path]:
    """Fetch ``url`` through backend/core/url_guard.py (public addresses only, at every redirect), at most
    WORKBENCH_UPLOAD_MAX_MB bytes within WORKBENCH_URL_IMPORT_TIMEOUT_S seconds."""
    if not url.startswith(("http://", "https://")):
        raise JobError(f"{url} is not an http(s) URL", BAD_INPUT)
    filename = Path(urllib.parse.urlparse(url).path).name or "data.jsonl"
    if not any(fnmatch.fnmatch(filename.lower(), p) for p in DATA_PATTERNS):
        raise JobError(f"{filename}: not a data file (jsonl, json, csv, parquet, txt)", BAD_INPUT)
    cap = int(defaults.setting("UPLOAD_MAX_MB")) * 2**20
    limit_s = float(defaults.setting("URL_IMPORT_TIMEOUT_S"))
    too_big = JobError(f"{url} is larger than {cap // 2**20} MB, the most an import may bring", BAD_INPUT,
                       "import a smaller file, or ask the operator to raise WORKBENCH_UPLOAD_MAX_MB")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    deadline = time.monotonic() + limit_s
    try:
        with url_guard.open_url(url, timeout=60) as r, open(path, "wb") as out:
            total = int(r.headers.get("Content-Length") or 0) or None
            if total and total > cap:
                raise too_big
            done = 0
            while chunk := r.read1(1 << 16):
                done += len(chunk)
                if done > cap:
                    raise too_big
                if time.monotonic() > deadline:
                    raise JobError(f"downloading {url} took over {limit_s:.0f} s, the most an import may take",
                                   DOWNLOAD, "import from a faster server, or a smaller file")
                out.write(chunk)
                job.progress(done, total, "bytes", filename)
    except OSError as e:
        path.unlink(missing_ok=True)
        if url_guard.blocked(e):
            raise JobError(f"{url} was not fetched: {url_guard.blocked(e)}", BAD_INPUT,
                           "give a URL on the public internet") from None
        raise JobError(f"downloading {url} failed: {e}", DOWNLOAD, "check the URL and the network") from None
    except JobError:
        path.unlink(missing_ok=True)
        raise
    return [path]


def download_hub(spec: Spec, folder: Path, job: Job) -> list[Path]:
    job.progress(0, None, "files", f"downloading {spec.id} from {spec.source}", force=True)
    try:
        if spec.source == "huggingface":
            from huggingface_hub import snapshot_download
            snapshot_download(spec.id, repo_type="dataset", revision=spec.revision or None,
                              allow_patterns=DATA_PATTERNS + [f"**/{p}" for p in DATA_PATTERNS], local_dir=folder)
        else:
            from modelscope.hub.snapshot_download import dataset_snapshot_download
            dataset_snapshot_download(spec.id, revision=spec.revision or None, local_dir=str(folder),
                                      allow_patterns=DATA_PATTERNS + [f"**/{p}" for p in DATA_PATTERNS],
                                      token=os.environ.get("MODELSCOPE_API_TOKEN") or None)
    except Exception as e:  # noqa: BLE001 - every hub client error is a download error for the user
        raise JobError(f"downloading {spec.id} from {spec.source} failed: {type(e).__name__}: {e}", DOWNLOAD,
                       "check the dataset id (owner/name), your token for gated data, and the network") from None
    return pick_files(folder, spec.split, spec.subset)


def main(spec: Spec, job: Job) -> dict:
    name = spec.name or spec.id.rstrip("/").split("/")[-1].split("?")[0].rsplit(".", 1)[0]
    try:
        name = datasets.safe_name(name)
        if datasets.unique_name(name, job.home) != name:
            raise datasets.DatasetError("err.ds.exists", name=name)
    except datasets.DatasetError as e:
        raise JobError(str(e), BAD_INPUT) from None
    folder = job.dir / "download"
    files = download_url(spec.id, folder, job) if spec.source == "url" else download_hub(spec, folder, job)
    job.message(f"data files: {', '.join(str(f.relative_to(folder)) for f in files) or 'none'}")
    target = place(files, datasets.datasets_dir(job.home), name, spec.max_rows)
    shutil.rmtree(folder, ignore_errors=True)
    entry = datasets.register(target, name, spec.source, job.home, job_id=job.id,   # the importer's (class mode: private)
                              owner=job.owner, id=spec.id, revision=spec.revision, split=spec.split)
    report = datasets.validate(target, max_errors=20)
    job.message(f"imported {name}: {entry.meta['rows']} rows, format {entry.meta['format']}; {report['summary']}")
    return {"name": name, "path": str(target), "format": entry.meta["format"], "rows": entry.meta["rows"],
            "validation": report["summary"]}


if __name__ == "__main__":
    run(main, Spec)
