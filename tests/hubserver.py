"""A local model hub on 127.0.0.1 for offline tests and benchmarks.

It serves model folders through the HTTP APIs the real clients call:
  Hugging Face  GET  /api/models/{repo}[/revision/{rev}]        -> {"id", "sha", "siblings"}
                GET  /api/models/{repo}/tree/{rev}?recursive=true -> [{"type", "path", "size", "oid", "lfs"}]
                HEAD/GET /{repo}/resolve/{rev}/{file}            -> ETag, X-Repo-Commit, Content-Length, Range
  ModelScope    GET  /api/v1/models/{id}/repo/files?Revision=&Recursive=True -> {"Code", "Data": {"Files"}}
                GET  /api/v1/models/{id}/repo?Revision=&FilePath=            -> the bytes, Range
  OpenXLab      POST /model-center/api/v1/cli/repository/getFileDownloadUrl  -> signed-URL-like links here
                GET  /oxl/{repo}/{file}

Knobs for failure tests: ``throttle`` (bytes/s per response), ``truncate`` ({path: n}: that file is
served cut to n bytes, consistently, while the listing keeps its true size and checksum). It counts
the file bytes it sends (``bytes_sent``) and logs every request (``requests``).

    python -m tests.hubserver <repo_id>=<folder> ...     # serve until Ctrl-C
"""
from __future__ import annotations

import hashlib
import json
import re
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
    def __init__(self, repos: dict[str, Path] | None = None, throttle: float = 0, port: int = 0):
        self.repos = {rid: Repo(rid, folder) for rid, folder in (repos or {}).items()}
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
        body = json.loads(self.rfile.read(n) or b"{}")
        self.hub.requests.append(f"POST {self.path}")
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

    # -- Hugging Face ----------------------------------------------------------------------------
    def hf_info(self, repo_id: str, rev: str):
        repo = self.repo(repo_id)
        if repo is None:
            return self.hf_error(404, "RepoNotFound", "Repository not found")
        if not repo.revision_ok(rev):
            return self.hf_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        self.send_json({"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
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
