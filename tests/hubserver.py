"""A local model hub on 127.0.0.1 for offline tests and benchmarks.

It serves model folders through the HTTP APIs the real clients call:
  Hugging Face  GET  /api/models/{repo}[/revision/{rev}]        -> {"id", "sha", "siblings"}
                GET  /api/models/{repo}/tree/{rev}?recursive=true -> [{"type", "path", "size", "oid", "lfs"}]
                HEAD/GET /{repo}/resolve/{rev}/{file}            -> ETag, X-Repo-Commit, Content-Length, Range
  ModelScope    GET  /api/v1/models/{id}/repo/files?Revision=&Recursive=True -> {"Code", "Data": {"Files"}}
                GET  /api/v1/models/{id}/repo?Revision=&FilePath=            -> the bytes, Range
  OpenXLab      POST /model-center/api/v1/cli/repository/getFileDownloadUrl  -> signed-URL-like links here
                GET  /oxl/{repo}/{file}
Uploads (huggingface_hub's HfApi, with a token of ``tokens``: {token: user}):
                GET  /api/whoami-v2 · POST /api/repos/create · POST /api/validate-yaml
                POST /api/{models|datasets}/{repo}/preupload/{rev}  -> every file "regular" (no LFS or Xet)
                POST /api/{models|datasets}/{repo}/commit/{rev}     -> ndjson; the files land in ``upload_dir``
Uploads (modelscope's HubApi, models only; the token as its m_session_id cookie or a bearer):
                POST /api/v1/models · POST /api/v1/repos/models/{repo}/info/lfs/objects/batch -> PUT /ms-lfs/{oid}
                POST /api/v1/repos/models/{repo}/commit/{rev}       -> JSON actions (base64 or an LFS oid)

Knobs for failure tests: ``throttle`` (bytes/s per response), ``truncate`` ({path: n}: that file is
served cut to n bytes, consistently, while the listing keeps its true size and checksum), ``quota``
(bytes a user may upload), ``gate`` (cleared: a preupload waits until it is set again). It counts
the file bytes it sends (``bytes_sent``) and logs every request (``requests``).

    python -m tests.hubserver <repo_id>=<folder> ...     # serve until Ctrl-C
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".model")


class Repo:
    def __init__(self, repo_id: str, folder: Path):
        self.id, self.folder = repo_id, Path(folder)
        self.files = {str(p.relative_to(self.folder)): p for p in sorted(self.folder.rglob("*"))
                      if p.is_file() and ".cache" not in p.relative_to(self.folder).parts}
        self.meta = {}
        h = hashlib.sha1()
        for rel, p in self.files.items():
            data = p.read_bytes()
            blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
            self.meta[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "blob": blob,
                              "lfs": rel.endswith(LFS_SUFFIXES)}
            h.update(rel.encode() + blob.encode())
        self.sha = h.hexdigest()                 # the one commit of this repo

    def revision_ok(self, rev: str) -> bool:
        return rev in ("", "main", "master", self.sha)


class Hub:
    def __init__(self, repos: dict[str, Path] | None = None, throttle: float = 0, port: int = 0,
                 tokens: dict[str, str] | None = None, quota: int = 0):
        self.repos = {rid: Repo(rid, folder) for rid, folder in (repos or {}).items()}
        self.tokens, self.quota, self.uploaded = tokens or {}, quota, {}     # uploaded: bytes per user
        self.owners: dict[str, str] = {}                   # repo id -> user, for repos created here
        self.private: dict[str, bool] = {}
        self.upload_dir = Path(tempfile.mkdtemp(prefix="hub-uploads-"))
        self.blobs: dict[str, bytes] = {}                  # ModelScope LFS objects by sha256
        self.gate = threading.Event()
        self.gate.set()
        self.throttle = throttle
        self.truncate: dict[str, int] = {}
        self.bytes_sent = 0
        self.requests: list[str] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            pass
        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, repo_id: str, folder: Path) -> Repo:
        self.repos[repo_id] = Repo(repo_id, folder)
        return self.repos[repo_id]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def count(self, n: int) -> None:
        with self.lock:
            self.bytes_sent += n


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: Hub

    def log_message(self, *args):
        pass

    # -- helpers ---------------------------------------------------------------------------------
    def send_json(self, data, status: int = 200, headers: dict | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def hf_error(self, status: int, code: str, message: str) -> None:
        self.send_json({"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message})

    def repo(self, repo_id: str) -> Repo | None:
        return self.hub.repos.get(repo_id)

    def send_file(self, repo: Repo, rel: str, headers: dict) -> None:
        path = repo.files[rel]
        size = self.hub.truncate.get(rel, repo.meta[rel]["size"])
        start, end = 0, size - 1
        rng = self.headers.get("Range")
        m = re.match(r"bytes=(\d+)-(\d*)", rng or "")
        status = 200
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        length = end - start + 1
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = length
            if not self.hub.throttle:
                self.wfile.flush()
                sent = self.connection.sendfile(f, start, length)
                self.hub.count(sent)
                return
            chunk = max(1024, int(self.hub.throttle / 20))
            while left > 0:
                data = f.read(min(chunk, left))
                if not data:
                    break
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
                self.hub.count(len(data))
                left -= len(data)
                time.sleep(len(data) / self.hub.throttle)

    # -- routes ----------------------------------------------------------------------------------
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        self.hub.requests.append(f"{self.command} {self.path}")
        if path == "/api/whoami-v2":
            user = self.user()
            return user and self.send_json({"type": "user", "name": user, "auth": {"accessToken": {"role": "write"}}})
        m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/(.+))?$", path)
        if m:
            return self.hf_info(m.group(1), m.group(2) or "main")
        m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", path)
        if m:
            return self.hf_tree(m.group(1), m.group(2))
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m:
            return self.hf_resolve(m.group(1), m.group(2), m.group(3))
        m = re.match(r"^/api/v1/models/([^/]+/[^/]+)/repo/files$", path)
        if m:
            return self.ms_files(m.group(1), q.get("Revision", "master"))
        m = re.match(r"^/api/v1/models/([^/]+/[^/]+)/repo$", path)
        if m:
            return self.ms_file(m.group(1), q.get("Revision", "master"), q.get("FilePath", ""))
        m = re.match(r"^/api/v1/models/([^/]+/[^/]+)$", path)
        if m:
            return self.ms_info(m.group(1))
        m = re.match(r"^/oxl/([^/]+/[^/]+)/(.+)$", path)
        if m and self.repo(m.group(1)) and m.group(2) in self.repo(m.group(1)).files:
            return self.send_file(self.repo(m.group(1)), m.group(2), {})
        self.send_json({"error": f"no route {path}"}, 404)

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        self.hub.requests.append(f"POST {self.path}")
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        m = re.match(r"^/api/(?:models|datasets)/([^/]+/[^/]+)/(preupload|commit)/[^/]+$", path)
        if m:
            return self.hf_preupload(m.group(1), json.loads(raw)) if m.group(2) == "preupload" \
                else self.hf_commit(m.group(1), [json.loads(line) for line in raw.splitlines() if line.strip()])
        m = re.match(r"^/api/v1/repos/models/([^/]+/[^/]+)/(info/lfs/objects/batch|commit/[^/]+)$", path)
        if m:
            return self.ms_batch(m.group(1), json.loads(raw)) if m.group(2).startswith("info") \
                else self.ms_commit(m.group(1), json.loads(raw))
        body = json.loads(raw or b"{}")
        if path == "/api/v1/models":
            return self.ms_create(body)
        if path == "/api/repos/create":
            return self.hf_create(body)
        if path == "/api/validate-yaml":
            return self.send_json({"errors": [], "warnings": []})
        if self.path.endswith("/cli/repository/getFileDownloadUrl"):
            repo = self.repo(f"{body.get('userName')}/{body.get('repositoryName')}")
            if repo is None:
                return self.send_json({"msgCode": "10000", "msg": "ok", "traceId": "t",
                                       "data": {"msgCode": "A0001", "msg": "repository not found", "traceId": "t"}})
            files = {rel: {"url": f"{self.hub.url}/oxl/{repo.id}/{urllib.parse.quote(rel)}", "fileName": rel,
                           "hash": repo.meta[rel]["sha256"]} for rel in repo.files}
            return self.send_json({"msgCode": "10000", "msg": "ok", "traceId": "t",
                                   "data": {"msgCode": "10000", "msg": "ok", "traceId": "t",
                                            "data": {"modelNames": {}, "filePaths": files}}})
        self.send_json({"msgCode": "10000", "msg": "ok", "traceId": "t", "data": {}})   # telemetry and the rest

    # -- Hugging Face uploads ----------------------------------------------------------------------
    def user(self) -> str | None:
        """The user of the request's bearer token (or ModelScope's m_session_id cookie); None (and a 401 sent)
        when it is missing or unknown."""
        token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        cookie = re.search(r"m_session_id=([^;\s]+)", self.headers.get("Cookie", ""))
        token = token or (cookie.group(1) if cookie else "")
        if token not in self.hub.tokens:
            self.hf_error(401, "InvalidCredentials", "Invalid credentials in Authorization header")
            return None
        return self.hub.tokens[token]

    def writable(self, repo_id: str, size: int = 0) -> str | None:
        """The token's user when it may write ``size`` more bytes to ``repo_id``; else None (and 401/403 sent)."""
        user = self.user()
        if user is None:
            return None
        if self.hub.owners.get(repo_id) != user:
            self.hf_error(403, "Forbidden", f"You don't have the rights to write to {repo_id}")
            return None
        self.hub.gate.wait(60)
        if self.hub.quota and self.hub.uploaded.get(user, 0) + size > self.hub.quota:
            self.hf_error(403, "Forbidden", "Storage quota exceeded for this account")
            return None
        return user

    def created(self, repo_id: str, user: str, private: bool) -> None:
        folder = self.hub.upload_dir / repo_id
        folder.mkdir(parents=True)
        self.hub.add(repo_id, folder)
        self.hub.owners[repo_id], self.hub.private[repo_id] = user, private

    def write(self, repo_id: str, user: str, files: dict[str, bytes]) -> Repo:
        """A commit: ``files`` (path -> bytes) written into the repository, counted against the quota."""
        repo = self.repo(repo_id)
        for rel, data in files.items():
            target = repo.folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            self.hub.uploaded[user] = self.hub.uploaded.get(user, 0) + len(data)
        return self.hub.add(repo_id, repo.folder)

    def hf_create(self, body: dict):
        user = self.user()
        if user is None:
            return
        repo_id = f"{body.get('organization') or user}/{body['name']}"
        if repo_id.split("/")[0] != user:
            return self.hf_error(403, "Forbidden", "You don't have the rights to create a model under this namespace")
        if repo_id in self.hub.repos:            # as the hub answers: the existing repo's url with the 409
            return self.send_json({"error": "You already created this model repo", "url": f"{self.hub.url}/{repo_id}"},
                                  409, {"X-Error-Code": "Conflict", "X-Error-Message": "You already created this model repo"})
        self.created(repo_id, user, body.get("visibility") == "private" or bool(body.get("private")))
        self.send_json({"url": f"{self.hub.url}/{repo_id}", "name": repo_id})

    def hf_preupload(self, repo_id: str, body: dict):
        if self.writable(repo_id, sum(f["size"] for f in body["files"])):
            self.send_json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                      for f in body["files"]]})

    def hf_commit(self, repo_id: str, lines: list[dict]):
        user = self.writable(repo_id)
        if user is None:
            return
        repo = self.write(repo_id, user, {ln["value"]["path"]: base64.b64decode(ln["value"]["content"])
                                          for ln in lines if ln["key"] == "file"})
        self.send_json({"commitUrl": f"{self.hub.url}/{repo_id}/commit/{repo.sha}", "commitOid": repo.sha,
                        "success": True})

    # -- ModelScope uploads ------------------------------------------------------------------------
    def ms_create(self, body: dict):
        user = self.user()
        if user is None:
            return
        repo_id = f"{body['Path']}/{body['Name']}"
        if body["Path"] != user:
            return self.send_json({"Code": 10010205003, "Message": f"no permission to create {repo_id}",
                                   "Success": False}, 403)
        if repo_id in self.hub.repos:
            return self.send_json({"Code": 10010205002, "Message": "model already exists", "Success": False}, 400)
        self.created(repo_id, user, body.get("Visibility") == 1)
        self.send_json({"Code": 200, "Success": True, "Data": {"Path": body["Path"], "Name": body["Name"]}})

    def ms_batch(self, repo_id: str, body: dict):
        if self.writable(repo_id, sum(o["size"] for o in body["objects"])):
            self.send_json({"Code": 200, "Success": True, "Data": {"objects": [
                {"oid": o["oid"], "size": o["size"], "actions": {"upload": {"href": f"{self.hub.url}/ms-lfs/{o['oid']}"}}}
                for o in body["objects"]]}})

    def ms_commit(self, repo_id: str, body: dict):
        user = self.writable(repo_id)
        if user is None:
            return
        files = {a["path"]: base64.b64decode(a["content"]) if a["type"] == "normal" else self.hub.blobs[a["sha256"]]
                 for a in body["actions"] if a["action"] in ("create", "update")}
        repo = self.write(repo_id, user, files)
        self.send_json({"Code": 200, "Success": True, "Data": {"CommitId": repo.sha}})

    def do_PUT(self):
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.hub.requests.append(f"PUT {self.path}")
        m = re.match(r"^/ms-lfs/([0-9a-f]{64})$", self.path)
        if m is None or hashlib.sha256(data).hexdigest() != m.group(1):
            return self.send_json({"Code": 400, "Message": "bad object", "Success": False}, 400)
        self.hub.blobs[m.group(1)] = data
        self.send_json({"Code": 200, "Success": True})

    # -- Hugging Face ----------------------------------------------------------------------------
    def hf_info(self, repo_id: str, rev: str):
        repo = self.repo(repo_id)
        if repo is None:
            return self.hf_error(404, "RepoNotFound", "Repository not found")
        if not repo.revision_ok(rev):
            return self.hf_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        self.send_json({"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": self.hub.private.get(repo_id, False),
                        "siblings": [{"rfilename": rel} for rel in repo.files]})

    def hf_tree(self, repo_id: str, rev: str):
        repo = self.repo(repo_id)
        if repo is None:
            return self.hf_error(404, "RepoNotFound", "Repository not found")
        if not repo.revision_ok(rev):
            return self.hf_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        out = []
        for rel, meta in repo.meta.items():
            entry = {"type": "file", "path": rel, "size": meta["size"], "oid": meta["blob"]}
            if meta["lfs"]:
                entry["lfs"] = {"oid": meta["sha256"], "size": meta["size"], "pointerSize": 134}
            out.append(entry)
        self.send_json(out)

    def hf_resolve(self, repo_id: str, rev: str, rel: str):
        repo = self.repo(repo_id)
        if repo is None:
            return self.hf_error(404, "RepoNotFound", "Repository not found")
        if not repo.revision_ok(rev):
            return self.hf_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if rel not in repo.files:
            return self.hf_error(404, "EntryNotFound", f"{rel} does not exist")
        meta = repo.meta[rel]
        etag = meta["sha256"] if meta["lfs"] else meta["blob"]
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": repo.sha}
        if meta["lfs"]:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(self.hub.truncate.get(rel, meta["size"]))
        self.send_file(repo, rel, headers)

    # -- ModelScope ------------------------------------------------------------------------------
    def ms_info(self, repo_id: str):
        repo = self.repo(repo_id)
        if repo is None:
            return self.send_json({"Code": 10010205001, "Message": "model not exists", "Success": False}, 404)
        self.send_json({"Code": 200, "Success": True, "Data": {"Path": repo_id.split("/")[0],
                                                                 "Name": repo_id.split("/")[1]}})

    def ms_files(self, repo_id: str, rev: str):
        repo = self.repo(repo_id)
        if repo is None:
            return self.send_json({"Code": 10010205001, "Message": "model not exists", "Success": False}, 404)
        if not repo.revision_ok(rev):
            return self.send_json({"Code": 10010205001, "Message": f"revision {rev} not exists",
                                   "Success": False}, 404)
        files = [{"Name": Path(rel).name, "Path": rel, "Type": "blob", "Size": m["size"], "Sha256": m["sha256"],
                  "Revision": repo.sha, "IsLFS": m["lfs"]} for rel, m in repo.meta.items()]
        self.send_json({"Code": 200, "Success": True, "Message": "success", "Data": {"Files": files}})

    def ms_file(self, repo_id: str, rev: str, rel: str):
        repo = self.repo(repo_id)
        if repo is None or not repo.revision_ok(rev) or rel not in repo.files:
            return self.send_json({"Code": 10010205001, "Message": "file not exists", "Success": False}, 404)
        self.send_file(repo, rel, {})


if __name__ == "__main__":
    import sys
    repos = dict(a.split("=", 1) for a in sys.argv[1:])
    with Hub({k: Path(v) for k, v in repos.items()}) as hub:
        print(hub.url, flush=True)
        threading.Event().wait()
