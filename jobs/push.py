"""push: a registry model, adapter or dataset uploaded to a Hugging Face or ModelScope repository with a
generated card (backend/pipeline/push.py) through the hub's own client: huggingface_hub (whoami, create_repo,
upload_folder) or modelscope's HubApi (create_repo, upload_folder). Hugging Face commits once: a cancelled or
broken push leaves the repository as it was and a retry sends it again; ModelScope's client skips the blobs the
hub already holds. The token is the job's secret (in its environment only), never written anywhere."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from backend.pipeline import push
from backend.core.errors import BAD_INPUT, DOWNLOAD, UserError
from backend.kinds.push import Spec
from backend.core.store import open_store
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


def to_huggingface(spec: Spec, token: str, folder: Path, job: Job) -> tuple[str, str]:
    from huggingface_hub import HfApi
    api = HfApi(endpoint=spec.endpoint or None, token=token)
    repo_type = push.REPO_TYPE[spec.type]
    api.whoami()                                            # a refused token fails here, before anything is made
    url = api.create_repo(spec.repo_id, repo_type=repo_type, private=spec.private, exist_ok=True)
    job.progress(2, 3, "steps", f"uploading to {url}", force=True)
    commit = api.upload_folder(folder_path=folder, repo_id=spec.repo_id, repo_type=repo_type,
                               commit_message=spec.message)
    return str(url), commit.oid


def to_modelscope(spec: Spec, token: str, folder: Path, job: Job) -> tuple[str, str]:
    from modelscope.hub.api import HubApi
    api = HubApi(endpoint=spec.endpoint or None)
    repo_type = push.REPO_TYPE[spec.type]
    api.create_repo(spec.repo_id, token=token, repo_type=repo_type, visibility="private" if spec.private else "public",
                    exist_ok=True)
    url = f"{api.endpoint}/{repo_type}s/{spec.repo_id}"
    job.progress(2, 3, "steps", f"uploading to {url}", force=True)
    api.upload_folder(repo_id=spec.repo_id, folder_path=str(folder), token=token, repo_type=repo_type,
                      commit_message=spec.message)
    return url, ""


def main(spec: Spec, job: Job) -> dict:
    from huggingface_hub.errors import HfHubHTTPError
    from modelscope_hub.errors import HubError

    entry = open_store(job.home).get(spec.type, spec.source)
    if entry is None:
        raise JobError(UserError("err.push.no_entry", type=spec.type, name=spec.source), BAD_INPUT)
    token = os.environ.get(push.TOKEN_ENV[spec.hub], "")
    if not token:
        raise JobError(UserError("err.push.no_token", hub=spec.hub), BAD_INPUT)
    folder = job.dir / "upload"
    try:
        job.progress(0, 3, "steps", "writing the card", force=True)
        size = stage(Path(entry.path), folder, push.card(entry, spec.repo_id, job.home))
        job.progress(1, 3, "steps", f"repository {spec.repo_id} ({'private' if spec.private else 'public'}), "
                                    f"{size / 1e6:.1f} MB", force=True)
        url, commit = (to_huggingface if spec.hub == "huggingface" else to_modelscope)(spec, token, folder, job)
    except (HfHubHTTPError, HubError) as e:       # ModelScope's upload_folder logs each file's reason, then sums up
        response = getattr(e, "response", None)
        status = response.status_code if response is not None else getattr(e, "status_code", 0) or 0
        why = push.refusal(status, str(e), spec.hub, spec.repo_id)
        if why is None:
            raise JobError(UserError("err.push.hub", hub=spec.hub, error=str(e)[:300]), DOWNLOAD,
                           UserError("err.push.hub.tip")) from None
        raise JobError(why, BAD_INPUT) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    job.progress(3, 3, "steps", "pushed", force=True)
    print(f"{spec.type} {spec.source!r} pushed to {url} ({size} bytes)", flush=True)
    return {"repo_id": spec.repo_id, "url": url, "commit": commit, "bytes": size, "private": spec.private}


if __name__ == "__main__":
    run(main, Spec)
