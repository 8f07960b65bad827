"""The same queue on each executor: local subprocesses, a real one-node Slurm cluster (slurmctld + slurmd
from Debian's packages) and a real Ray head, with the real worker. Same test bodies where the behaviour
is the same: a job that succeeds (its secret reaches it and nothing else), one that fails, a tiny real
fine-tune, a model server the app reaches on the node's address, where a job runs and the cluster's free GPUs,
a cancel in two stages, a node that dies under a job, and (Slurm, in the browser) a job page that follows a
cluster job's log and cancels it."""
from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest

from backend.access import users
from backend.pipeline import chat
from backend.runtime import executors, queue, server_host
from backend.core.store import open_store
from tests import clusters
from tests.conftest import endpoint_of, run_burst, shot, start_worker, stop, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session", params=["local", "slurm", "ray"])
def cluster(request, tmp_path_factory):
    """(executor name, the cluster object or None, the env a worker needs); one cluster per session."""
    name = request.param
    if name == "local":
        yield name, None, {"WORKBENCH_EXECUTOR": "local"}
        return
    try:
        c = (clusters.Slurm if name == "slurm" else clusters.Ray)(tmp_path_factory.mktemp(name))
    except clusters.Unavailable as e:
        pytest.skip(str(e))
    yield name, c, {"WORKBENCH_EXECUTOR": name, **c.env}
    c.stop()


@pytest.fixture
def on_slurm(cluster):
    """The browser test runs on the Slurm executor only (the page is the same on every executor)."""
    if cluster[0] != "slurm":
        pytest.skip("the page test runs on the slurm executor")
    return cluster


@pytest.fixture
def worker(home, cluster):
    """The app fixture's worker, on this module's executor."""
    proc = start_worker(home, **cluster[2])
    yield proc
    stop(proc)


@pytest.fixture
def app_env(cluster) -> dict:
    return cluster[2]


def state(home: Path, job_id: int):
    return queue.get(job_id, home, by=users.OPERATOR)


def test_jobs_succeed_and_fail_the_same_way(cluster, home):
    name, _, env = cluster
    ok = queue.submit("sleepy", {"steps": 3, "interval_s": 0.05, "dump_env": True},
                      secrets={"HF_TOKEN": "hf_s3cret"}, home=home, owner="local")
    bad = queue.submit("sleepy", {"steps": 1, "fail": True}, home=home, owner="local")
    out = run_burst(home, timeout=180, **env)
    job = state(home, ok)
    assert job.state == "succeeded", f"{job.error_message}\n{out.stdout}\n{out.stderr}"
    d = home / "jobs" / str(ok)
    assert "step 3 of 3" in (d / "run.log").read_text()
    assert json.loads((d / "result.json").read_text())["ok"]
    job_env = json.loads((d / "artifacts" / "env.json").read_text())
    assert job_env["HF_TOKEN"] == "hf_s3cret" and job_env["WORKBENCH_JOB_ID"] == str(ok)
    assert not (d / "launch.json").exists() and not (d / "secrets.json").exists()
    failed = state(home, bad)
    assert (failed.state, failed.error_class, failed.error_message) == ("failed", "bad_input", "asked to fail")
    if name != "local":
        ident = json.loads((d / "process.json").read_text())
        assert ident["executor"] == name and ident["id"]
        assert "hf_s3cret" not in "".join(p.read_text(errors="replace") for p in d.iterdir() if p.is_file())
    if name == "slurm":
        script = (d / "job.sbatch").read_text()
        assert "#SBATCH --output=" in script and "launch.py" in script


def test_a_tiny_finetune_registers_its_adapter(cluster, home, tiny_model):
    """The real finetune kind on the tiny model, a few steps: the adapter it registers is in the shared workspace."""
    _, _, env = cluster
    open_store(home).put("model", "tiny", str(tiny_model), owner="local")
    (home / "datasets").mkdir()
    row = {"messages": [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A tiny model."}]}
    (home / "datasets" / "id.jsonl").write_text((json.dumps(row) + "\n") * 8)
    job_id = queue.submit("finetune", {"base_model": "tiny", "datasets": ["id.jsonl"], "name": "tiny-ex",
                                       "max_steps": 2, "max_length": 64, "batch_size": 2, "grad_accum": 1, "save_steps": 100,
                                       "gradient_checkpointing": False}, home=home, owner="local")
    out = run_burst(home, timeout=300, **env)
    job = state(home, job_id)
    assert job.state == "succeeded", f"{job.error_message}\n{_log(home, job_id)[-3000:]}\n{out.stdout}"
    adapter = open_store(home).get("adapter", "tiny-ex")
    assert adapter.meta["job"] == job_id and (Path(adapter.path) / "adapter_model.safetensors").exists()


def test_a_server_on_a_node_registers_an_address_the_app_reaches(cluster, home, tiny_model):
    """serve binds the node's address on a cluster (loopback locally) and registers it; Chat answers through it,
    only with the endpoint's key; the cancel removes the endpoint."""
    name, _, env = cluster
    open_store(home).put("model", "tiny", str(tiny_model), owner="local")
    job_id = queue.submit("serve", {"model": "tiny", "name": "tiny-ep"}, home=home, owner="local")
    worker = start_worker(home, **env)
    try:
        ep = endpoint_of(home, job_id, 180)
        host = urlparse(ep["url"]).hostname
        assert host == ("127.0.0.1" if name == "local" else server_host.node_address()), ep["url"]
        text = "".join(chat.stream_chat(ep, chat.build_messages([], "Hi"), temperature=0.0, max_tokens=4, by=users.OPERATOR, home=home))
        assert text
        with pytest.raises(chat.ChatError):
            list(chat.stream_chat({**ep, "api_key": "wrong"}, chat.build_messages([], "Hi"), max_tokens=4, by=users.OPERATOR, home=home))
        queue.cancel(job_id, home=home, by=users.OPERATOR)
        wait_for(lambda: state(home, job_id).finished, 60, what="the server job to end")
        assert state(home, job_id).state == "cancelled" and not open_store(home).items("endpoint")
    finally:
        stop(worker)


def test_where_a_job_runs_and_the_clusters_free_gpus(cluster, home, monkeypatch):
    """The job's row names its host (local) or its cluster job and node; the cluster's free GPUs drop while a
    job holds one, and the job sees the GPU the scheduler gave it."""
    name, c, env = cluster
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(executors, "GPUS_TTL_S", 0.0)
    gpus = 0 if name == "local" else clusters.GPUS
    if gpus:
        wait_for(lambda: executors.cluster_gpus() == {"executor": name, "free": gpus, "total": gpus}, 30,
                 what="the cluster's GPUs")
    else:
        assert executors.cluster_gpus() is None
    job_id = queue.submit("sleepy", {"steps": 3000, "interval_s": 0.1, "gpus": min(gpus, 1), "dump_env": True},
                          home=home, owner="local")
    worker = start_worker(home, **env)
    try:
        wait_for(lambda: "step 2 of" in _log(home, job_id) and state(home, job_id).state == "running", 90,
                 what="the job to run")
        given = state(home, job_id).given
        if gpus:
            ident = json.loads((home / "jobs" / str(job_id) / "process.json").read_text())
            node = c.node if name == "slurm" else server_host.node_address()
            assert (given["executor"], given["id"], given["node"]) == (name, ident["id"], node)
            assert given["weight"] == 1           # a whole GPU: an hour of it is a GPU-hour of the student's quota
            wait_for(lambda: executors.cluster_gpus()["free"] == gpus - 1, 30, what="a GPU to be taken")
            job_env = json.loads((home / "jobs" / str(job_id) / "artifacts" / "env.json").read_text())
            assert job_env.get("CUDA_VISIBLE_DEVICES"), "the job does not see the GPU its scheduler gave it"
        else:
            assert given["host"] == socket.gethostname()
        queue.cancel(job_id, home=home, by=users.OPERATOR)
        wait_for(lambda: state(home, job_id).finished, 60, what="the job to end")
    finally:
        stop(worker)


def test_cancel_in_two_stages(cluster, home):
    """Cancel reaches a job that stops on SIGTERM and one that ignores it (stopped after the grace)."""
    _, _, env = cluster
    polite = queue.submit("sleepy", {"steps": 3000, "interval_s": 0.1}, home=home, owner="local")
    stubborn = queue.submit("sleepy", {"steps": 3000, "interval_s": 0.1, "ignore_sigterm": True}, home=home, owner="local")
    worker = start_worker(home, **env)
    try:
        for j in (polite, stubborn):
            wait_for(lambda j=j: "step 2 of" in _log(home, j), 90, what=f"job {j} to run")
            wait_for(lambda j=j: state(home, j).state == "running", 30, what=f"the worker to see job {j} running")
            queue.cancel(j, home=home, by=users.OPERATOR)
        for j in (polite, stubborn):
            wait_for(lambda j=j: state(home, j).finished, 60, what=f"job {j} to end")
            job = state(home, j)
            assert (job.state, job.error_class) == ("cancelled", "cancelled"), job.error_message
        steps = _log(home, stubborn).count("step ")
        wait_for(lambda: True, 0.1)
        assert _log(home, stubborn).count("step ") <= steps + 5, "the stubborn job still runs after its cancel"
    finally:
        stop(worker)


def test_a_dead_node_loses_its_job(cluster, home):
    name, c, env = cluster
    if name == "local":
        pytest.skip("no node to kill: a dead local worker is test_worker's lost/adopt tests")
    job_id = queue.submit("sleepy", {"steps": 3000, "interval_s": 0.1}, home=home, owner="local")
    worker = start_worker(home, **env)
    try:
        wait_for(lambda: "step 2 of" in _log(home, job_id), 90, what="the job to run")
        if name == "slurm":
            c.kill_slurmd()
        else:
            os.kill(_pid_of("JobSupervisor"), signal.SIGKILL)
        wait_for(lambda: state(home, job_id).finished, 120, 0.5, "the job to end")
        job = state(home, job_id)
        assert (job.state, job.error_class) == ("lost", "lost"), job.error_message
        assert ("NODE_FAIL" if name == "slurm" else "FAILED") in job.error_message
    finally:
        stop(worker)
        if name == "slurm":
            c.start_slurmd()         # the node comes back (ReturnToService=2) and ends the orphaned step


def _log(home: Path, job_id: int) -> str:
    try:
        return (home / "jobs" / str(job_id) / "run.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _pid_of(title: str) -> int:
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if title in (proc / "cmdline").read_bytes().decode(errors="replace"):
                return int(proc.name)
        except OSError:
            continue
    raise AssertionError(f"no process named {title}")


@pytest.mark.browser
def test_the_job_page_follows_a_slurm_job_and_cancels_it(on_slurm, page, home):
    """The job's page names its Slurm job and node, shows new log lines while it runs, and its Cancel ends it;
    Home shows the cluster's free GPUs."""
    job_id = queue.submit("sleepy", {"steps": 3000, "interval_s": 0.2}, home=home, owner="local")
    page.goto(f"{page.base_url}/jobs?job={job_id}")
    log = page.locator(f".st-key-joblog-{job_id}")
    log.get_by_text("step 3 of 3000").wait_for(timeout=90_000)
    given = state(home, job_id).given
    page.locator(f".st-key-jobstate-{job_id}").get_by_text(f"Slurm job {given['id']} on {given['node']}").wait_for()
    log.get_by_text("step 20 of 3000").wait_for()                 # new lines arrive while it runs
    shot(page, "cluster-job-slurm")
    page.locator(f".st-key-cancel-{job_id} button").click()
    page.locator("[data-state='cancelled']").wait_for(state="attached", timeout=60_000)
    assert state(home, job_id).state == "cancelled"
    page.goto(page.base_url)                                    # Home: the cluster's GPUs, beside the queue
    free = f"Slurm cluster: {clusters.GPUS} of {clusters.GPUS} GPU(s) free"
    page.locator(".st-key-hardware").get_by_text(free).wait_for()


def test_ray_jobs_api_needs_the_token_on_a_shared_box(cluster, home, tmp_path, tmp_path_factory):
    """On a shared box (accounts) the Ray executor refuses a cluster that runs jobs for anyone (the session's
    head, without token authentication) and one it has no token for; with Ray's token authentication on
    (RAY_AUTH_MODE=token) and the token in a file (RAY_AUTH_TOKEN_PATH), jobs run, and the cluster refuses
    a request without it."""
    import secrets
    from backend.runtime.executors import ray_jobs
    name, open_head, env = cluster
    if name != "ray":
        pytest.skip("Ray's token authentication")
    none = {"RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "no-token")}
    shared = {**env, **none, "WORKBENCH_AUTH": "accounts"}
    first = queue.submit("sleepy", {"steps": 1}, home=home, owner="local")
    run_burst(home, timeout=180, **shared)
    assert "runs jobs for anyone who reaches it" in state(home, first).error_message
    token = secrets.token_hex(32)                   # what `ray get-auth-token --generate` makes
    head = clusters.Ray(tmp_path_factory.mktemp("raytok"), token=token)
    daemon = None
    try:
        assert not ray_jobs.open_to_anyone(head.address)
        shared = {**shared, **head.env}
        second = queue.submit("sleepy", {"steps": 1}, home=home, owner="local")
        run_burst(home, timeout=180, **shared)
        assert "has no token for the cluster" in state(home, second).error_message
        (tmp_path / "token").write_text(token + "\n")
        daemon = start_worker(home, **{**shared, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")})
        third = queue.submit("sleepy", {"steps": 2, "interval_s": 0.05}, home=home, owner="local")
        wait_for(lambda: state(home, third).state in ("succeeded", "failed"), 180)
        assert state(home, third).state == "succeeded", state(home, third).error_message
        assert json.loads((home / "jobs" / str(third) / "process.json").read_text())["executor"] == "ray"
        (tmp_path / "token").unlink()               # the token taken away: the same worker's next job is refused
        fourth = queue.submit("sleepy", {"steps": 1}, home=home, owner="local")
        wait_for(lambda: state(home, fourth).state == "failed", 60)
        assert "has no token for the cluster" in state(home, fourth).error_message
    finally:
        if daemon:
            stop(daemon)
        head.stop()
