"""download: fetch a model from Hugging Face, ModelScope or OpenXLab (or set up the bundled one) and
register it with its lineage.

The files go straight into ``<workspace>/models/<name>`` through each hub's own client, which keeps
partial files (``.incomplete``) and resumes them with HTTP Range requests, so a cancelled, crashed or
retried job fetches only what is missing. Before it starts, the job lists the repository, checks the
disk space (and the models quota) for what is left; afterwards it checks every file's size and
checksum against the listing. A token comes only through the environment (``submit(secrets=...)``).

A download into the name of a registered model never writes under that model's folder: it fills
``models/.incoming-<name>`` (resumable the same way; files the model already has with the listed size are
hard-linked in and checked like the rest), and only when every file is there and checked, and the files
it did not bring linked over, are the two folders exchanged in one rename (``renameat2(RENAME_EXCHANGE)``). A loader sees the old files or the new
ones, never a mix; the model's ``trust_remote_code`` opt-in stays bound to the code it was given for
(backend/workspace/remote_code.py), so new code voids it.
"""
from __future__ import annotations

import ctypes
import errno
import fnmatch
import hashlib
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


from backend.access import ownership
from backend.core import defaults, paths
from backend.workspace import models
from backend.core.registry import RegistryType
from backend.core.states import ACTIVE
from backend.core.store import open_store
from backend.core.errors import BAD_INPUT, DISK_FULL, DOWNLOAD
from backend.runtime.job_env import CREDENTIALS_DIR
from backend.core.paths import human_size
from backend.kinds.download import Spec
from jobs.common import Job, JobError, run

MARKER = ".cache/workbench-download.json"       # which repo a models/<name> folder is a download of
TOKEN_ENV = {"huggingface": "HF_TOKEN", "modelscope": "MODELSCOPE_API_TOKEN", "openxlab": "OPENXLAB_AK"}
ENDPOINT_ENV = {"huggingface": "HF_ENDPOINT", "modelscope": "MODELSCOPE_ENDPOINT", "openxlab": "OPENXLAB_ENDPOINT"}
SPACE_MARGIN = 16 * 1024 * 1024                   # bytes kept free beyond what the files need
WORKERS = 8                                       # files fetched in parallel
RESUME_CHUNK = 256 * 1024                         # HF writes a partial file in steps of this (default 10 MB)


@dataclass
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None = None       # LFS files (HF), every file (ModelScope)
    git_sha1: str | None = None     # HF's blob id of small files: sha1(b"blob <size>\0" + content)


# -- progress: total and per file, from what is on disk --------------------------------------------
def file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:              # moved or removed by another thread between the two calls
        return None


class Progress:
    """Turns the clients' progress callbacks into job events. The bytes done are read from the disk
    (finished files + partial files), so resumed bytes count and no callback is counted twice."""

    def __init__(self, job: Job, dest: Path, files: list[RemoteFile], partial, on_done=None):
        self.job, self.dest, self.files, self.partial, self.on_done = job, dest, files, partial, on_done
        self.total = sum(f.size or 0 for f in files)
        self.lock = threading.Lock()
        self.last = 0.0
        self.finished: set[str] = set()
        self.sizes: dict[str, int] = {}
        self.t0 = time.monotonic()
        self.start_done = self.scan()
        self.fetched = 0

    def file_done(self, f: RemoteFile) -> int:
        """Bytes of ``f`` on disk. Other threads move partial files into place meanwhile: a file that
        vanishes while it is looked at counts as absent (the next scan finds it in its new place)."""
        size = file_size(self.dest / f.path)
        if size is not None and (f.size is None or size == f.size):
            return size
        part = self.partial(self.dest, f.path)
        return (file_size(part) or 0) if part else 0

    def scan(self) -> int:
        done = 0
        for f in self.files:
            n = self.file_done(f)
            done += n
            if f.path not in self.finished and f.size is not None and n == f.size and (self.dest / f.path).is_file():
                self.finished.add(f.path)
                if self.on_done:
                    self.on_done(f)
            self.sizes[f.path] = n
        return done

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 0.5:
            return
        if not self.lock.acquire(blocking=force):
            return
        try:
            self.last = now
            before, was_finished = dict(self.sizes), set(self.finished)
            done = self.scan()
            self.fetched = max(self.fetched, done - self.start_done)
            rate = self.fetched / max(now - self.t0, 1e-6)
            eta = (self.total - done) / rate if rate > 0 else None
            for f in self.files:
                # a partial file can reach full size one scan before it is moved into place
                if self.sizes[f.path] != before.get(f.path) or f.path in self.finished - was_finished:
                    self.job.event("file", path=f.path, done=self.sizes[f.path], total=f.size,
                                   finished=f.path in self.finished)
            self.job.progress(done, self.total or None, "B",
                              f"{len(self.finished)}/{len(self.files)} files · {human_size(rate)}/s"
                              + (f" · ETA {eta:.0f} s" if eta is not None else ""), force=True)
            self.job.event("rate", bytes_per_s=round(rate), eta_s=None if eta is None else round(eta, 1))
        finally:
            self.lock.release()


def tqdm_for(progress: Progress):
    """A tqdm-compatible class for huggingface_hub's ``tqdm_class``: every update is a progress tick."""

    class Bar:
        def __init__(self, *args, total=None, initial=0, **kwargs):
            self.total, self.n = total, initial

        def update(self, n=1):
            self.n += n or 0
            progress.tick()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __iter__(self):
            return iter(())

        def set_description(self, *a, **k): pass
        def set_description_str(self, *a, **k): pass
        def set_postfix_str(self, *a, **k): pass
        def refresh(self, *a, **k): pass
        def close(self): pass

        @property
        def format_dict(self):
            return {"rate": None}

    return Bar


# -- checks -----------------------------------------------------------------------------------------
def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def check_space(dest: Path, need: int, home: Path) -> None:
    """Fail early when the disk (or the models quota, WORKBENCH_MODELS_QUOTA_GB) can't hold ``need`` bytes."""
    free = shutil.disk_usage(dest if dest.exists() else dest.parent).free
    where = f"free on the disk of {dest.parent}"
    quota = float(defaults.setting("MODELS_QUOTA_GB")) * 1e9
    if quota:
        left = quota - dir_size(models.models_dir(home))
        if left < free:
            free, where = max(left, 0), f"left of the {quota / 1e9:g} GB models quota"
    if need + SPACE_MARGIN > free:
        raise JobError(f"not enough disk space: the download needs {human_size(need)} more, {human_size(free)} {where}",
                       BAD_INPUT, "free some space (delete unused models) or download fewer files (file patterns)")


def git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_file(dest: Path, f: RemoteFile, verify: bool) -> str | None:
    """None when the file matches the listing, else what is wrong (and the bad file is removed)."""
    p = dest / f.path
    if not p.is_file():
        return f"{f.path} is missing"
    size = p.stat().st_size
    problem = None
    if f.size is not None and size != f.size:
        problem = f"{f.path} is {size} bytes, the hub lists {f.size} (cut short or changed)"
    elif verify and f.sha256 and sha256(p) != f.sha256.lower():
        problem = f"{f.path} does not match its sha256 checksum"
    elif verify and f.git_sha1 and not f.sha256 and git_blob_sha1(p) != f.git_sha1:
        problem = f"{f.path} does not match its git checksum"
    if problem:
        p.unlink()        # never leave a bad file that looks finished: a retry fetches it again
    return problem


def unsafe_paths(dest: Path, files: list[RemoteFile]) -> list[str]:
    """Listed paths that would land outside ``dest``: absolute, with ``..``, or through a link out of it."""
    root = dest.resolve()
    bad = []
    for f in files:
        if not isinstance(f.path, str) or not f.path or "\\" in f.path or PurePosixPath(f.path).is_absolute() \
                or ".." in PurePosixPath(f.path).parts or not paths.is_inside((root / f.path).resolve(), root):
            bad.append(f.path)
    return bad


def check_listing(spec: Spec, dest: Path, files: list[RemoteFile]) -> None:
    """Refuse a listing with a path outside ``dest``; called before anything is written or deleted."""
    bad = unsafe_paths(dest, files)
    if bad:
        raise JobError(f"{spec.source} listed files outside the model folder for {spec.repo_id}: "
                       f"{', '.join(map(repr, bad[:5]))}; nothing was fetched", DOWNLOAD,
                       "use another repository or mirror (endpoint): this one is broken or hostile")


# -- the hubs ---------------------------------------------------------------------------------------
def hf_list(spec: Spec, endpoint: str | None, token: str | None) -> tuple[str, list[RemoteFile]]:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects
    api = HfApi(endpoint=endpoint, token=token)
    sha = api.repo_info(spec.repo_id, revision=spec.revision or None).sha
    entries = [e for e in api.list_repo_tree(spec.repo_id, revision=sha, recursive=True) if isinstance(e, RepoFile)]
    keep = set(filter_repo_objects([e.path for e in entries], allow_patterns=spec.allow_patterns or None))
    return sha, [RemoteFile(e.path, e.size, e.lfs.sha256 if e.lfs else None, None if e.lfs else e.blob_id)
                 for e in entries if e.path in keep]


def hf_partial(dest: Path, path: str) -> Path:
    return dest / ".cache" / "workbench" / (path + ".incomplete")


def hf_download(spec: Spec, endpoint, token, sha: str, dest: Path, progress: Progress) -> None:
    """Each missing file through huggingface_hub's own ``http_get`` (auth, retries, redirects, size
    check, ``tqdm_class``), appending to a partial file that survives the process: a later run asks for
    the rest with a Range request. (snapshot_download itself writes per-process temporary files and
    deletes them on failure, so it can't resume a cancelled or crashed job's partial files.)"""
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers
    constants.DOWNLOAD_CHUNK_SIZE = RESUME_CHUNK      # bytes a cancel can lose per file in flight
    headers = build_hf_headers(token=token)
    bar = tqdm_for(progress)

    def fetch(f: RemoteFile) -> None:
        final = dest / f.path
        if final.is_file() and final.stat().st_size == f.size:
            return
        part = hf_partial(dest, f.path)
        part.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "ab") as out:
            have = out.tell()
            if f.size is None or have < f.size:
                http_get(hf_hub_url(spec.repo_id, f.path, revision=sha, endpoint=endpoint), out, resume_size=have,
                         headers=dict(headers), expected_size=f.size, displayed_filename=f.path, tqdm_class=bar)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        progress.tick()

    with ThreadPoolExecutor(WORKERS) as pool:
        for _ in pool.map(fetch, progress.files):
            pass


def ms_list(spec: Spec, endpoint: str | None, token: str | None) -> tuple[str, list[RemoteFile]]:
    from modelscope_hub.api import HubApi
    revision = spec.revision or "master"
    entries = HubApi(endpoint=endpoint, token=token).list_repo_files(spec.repo_id, "model", revision=revision)
    files = [RemoteFile(e.path, e.size, e.sha256) for e in entries
             if getattr(e, "type", "blob") != "tree" and e.path]
    if spec.allow_patterns:
        files = [f for f in files if any(fnmatch.fnmatchcase(f.path, p) for p in spec.allow_patterns)]
    return revision, files


def ms_partial(dest: Path, path: str) -> Path | None:
    return dest / (path + ".incomplete")


def ms_download(spec: Spec, endpoint, token, revision: str, dest: Path, progress: Progress) -> None:
    from modelscope import snapshot_download
    from modelscope_hub._download import ProgressCallback

    class Callback(ProgressCallback):
        def update(self, size: int) -> None:
            progress.tick()

    snapshot_download(spec.repo_id, revision=revision, local_dir=str(dest), endpoint=endpoint, token=token,
                      allow_patterns=spec.allow_patterns or None, progress_callbacks=[Callback],
                      max_workers=WORKERS)


def openxlab_download(spec: Spec, dest: Path, job: Job) -> list[RemoteFile]:
    """OpenXLab's client (in its own engine env) can't resume and lists files only inside ``download``
    (checked there, as paths, by a client subclass); its endpoint is hard-coded, so $OPENXLAB_ENDPOINT (a
    mirror, or a test server) is set on its modules."""
    # its token cache goes to the job's private credentials folder, which the worker removes when the job ends
    os.environ["HOME"] = str(job.dir / CREDENTIALS_DIR / "openxlab-home")
    import openxlab.model.common.bury as bury
    import openxlab.model.handler.download_file as dl
    from openxlab.model import download
    override = spec.endpoint or os.environ.get("OPENXLAB_ENDPOINT")
    if override:
        dl.endpoint = bury.endpoint = override

    class CheckedClient(dl.OpenapiClient):
        """Its listing is checked as paths before the client writes any file (it joins names to ``output``)."""

        def get_download_url(self, *args, **kwargs):
            models, files = super().get_download_url(*args, **kwargs)
            check_listing(spec, dest, [RemoteFile(e.get("fileName"), None) for d in (models, files) if d
                                       for e in d.values()])
            return models, files
    dl.OpenapiClient = CheckedClient
    job.progress(0, None, "B", f"OpenXLab: downloading {spec.repo_id}", force=True)
    got = download(spec.repo_id, output=str(dest), cache=False)
    if got is None:      # the client prints the reason and returns None instead of raising
        raise JobError(f"OpenXLab could not download {spec.repo_id} (see the log): check the id and the "
                       "OPENXLAB_AK/OPENXLAB_SK keys", DOWNLOAD)
    files = [Path(p) for p in got]
    if not files or not all(p.is_file() and p.stat().st_size > 0 for p in files):
        raise JobError(f"OpenXLab returned no usable files for {spec.repo_id}", DOWNLOAD)
    total = sum(p.stat().st_size for p in files)
    job.progress(total, total, "B", f"{len(files)} files", force=True)
    for p in files:
        job.event("file", path=str(p.relative_to(dest)), done=p.stat().st_size, total=p.stat().st_size,
                  finished=True)
    return [RemoteFile(str(p.relative_to(dest)), p.stat().st_size) for p in files]


def interruptible(fn, *args):
    """Run ``fn`` in a daemon thread so that a cancel (SIGTERM -> Cancelled in the main thread) ends
    the job at once: the clients' thread pools would otherwise finish every file in flight first.
    Partial files stay on disk for the next run to resume."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.2)
    if "error" in box:
        raise box["error"]
    return box.get("result")


def explain(e: Exception, spec: Spec, endpoint: str | None) -> JobError | None:
    """A clear message for what the hubs raise; None for errors we don't understand."""
    name = type(e).__name__
    text = str(e)
    first = (text.splitlines() or [""])[0].lower()
    where = endpoint or {"huggingface": "huggingface.co", "modelscope": "modelscope.cn"}.get(spec.source, spec.source)
    status = getattr(getattr(e, "response", None), "status_code", None)
    if name == "RevisionNotFoundError" or (spec.source == "modelscope" and spec.revision and "revision" in first):
        return JobError(f"revision {spec.revision!r} does not exist in {spec.repo_id} on {spec.source}", BAD_INPUT)
    if name in ("RepositoryNotFoundError", "NotExistError") or status == 404:
        return JobError(f"{spec.repo_id} was not found on {spec.source} ({where}): check the id "
                        "(a private or gated repository also needs a token)", BAD_INPUT)
    if name in ("GatedRepoError", "AuthenticationError", "PermissionDeniedError") or status in (401, 403):
        return JobError(f"{spec.source} refused access to {spec.repo_id}: the token is missing, invalid or "
                        "lacks access", BAD_INPUT)
    if name in ("ConnectError", "ConnectionError", "ConnectTimeout", "NetworkError", "LocalEntryNotFoundError",
                "RequestTimeoutError", "TimeoutException") or "connect" in text.lower():
        return JobError(f"cannot reach {where}: check the network or the endpoint/mirror setting", DOWNLOAD)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return JobError("the disk filled up during the download", DISK_FULL,
                        "free some space, then retry: finished files are kept")
    if name in ("FileSizeMismatchError", "FileIntegrityError") or "Consistency check failed" in text:
        return JobError(f"a file from {spec.source} arrived damaged or cut short: {text[:300]}", DOWNLOAD)
    return None


# -- the job ----------------------------------------------------------------------------------------
def prepare(dest: Path, spec: Spec) -> None:
    """The target folder is ours: new, or an earlier (partial) download of the same repository."""
    marker = dest / MARKER
    mine = {"source": spec.source, "repo_id": spec.repo_id}
    if marker.is_file():
        seen = json.loads(marker.read_text())
        if {k: seen.get(k) for k in mine} != mine:
            raise JobError(f"{dest} holds a download of {seen.get('source')} {seen.get('repo_id')}: "
                           "choose another name", BAD_INPUT)
    elif dest.exists() and any(dest.iterdir()):
        raise JobError(f"{dest} already exists and is not a download of {spec.repo_id}: choose another name",
                       BAD_INPUT)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({**mine, "revision": spec.revision}))


def staging(final: Path, home: Path, name: str) -> Path:
    """Where this download writes: ``final`` itself unless a registered model lives there (then a new folder)."""
    row = models.get(name, home)
    if row is None or not final.is_dir() or Path(row.path).resolve() != final.resolve():
        return final
    return final.with_name(f".incoming-{name}")


def seed(dest: Path, final: Path, files: list[RemoteFile]) -> None:
    """Hard-link the files ``final`` already has with the listed size into ``dest`` (checked like the rest)."""
    for f in files:
        src, out = final / f.path, dest / f.path
        try:
            if src.is_symlink() or not src.is_file() or out.exists() or src.stat().st_size != f.size:
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, out)
        except OSError:
            continue                    # fetched instead


def carry(final: Path, dest: Path) -> None:
    """Hard-link into ``dest`` the files of ``final`` the download did not bring (outside the listing or the
    patterns, added by hand), so the swap changes only what was downloaded, as an in-place download did."""
    for top, dirs, names in os.walk(final):
        dirs[:] = [d for d in dirs if not (Path(top) == final and d == ".cache")]
        for n in names:
            src = Path(top) / n
            out = dest / src.relative_to(final)
            if not os.path.lexists(out):
                out.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, out, follow_symlinks=False)


def users_of(name: str, home: Path, me: int | None) -> list[int]:
    """The running jobs (but this one) whose spec names model ``name``."""
    store = open_store(home)
    return [j.id for j in store.jobs(states=ACTIVE) if j.id != me
            and any(e.type == RegistryType.MODEL and e.name == name for e in ownership.uses(j.spec, home))]


def exchange(a: Path, b: Path) -> None:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE); where the filesystem can't, in two
    renames (the moment between them the name is absent, never half-written)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None and fn(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:   # AT_FDCWD, RENAME_EXCHANGE
        return
    err = ctypes.get_errno() if fn is not None else errno.ENOSYS
    if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        raise OSError(err, os.strerror(err), str(b))
    aside = b.with_name(f".old-{b.name}")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


def main(spec: Spec, job: Job) -> dict:
    job_id = job.id
    if spec.source == "bundled":
        job.progress(0, 2, "steps", "fetching and converting the bundled model", force=True)
        path = models.ensure_bundled(job.home, job_id=job_id, log=job.message)
        job.progress(2, 2, "steps", "registered", force=True)
        return {"name": models.BUNDLED_NAME, "path": str(path)}

    job.progress(0, None, "B", f"waiting for any other download of {spec.name} to finish", force=True)
    with models.fetch_lock(spec.name, job.home):
        return fetch(spec, job, job_id)


def fetch(spec: Spec, job: Job, job_id: int | None) -> dict:
    """The download itself, while this job holds the model's fetch lock."""
    final = models.models_dir(job.home) / spec.name
    job.check_name("model", spec.name)
    dest = staging(final, job.home, spec.name)
    if dest != final:
        job.message(f"{spec.name} is registered: the files go to {dest.name} and replace it once all are here")
    prepare(dest, spec)
    endpoint = spec.endpoint or os.environ.get(ENDPOINT_ENV[spec.source]) or None
    token = os.environ.get(TOKEN_ENV[spec.source]) or None
    t0 = time.monotonic()
    try:
        if spec.source == "openxlab":
            files, revision, fetched = interruptible(openxlab_download, spec, dest, job), spec.revision, None
            problems = [p for p in (check_file(dest, f, False) for f in files) if p]
        else:
            lister, download, partial = ((hf_list, hf_download, hf_partial) if spec.source == "huggingface"
                                         else (ms_list, ms_download, ms_partial))
            job.message(f"listing {spec.repo_id} on {spec.source}" + (f" ({endpoint})" if endpoint else ""))
            revision, files = lister(spec, endpoint, token)
            check_listing(spec, dest, files)
            if dest != final:
                seed(dest, final, files)
            if not files:
                raise JobError(f"no file of {spec.repo_id} matches {', '.join(spec.allow_patterns) or 'anything'}",
                               BAD_INPUT, "check the file patterns (for example *.safetensors, *.json)")
            verifier = ThreadPoolExecutor(1)        # checksums of finished files overlap the download
            checks: dict[str, object] = {}

            def on_done(f: RemoteFile) -> None:
                checks[f.path] = verifier.submit(check_file, dest, f, spec.verify)

            progress = Progress(job, dest, files, partial, on_done)
            total, have = progress.total, progress.start_done
            job.message(f"{len(files)} files, {human_size(total)} at revision {revision}"
                        + (f"; {human_size(have)} already here" if have else ""))
            check_space(dest, total - have, job.home)
            interruptible(download, spec, endpoint, token, revision, dest, progress)
            progress.tick(force=True)
            fetched = progress.fetched
            for f in files:
                if f.path not in checks:
                    checks[f.path] = verifier.submit(check_file, dest, f, spec.verify)
            problems = [p for p in (checks[f.path].result() for f in files) if p]
            verifier.shutdown()
    except JobError:
        raise
    except Exception as e:  # noqa: BLE001 - the hubs raise many types; explain the ones we understand
        err = explain(e, spec, endpoint)
        if err is None:
            raise
        raise err from None
    if problems:
        raise JobError("; ".join(problems[:5]) + " (bad files were removed: retry to fetch them again)", DOWNLOAD)
    old = models.get(spec.name, job.home)
    if dest != final:                   # complete and checked: swap it in, then drop the old files
        carry(final, dest)

        def swap() -> list[int]:        # under the store's write lock: no job starts between the check and the swap
            busy = users_of(spec.name, job.home, job_id)
            if not busy:
                exchange(dest, final)
            return busy
        if busy := open_store(job.home).exclusive(swap):
            raise JobError(f"model {spec.name} is in use by running job {', '.join(map(str, busy))}: its new files wait "
                           f"in {dest.name}; retry this download when that job has finished", BAD_INPUT)
        shutil.rmtree(dest, ignore_errors=True)
        dest = final
    # the opt-in stays with the code it was given for: new code voids it (remote_code.trust)
    kept = ({"trust_remote_code": True, "code_sha256": old.meta.get("code_sha256", "")}
            if old and old.meta.get("trust_remote_code") is True else {})
    try:
        row = models.register(spec.name, dest, spec.source, id=spec.repo_id, revision=revision, job_id=job_id,
                              owner=job.owner, home=job.home, endpoint=endpoint or "", patterns=spec.allow_patterns,
                              **kept)
    except models.ModelError as e:
        if spec.allow_patterns:      # a partial download (only some files) is kept but can't be a model
            job.message(f"downloaded, not registered: {e}")
            return {"name": spec.name, "path": str(dest), "registered": False, "reason": str(e)}
        raise JobError(f"downloaded, but {e}", BAD_INPUT) from None
    seconds = time.monotonic() - t0
    size = row.meta["size_bytes"]
    job.message(f"registered {spec.name}: {human_size(size)} in {seconds:.1f} s")
    return {"name": spec.name, "path": str(dest), "registered": True, "revision": revision, "files": len(files),
            "bytes": size, "fetched_bytes": fetched, "seconds": round(seconds, 2)}


if __name__ == "__main__":
    run(main, Spec)
