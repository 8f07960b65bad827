"""Whose is it: every registry row has an owner, one use rule for every type and surface, imports that can't take
another's folder or rewrite an owner, deletes that remove only what an entry made, and job folders in the disk
quota. Real store, real worker, real jobs; class mode through the CLI (the ``klass`` fixture)."""
from __future__ import annotations

import ast
import functools
import io
import json
import shutil
import sqlite3
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from backend.access import users
from backend.core import defaults
from backend.pipeline import chat, finetune
from backend.runtime import queue
from backend.workspace import datasets, models
from backend.workspace.dataset_info import import_dataset_info
from backend.core.store import open_store
from tests.conftest import ROOT, endpoint_of, run_burst, start_worker, stop, wait_for
from tests.hubserver import Hub
from tests.test_users import klass  # noqa: F401 - the class fixture: ann and bob (students), teach (instructor)

ROW = b'{"instruction": "hi", "output": "hello"}\n'


def refusals(actor: str) -> int:
    return sum(1 for r in users.audit_log("refused", home=defaults.home()) if r["actor"] == actor)


def copy_model(tiny_model: Path, dest: Path) -> Path:
    shutil.copytree(tiny_model, dest)
    return dest


# -- the three exploits (each failed on the code before ownership) -------------------------------------------------
def test_dataset_info_cannot_copy_another_students_private_dataset(home, klass):
    datasets.save_upload("ann-secret.jsonl", io.BytesIO(ROW * 3), owner="ann", home=home)
    before = refusals("bob")
    out = import_dataset_info(json.dumps({"stolen": {"file_name": "ann-secret.jsonl"}}), home, owner="bob")
    assert out["imported"] == [] and open_store(home).get("dataset", "stolen") is None
    (why,) = out["skipped"]
    assert isinstance(why, users.Refused) and "another student's private dataset" in str(why)
    assert why.text("zh") != str(why) and "另一位学生" in why.text("zh")
    assert refusals("bob") == before + 1
    # her own, a sample and the instructor's resolve through the registry as before
    datasets.save_upload("teach-set.jsonl", io.BytesIO(ROW * 3), owner="teach", home=home)
    out = import_dataset_info(json.dumps({"mine": {"file_name": "ann-secret.jsonl"},
                                          "class": {"file_name": "teach-set.jsonl"}}), home, owner="ann")
    assert {i["name"] for i in out["imported"]} == {"mine", "class"}


def test_import_cannot_take_a_folder_another_entry_or_a_job_holds_and_delete_keeps_imported_files(home, klass,
                                                                                                     tiny_model):
    class_model = copy_model(tiny_model, home / "models" / "class-llm")
    models.register("class-llm", class_model, "huggingface", owner="teach", home=home)
    with pytest.raises(users.Refused, match="already held by model class-llm"):
        models.import_folder("models/class-llm", "x", owner="bob", home=home)
    merged = copy_model(tiny_model, home / "jobs" / "7" / "merged")            # another student's server copy
    with pytest.raises(users.Refused, match="already held by job folder"):
        models.import_folder("jobs/7/merged", "y", owner="bob", home=home)
    assert models.get("x", home) is None and models.get("y", home) is None
    # an import made before the rule (a row naming the class model's folder): deleting it keeps the files
    open_store(home).put("model", "old-import", str(class_model), {"source": "local"}, owner="bob")
    assert models.delete("old-import", home=home, by="bob")["files_removed"] is False
    assert (class_model / "config.json").is_file() and (merged / "config.json").is_file()
    # what a job made under models/ goes with its entry
    assert models.delete("class-llm", home=home, by="teach")["files_removed"] is True and not class_model.exists()


def test_registering_the_same_name_and_path_never_rewrites_the_owner(home, klass, tiny_model):
    folder = copy_model(tiny_model, home / "models" / "anns")
    models.import_folder("models/anns", "anns", owner="ann", home=home)
    with pytest.raises(users.Refused):
        models.import_folder("models/anns", "anns", owner="bob", home=home)
    assert models.get("anns", home).owner == "ann"
    models.import_folder("models/anns", "anns", owner="ann", home=home)            # her own again: fine
    with pytest.raises(users.Refused, match="belongs to ann"):
        models.register("anns", folder, "merge", owner="bob", home=home)
    assert models.get("anns", home).owner == "ann"


# -- the store: migration and the owner rule ----------------------------------------------------------------------
def test_migration_gives_every_row_an_owner(tmp_path):
    from backend.core.store import MIGRATIONS, Store
    path = tmp_path / "workbench.db"
    con = sqlite3.connect(path)
    for script in MIGRATIONS[:3]:
        con.executescript(script)
    con.execute("PRAGMA user_version=3")
    con.execute("INSERT INTO jobs(id, kind, owner, state, spec, asked, created_at) VALUES (5, 'finetune', 'ann',"
                " 'succeeded', '{}', '{}', 0)")
    rows = [("adapter", "a", 5, "{}"), ("model", "orphan", 99, "{}"), ("model", "SmolLM2", 5, '{"source": "bundled"}'),
            ("dataset", "mini", None, '{"source": "sample"}'), ("model", "old", None, "{}")]
    for t, n, j, meta in rows:
        con.execute("INSERT INTO registry(type, name, meta, job_id, owner, created_at) VALUES (?,?,?,?,'',0)",
                    (t, n, meta, j))
    con.commit()
    con.close()
    store = Store(path)
    got = {e.name: (e.owner, e.shared) for t in ("adapter", "model", "dataset") for e in store.items(t)}
    assert got == {"a": ("ann", False), "orphan": (users.OPERATOR_NAME, True), "SmolLM2": (users.OPERATOR_NAME, True),
                   "mini": (users.OPERATOR_NAME, True), "old": (users.OPERATOR_NAME, True)}
    with pytest.raises(ValueError, match="owner"):
        store.put("model", "nobody", "/x", owner="")


REGISTRY_CALLS = ("put", "register")
RECEIVERS = ("store", "models", "datasets", "ds", "ownership")


def test_every_registry_write_names_a_non_empty_owner():
    """AST: each ``.put(``/``.register(`` on the store, models, datasets or ownership in backend/ and jobs/ passes
    ``owner=`` and not an empty string; ``job.register`` writes the job's own owner (jobs/common.py)."""
    found, bad = 0, []
    for f in sorted([*(ROOT / "backend").rglob("*.py"), *(ROOT / "jobs").rglob("*.py")]):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in REGISTRY_CALLS):
                continue
            receiver = ast.unparse(node.func.value)
            if receiver in ("job", "self.job") or not any(r in receiver for r in RECEIVERS):
                continue
            found += 1
            owner = next((k.value for k in node.keywords if k.arg == "owner"), None)
            if owner is None or (isinstance(owner, ast.Constant) and not owner.value):
                bad.append(f"{f.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)[:80]}")
    assert found >= 10 and bad == [], bad



CONTEXT = {"home", "workspace", "by", "who", "actor"}        # the workspace and the acting user


def test_no_backend_function_defaults_the_workspace_or_the_actor():
    """AST: no function in backend/ gives the workspace (``home``) or the acting user (``by``/``who``/``actor``) a
    default, nor falls back to the environment's workspace with ``home or defaults.home()``: a caller that forgets
    either gets a TypeError, never the environment's workspace or the operator's rights. The CLI, the worker, the
    launcher and pages (``ui.home()``/``ui.user()``) build their context once, explicitly."""
    checked, bad = 0, []
    for f in sorted((ROOT / "backend").rglob("*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and "defaults.home()" in ast.unparse(node):
                bad.append(f"{f.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            positional = a.posonlyargs + a.args
            defaults_ = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
            for arg, default in [*zip(positional, defaults_), *zip(a.kwonlyargs, a.kw_defaults)]:
                if arg.arg in CONTEXT:
                    checked += 1
                    if default is not None:
                        bad.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name}({arg.arg}={ast.unparse(default)})")
    assert checked >= 300 and bad == [], bad
# -- the use rule on every type and action -----------------------------------------------------------------------
@pytest.fixture
def things(home, klass, tiny_model):
    """For each registry type: ann's private item, ann's shared item and the instructor's."""
    from backend.access import ownership
    store = open_store(home)
    made = {}
    for owner, tag in (("ann", "private"), ("ann", "shared"), ("teach", "class")):
        name = f"{owner}-{tag}"
        m = copy_model(tiny_model, home / "models" / name)
        models.register(name, m, "download", owner=owner, home=home)
        store.put("adapter", name, str(home / "adapters" / name), {"base_model": name}, owner=owner)
        datasets.save_upload(f"{name}.jsonl", io.BytesIO(ROW * 3), owner=owner, home=home)
        job = queue.submit("sleepy", {"steps": 1}, owner=owner, home=home)
        assert store.claim(job, "w", {})
        store.transition(job, "running")
        store.put("endpoint", name, str(m), {"url": f"http://127.0.0.1:9/{name}/v1", "model": name}, job_id=job,
                  owner=owner)
        store.put("eval", name, str(home / "jobs" / str(job)), {"models": [name], "table": []}, owner=owner)
        if tag == "shared":
            for t in ("model", "adapter", "dataset", "endpoint", "eval"):
                ownership.share(t, name, True, by="ann", home=home)
        made[tag] = name
    return made


USE = {"model": ("serve", "model"), "adapter": ("merge", "adapter"), "dataset": ("dataset_stats", "dataset"),
       "endpoint": ("agent", "endpoint")}


@pytest.mark.parametrize("type", ["dataset", "model", "adapter", "endpoint", "eval"])
def test_permission_matrix(home, things, type):
    from backend.access import ownership
    bob = users.acting("bob", home=home)

    def refused(action) -> users.Refused | None:
        before = refusals("bob")
        try:
            action()
        except users.Refused as e:
            assert refusals("bob") == before + 1, "a refusal is audited"
            assert e.text("en") == str(e) and e.text("zh") != e.text("en") and "{" not in e.text("zh")
            return e
        return None

    listed = {e.name for e in ownership.items(type, bob, home)}
    for tag, name in things.items():
        private = tag == "private"
        assert (name in listed) is not private, (tag, listed)
        assert bool(refused(lambda: ownership.get(type, name, bob, home))) is private, f"open {tag}"
        if type in USE:
            kind, key = USE[type]
            spec = {key: name, **({"prompt": "hi"} if kind == "agent" else {})}
            assert bool(refused(lambda: queue.submit(kind, spec, owner="bob", home=home))) is private, f"use {tag}"
        # deleting and sharing stay the owner's (or an instructor's), shared or not
        assert refused(lambda: ownership.delete(type, name, bob, home)), f"delete {tag}"
        assert refused(lambda: ownership.share(type, name, True, bob, home)), f"share {tag}"
    # the surfaces pages list from
    surfaces = {"model": lambda: models.names(home, by=bob),
                "dataset": lambda: [e.name for e in datasets.list_datasets(home, by=bob)],
                "adapter": lambda: [a.name for a in finetune.adapters(home, by=bob)],
                "endpoint": lambda: [e["name"] for e in chat.live_endpoints(home, by=bob)]}
    if type in surfaces:
        shown = set(surfaces[type]())
        assert things["private"] not in shown and {things["shared"], things["class"]} <= shown
    # the owner and the instructor keep every right
    assert ownership.share(type, things["private"], True, "teach", home).shared
    assert ownership.delete(type, things["private"], "ann", home)


def test_evaluate_by_path_of_a_private_adapter_is_refused(home, things):
    adapter = open_store(home).get("adapter", things["private"])
    Path(adapter.path).mkdir(parents=True)
    (Path(adapter.path) / "adapter_config.json").write_text("{}")
    model = open_store(home).get("model", things["class"])
    spec = {"models": [{"name": "x", "path": model.path, "peft_path": adapter.path}],
            "datasets": [{"name": "q", "path": str(ROOT / "assets" / "datasets" / "easy_qa.jsonl")}]}
    with pytest.raises(users.Refused, match="another student's"):
        queue.check_uses(*queue.validate("evaluate", spec), "bob", home)
    queue.check_uses(*queue.validate("evaluate", spec), "ann", home)


# -- the disk quota counts job folders ---------------------------------------------------------------------------
def test_disk_quota_counts_job_folders_and_is_checked_at_submit(home, klass, monkeypatch):
    monkeypatch.setenv("WORKBENCH_USER_DISK_QUOTA_GB", str(1 / 1024))           # 1 MiB
    job = queue.submit("sleepy", {"steps": 1}, owner="ann", home=home)
    ckpt = home / "jobs" / str(job) / "checkpoints" / "step-5"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"\0" * (2 << 20))
    monkeypatch.setattr(users, "_folder_bytes", {})                            # no size cached from before
    assert users.disk_used("ann", home) >= 2 << 20 and users.disk_used("bob", home) == 0
    with pytest.raises(users.Refused, match="disk quota"):
        queue.submit("sleepy", {"steps": 1}, owner="ann", home=home)
    queue.submit("sleepy", {"steps": 1}, owner="bob", home=home)


# -- what each job kind makes is its owner's (real worker) -------------------------------------------------------
@pytest.mark.slow
def test_every_row_a_students_jobs_make_is_theirs(home, klass, tiny_model, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "qa.jsonl").write_bytes(ROW * 40)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store = open_store(home)
    try:
        with Hub({"camp/tiny": tiny_model}) as hub:
            ids = [queue.submit("download", {"source": "huggingface", "repo_id": "camp/tiny", "name": "tiny"},
                                owner="ann", home=home),
                   queue.submit("dataset_import", {"source": "url", "id": f"http://127.0.0.1:{server.server_address[1]}/qa.jsonl"},
                                owner="ann", home=home)]
            out = run_burst(home, 300, HF_ENDPOINT=hub.url, WORKBENCH_URL_IMPORT_ALLOW_LOOPBACK=1)
        ids.append(queue.submit("finetune", {"base_model": "tiny", "datasets": ["qa"], "name": "ann-lora", "max_steps": 2,
                                             "max_length": 64, "batch_size": 2, "lora_r": 4},
                                owner="ann", home=home))
        out = run_burst(home, 300)
        ids.append(queue.submit("merge", {"adapter": "ann-lora"}, owner="ann", home=home))
        out = run_burst(home, 300)
    finally:
        server.shutdown()
        server.server_close()
    for j in ids:
        assert queue.get(j, home, by=users.OPERATOR).state == "succeeded", (j, out.stdout[-2000:], (home / "jobs" / str(j) / "run.log").read_text()[-2000:])
    made = [e for t in ("model", "adapter", "dataset", "eval") for e in store.items(t) if e.job_id in ids]
    assert {(e.type, e.name) for e in made} >= {("model", "tiny"), ("dataset", "qa"), ("adapter", "ann-lora"),
                                                 ("model", "ann-lora-merged")}
    assert {(e.owner, e.shared) for e in made} == {("ann", False)}
    assert "ann-lora" not in [a.name for a in finetune.adapters(home, by="bob")]
    # serve: its endpoint is ann's too
    proc = start_worker(home)
    try:
        job = queue.submit("serve", {"model": "tiny", "adapter": "ann-lora"}, owner="ann", home=home)
        ep = endpoint_of(home, job)
        eps = [e for e in store.items("endpoint") if e.job_id == job]
        assert eps and {(e.owner, e.shared) for e in eps} == {("ann", False)}, eps
        assert ep["name"] not in [e["name"] for e in chat.live_endpoints(home, by="bob")]
        queue.cancel(job, home, by="ann")
        wait_for(lambda: queue.get(job, home, by=users.OPERATOR).state == "cancelled", 60)
    finally:
        stop(proc)
