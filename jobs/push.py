"""push: a registry model, adapter or dataset uploaded to a Hugging Face repository with a generated card
(backend/push.py) through huggingface_hub's own API: whoami (the token), create_repo (name, private/public),
upload_folder (one commit: a cancelled or broken push leaves the repository as it was, and a retry sends it
again). The token is the job's secret (HF_TOKEN in its environment), never written anywhere."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from backend import push
from backend.errors import BAD_INPUT, DOWNLOAD, UserError
from backend.specs.push import Spec
from backend.store import open_store
from jobs.common import Job, JobError, run


def stage(entry_path: Path, folder: Path, card: str) -> int:
    """The files to upload, linked (not copied) into ``folder``, and the card as README.md; their bytes."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    files = [entry_path] if entry_path.is_file() else [p for p in sorted(entry_path.rglob("*")) if p.is_file()
                                                        and ".cache" not in p.relative_to(entry_path).parts]
    for p in files:
        rel = p.name if entry_path.is_file() else p.relative_to(entry_path)
        if str(rel) in ("README.md", "workbench.json"):
            continue
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).symlink_to(p.resolve())
    (folder / "README.md").write_text(card, encoding="utf-8")
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(spec: Spec, job: Job) -> dict:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    entry = open_store(job.home).get(spec.type, spec.source)
    if entry is None:
        raise JobError(str(UserError("err.push.no_entry", type=spec.type, name=spec.source)), BAD_INPUT)
    token = os.environ.get(push.TOKEN_ENV[spec.hub], "")
    if not token:
        raise JobError(str(UserError("err.push.no_token", hub=spec.hub)), BAD_INPUT)
    api = HfApi(endpoint=spec.endpoint or None, token=token)
    repo_type = push.REPO_TYPE[spec.type]
    try:
        job.progress(0, 3, "steps", "checking the token", force=True)
        user = api.whoami()["name"]
        job.progress(1, 3, "steps", f"repository {spec.repo_id} ({'private' if spec.private else 'public'})", force=True)
        url = api.create_repo(spec.repo_id, repo_type=repo_type, private=spec.private, exist_ok=True)
        size = stage(Path(entry["path"]), job.dir / "upload", push.card(entry, spec.repo_id, job.home))
        job.progress(2, 3, "steps", f"uploading {size / 1e6:.1f} MB", force=True)
        commit = api.upload_folder(folder_path=job.dir / "upload", repo_id=spec.repo_id, repo_type=repo_type,
                                   commit_message=spec.message)
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else 0
        why = push.refusal(status, str(e), spec.hub, spec.repo_id)
        if why is None:
            raise JobError(f"{spec.hub} answered {status}: {str(e)[:300]}", DOWNLOAD, "retry the job later") from None
        raise JobError(str(why), BAD_INPUT) from None
    finally:
        shutil.rmtree(job.dir / "upload", ignore_errors=True)
    job.progress(3, 3, "steps", "pushed", force=True)
    print(f"{spec.type} {spec.source!r} pushed by {user} to {url} ({size} bytes, commit {commit.oid})", flush=True)
    return {"repo_id": spec.repo_id, "url": str(url), "commit": commit.oid, "bytes": size, "private": spec.private}


if __name__ == "__main__":
    run(main, Spec)
