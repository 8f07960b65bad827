"""Jobs get only what they need: an allow-listed environment plus their own secrets, which are written
before the job can be claimed and gone however the job ends."""
import json
import sqlite3
import sys

from backend.access import users
from backend.core import defaults
from backend.runtime import queue
from tests.conftest import run_burst, wait_for

OPERATOR = {"OPENAI_API_KEY": "sk-operator-1", "HF_TOKEN": "hf_operator_2", "MODELSCOPE_API_TOKEN": "ms-op-3",
            "OPENXLAB_AK": "ak-op-4", "OPENXLAB_SK": "sk-op-5", "HUGGING_FACE_HUB_TOKEN": "hf_op_6",
            "WORKBENCH_SECRET_KEY": "wb-op-7", "AWS_SECRET_ACCESS_KEY": "aws-op-8"}


def dumped_env(job_id) -> dict:
    return json.loads((queue.job_dir(job_id, home=defaults.home()) / "artifacts" / "env.json").read_text())


def test_operator_secrets_never_reach_a_job_its_own_do(home, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/hub")       # a non-secret hub setting passes
    mine = queue.submit("sleepy", {"steps": 1, "interval_s": 0, "dump_env": True}, secrets={"HF_TOKEN": "hf_mine"}, home=home, owner="local")
    other = queue.submit("sleepy", {"steps": 1, "interval_s": 0, "dump_env": True}, home=home, owner="local")
    out = run_burst(home, **OPERATOR)
    assert out.returncode == 0, out.stdout + out.stderr
    env, env2 = dumped_env(mine), dumped_env(other)
    for value in OPERATOR.values():
        assert value not in json.dumps(env) and value not in json.dumps(env2), value
    assert env["HF_TOKEN"] == "hf_mine" and "HF_TOKEN" not in env2
    assert env["HF_ENDPOINT"] == "http://127.0.0.1:9/hub" and env["WORKBENCH_JOB_ID"] == str(mine)
    assert env["PATH"] and "WORKBENCH_EXTRA_KINDS" in env
    # the operator's stored hub logins are not read: token caches point into the job's own folder...
    assert env["HF_TOKEN_PATH"].startswith(str(queue.job_dir(mine, home=home)))
    # ...which is gone with the secrets once the job ends
    assert not list(queue.job_dir(mine, home=home).glob(".credentials")) and not (queue.job_dir(mine, home=home) / "secrets.json").exists()


def test_secrets_file_exists_before_the_job_is_visible_to_a_worker(home):
    """Checked at the moment the secrets file is opened: the job's row must not be committed yet."""
    db = home / "workbench.db"
    queue.submit("sleepy", {"steps": 1}, home=home, owner="local")            # creates the database
    seen = []

    def hook(event, args):
        if event == "open" and str(args[0]).endswith("secrets.json"):
            con = sqlite3.connect(db)
            seen.append(con.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
            con.close()
    sys.addaudithook(hook)
    queue.submit("sleepy", {"steps": 1}, secrets={"K": "v"}, home=home, owner="local")
    assert seen and seen[0] == 1, f"jobs visible while the secrets file was written: {seen}"


def test_secrets_removed_when_cancelled_while_queued(home):
    job = queue.submit("sleepy", {"steps": 1}, secrets={"HF_TOKEN": "hf_x"}, home=home, owner="local")
    assert (queue.job_dir(job, home=home) / "secrets.json").exists()
    queue.cancel(job, home=home, by=users.OPERATOR)
    assert queue.get(job, home=home, by=users.OPERATOR).state == "cancelled"
    assert not (queue.job_dir(job, home=home) / "secrets.json").exists()


def test_secrets_removed_when_the_job_is_never_placed(home):
    job = queue.submit("sleepy", {"steps": 1, "gpus": 64}, secrets={"HF_TOKEN": "hf_x"}, home=home, owner="local")
    run_burst(home)
    j = queue.get(job, home=home, by=users.OPERATOR)
    assert j.state == "failed" and "GPU" in j.error_message
    assert not (queue.job_dir(job, home=home) / "secrets.json").exists()


def test_a_corrupt_secrets_file_fails_that_job_not_the_worker(home, worker):
    bad = queue.submit("sleepy", {"steps": 1, "interval_s": 0}, secrets={"HF_TOKEN": "hf_x"}, home=home, owner="local")
    (queue.job_dir(bad, home=home) / "secrets.json").write_text("{not json")
    good = queue.submit("sleepy", {"steps": 1, "interval_s": 0}, home=home, owner="local")
    wait_for(lambda: queue.get(good, home=home, by=users.OPERATOR).state == "succeeded", 30, what="the next job to run")
    j = queue.get(bad, home=home, by=users.OPERATOR)
    assert j.state == "failed" and "secrets file" in j.error_message, j
    assert worker.poll() is None and not (queue.job_dir(bad, home=home) / "secrets.json").exists()
