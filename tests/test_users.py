"""Class mode: accounts through the real CLI, argon2 hashes, login throttling, sessions, and who may do what
through the backend calls the pages make (real store, no mocks)."""
import io
import re
import stat
import subprocess
import sys
import time

import pytest

from backend.access import users
from backend.core import defaults
from backend.pipeline import chat, classroom
from backend.runtime import placement, queue
from backend.workspace import datasets, models
from backend.core.paths import human_size
from backend.core.store import open_store
from tests.conftest import ROOT, cli, env_for, wait_for
from tests.fixtures.fake_openai import KEY, FakeOpenAI


@pytest.fixture
def klass(home, monkeypatch):
    """Class mode with two students and an instructor created through the CLI; yields {name: password}."""
    monkeypatch.setenv("WORKBENCH_AUTH", "accounts")
    (home / "roster.csv").write_text("name,role\nann,student\nbob,student\n", encoding="utf-8")
    out = cli(home, "users", "import", str(home / "roster.csv"))
    assert out.returncode == 0, out.stderr
    passwords = dict(line.split("\t") for line in out.stdout.splitlines()[1:])
    out = cli(home, "users", "add", "teach", "--role", "instructor")
    assert out.returncode == 0, out.stderr
    passwords.update([out.stdout.strip().split("\t")])
    return passwords


def test_cli_creates_resets_disables_and_changes_roles(home, klass):
    assert set(klass) == {"ann", "bob", "teach"} and all(len(p) >= 12 for p in klass.values())
    row = open_store(home).user("ann")
    assert row["password_hash"].startswith("$argon2id$") and klass["ann"] not in row["password_hash"]
    assert row["must_change"] == 1 and row["role"] == "student"
    out = cli(home, "users", "add", "ann")
    assert out.returncode == 2 and "already exists" in out.stderr and "Traceback" not in out.stderr
    out = cli(home, "users", "import", str(home / "roster.csv"))          # again: nobody new
    assert out.returncode == 0 and out.stdout.splitlines() == ["name\tone-time password"]
    out = cli(home, "users", "reset", "nobody")
    assert out.returncode == 2 and "no account 'nobody'" in out.stderr

    me, token = users.login("ann", klass["ann"], "10.0.0.1", home=home)
    assert me == users.User("ann", "student", "", True) and users.session_user(token, home=home).name == "ann"
    out = cli(home, "users", "reset", "ann")
    new = out.stdout.strip().split("\t")[1]
    assert users.session_user(token, home=home) is None                              # a reset logs out everywhere
    with pytest.raises(users.Refused):
        users.login("ann", klass["ann"], "10.0.0.1", home=home)
    token = users.login("ann", new, "10.0.0.1", home=home)[1]
    assert cli(home, "users", "disable", "ann").returncode == 0
    assert users.session_user(token, home=home) is None
    with pytest.raises(users.Refused, match="wrong name or password"):
        users.login("ann", new, "10.0.0.1", home=home)

    assert cli(home, "users", "role", "bob", "instructor").returncode == 0
    assert users.login("bob", klass["bob"], "10.0.0.2", home=home)[0].instructor
    out = cli(home, "users", "role", "bob", "admin")
    assert out.returncode == 2 and "invalid choice" in out.stderr
    listing = cli(home, "users", "list").stdout
    assert "ann" in listing and "disabled" in listing
    audit = cli(home, "users", "audit").stdout
    for action in ("user_add", "user_reset", "user_disable", "user_role", "login", "login_failed"):
        assert f" {action} " in audit, action


def test_first_login_forces_a_new_password(home, klass):
    me, here = users.login("bob", klass["bob"], home=home)
    _, elsewhere = users.login("bob", klass["bob"], home=home)                 # another browser, logged in too
    assert me.must_change
    with pytest.raises(users.Refused, match="at least 8"):
        users.change_password(me, klass["bob"], "short", home=home)
    with pytest.raises(users.Refused, match="current password is wrong"):
        users.change_password(me, "guess", "a-long-new-one", home=home)
    assert users.session_user(elsewhere, home=home).name == "bob"
    assert not users.change_password(me, klass["bob"], "a-long-new-one", keep=here, home=home).must_change
    assert users.session_user(here, home=home).name == "bob" and users.session_user(elsewhere, home=home) is None   # only this one goes on
    assert not users.login("bob", "a-long-new-one", home=home)[0].must_change
    users.set_lang(me, "zh", home=home)                                   # the language goes with the account
    assert users.login("bob", "a-long-new-one", home=home)[0].lang == "zh"


def test_failed_logins_are_throttled_per_account_and_per_address(home, klass, monkeypatch):
    monkeypatch.setenv("WORKBENCH_LOGIN_MAX_FAILS", "3")
    for _ in range(3):
        with pytest.raises(users.Refused, match="wrong name or password"):
            users.login("ann", "guess", "10.0.0.9", home=home)
    assert users.login("ann", klass["ann"], "10.0.0.8", home=home)         # from elsewhere the account is not locked
    with pytest.raises(users.Throttled, match="wait 2 seconds"):  # from there each next try waits, even the right one
        users.login("ann", klass["ann"], "10.0.0.9", home=home)
    assert users.login("bob", klass["bob"], "10.0.0.9", home=home)         # another account from that address is fine
    for i in range(3 * users.ADDRESS_FAILS_FACTOR - 3):          # one address guessing many accounts
        with pytest.raises(users.Refused):
            users.login(f"x{i}", "guess", "10.0.0.9", home=home)
    with pytest.raises(users.Throttled, match="minutes"):
        users.login("teach", klass["teach"], "10.0.0.9", home=home)
    assert users.login("teach", klass["teach"], "10.0.0.7", home=home)
    for i in range(3 * users.ADDRESS_FAILS_FACTOR):              # a class behind SSH tunnels shares 127.0.0.1
        with pytest.raises(users.Refused):
            users.login(f"y{i}", "guess", "127.0.0.1", home=home)
    assert users.login("teach", klass["teach"], "127.0.0.1", home=home)
    monkeypatch.setenv("WORKBENCH_LOGIN_WINDOW_S", "0.001")    # the window passed
    assert users.login("ann", klass["ann"], "10.0.0.9", home=home)
    assert open_store(home).count_audit("login_throttled", 0) == 2


def test_a_student_guessing_the_instructors_password_only_slows_their_own_tries(home, klass, monkeypatch):
    monkeypatch.setenv("WORKBENCH_LOGIN_MAX_FAILS", "2")
    assert [users.login_delay(n) for n in range(6)] == [0, 0, 2, 4, 8, 16]
    for _ in range(2):                                           # a student, through the tunnel (127.0.0.1)
        with pytest.raises(users.Refused, match="wrong name or password"):
            users.login("teach", "guess", "127.0.0.1", home=home)
    assert users.login("teach", klass["teach"], "10.0.0.7", home=home)      # the instructor from their own address
    with pytest.raises(users.Throttled, match="wait 2 seconds"):   # through the tunnel: a short wait, then in
        users.login("teach", klass["teach"], "127.0.0.1", home=home)
    assert wait_for(lambda: _login_or_none("teach", klass["teach"], "127.0.0.1"), 15, 0.5, "the delay to pass")
    started = time.monotonic()                                   # an unknown name costs a hash like a known one
    with pytest.raises(users.Refused):
        users.login("nobody-here", "guess", "10.0.0.5", home=home)
    assert time.monotonic() - started > 0.01


def _login_or_none(name: str, password: str, address: str):
    try:
        return users.login(name, password, address, home=defaults.home())
    except users.Throttled:
        return None


def test_sessions_are_signed_expire_and_end_at_logout(home, klass, monkeypatch):
    token = users.login("ann", klass["ann"], home=home)[1]
    key = home / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    assert users.session_user(token, home=home).name == "ann"
    assert users.session_user(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1], home=home) is None
    assert users.session_user(None, home=home) is None and users.session_user("junk", home=home) is None
    survives = subprocess.run([sys.executable, "-c", "import sys; from backend.access import users; "
                               "from backend.core import defaults; print(users.session_user(sys.argv[1], defaults.home()).name)", token],
                              cwd=ROOT, env=env_for(home), capture_output=True, text=True)
    assert survives.stdout.strip() == "ann", survives.stderr        # another process (an app restart)
    users.logout(token, home=home)
    assert users.session_user(token, home=home) is None
    assert open_store(home).count_audit("logout", 0, target="ann") == 1
    monkeypatch.setenv("WORKBENCH_SESSION_HOURS", str(0.5 / 3600))   # half a second
    token = users.login("ann", klass["ann"], home=home)[1]
    wait_for(lambda: users.session_user(token, home=home) is None, 10, 0.1, "the session to expire")


def test_students_are_isolated_and_instructors_are_not(home, klass):
    ann, bob, teach = (users.login(n, klass[n], home=home)[0] for n in ("ann", "bob", "teach"))
    job = queue.submit("sleepy", {"steps": 1}, owner="ann", home=home)
    done = queue.submit("sleepy", {"steps": 1}, owner="ann", home=home)
    queue.cancel(done, by=ann, home=home)
    assert [j.id for j in queue.list_jobs(by=bob, home=home)] == []
    assert {j.id for j in queue.list_jobs(by=ann, home=home)} == {job, done} == {j.id for j in queue.list_jobs(by=teach, home=home)}
    for call in (lambda: queue.get(job, by=bob, home=home), lambda: queue.cancel(job, by=bob, home=home),
                 lambda: queue.retry(done, by=bob, home=home), lambda: queue.run_next(job, by=bob, home=home),
                 lambda: queue.run_next(job, by=ann, home=home)):
        with pytest.raises(users.Refused):
            call()
    with pytest.raises(queue.SubmitError):          # what pages catch
        queue.cancel(job, by="bob", home=home)                 # a typed name is no better than the account
    assert queue.get(job, home=home, by=users.OPERATOR).state == "queued"
    queue.run_next(job, by=teach, home=home)
    assert queue.retry(done, owner="ann", by=ann, home=home)
    assert queue.cancel(job, by=teach, home=home).state == "cancelled"

    ds = datasets.save_upload("ann.jsonl", io.BytesIO(b'{"text": "hi"}\n'), owner="ann", home=home).name
    (home / "m").mkdir()
    open_store(home).put(models.TYPE, "shared", home / "m", owner=users.OPERATOR_NAME, shared=True)  # a class model
    with pytest.raises(users.Refused, match="not yours"):
        datasets.delete(ds, by=bob, home=home)
    with pytest.raises(users.Refused, match="only an instructor can let a model run its own code"):
        models.set_trust_remote_code("shared", True, by=ann, home=home)
    with pytest.raises(users.Refused, match="not yours"):
        models.delete("shared", by=ann, home=home)
    assert models.set_trust_remote_code("shared", True, by=teach, home=home).meta["trust_remote_code"]
    datasets.delete(ds, by=ann, home=home)
    models.delete("shared", by=teach, home=home)

    rows = users.audit_log(home=home)
    refused = [r for r in rows if r["action"] == "refused"]
    assert {r["actor"] for r in refused} == {"ann", "bob"} and len(refused) == 9
    assert any(r["target"] == f"job {job}" and r["detail"].startswith("stop:") for r in refused)
    assert {("teach", "cancel"), ("ann", "submit"), ("ann", "delete"), ("teach", "trust_remote_code")} \
        <= {(r["actor"], r["action"]) for r in rows}


def test_without_accounts_names_are_declared_as_before(home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_INSTRUCTORS", "teacher")
    job = queue.submit("sleepy", {"steps": 1}, owner="ann", home=home)
    assert queue.get(job, by="bob", home=home).owner == "ann" and len(queue.list_jobs(by="bob", home=home)) == 1  # all see all
    with pytest.raises(queue.SubmitError):
        queue.cancel(job, by="bob", home=home)
    open_store(home).put(models.TYPE, "mine", home / "m", owner="local")
    models.set_trust_remote_code("mine", True, by="bob", home=home)            # one person's box: as before
    monkeypatch.setenv("WORKBENCH_AUTH", "sometimes")
    with pytest.raises(ValueError, match="WORKBENCH_AUTH must be one of none, accounts, header"):
        users.mode()


def test_queued_jobs_quota_is_refused_at_submit_with_current_usage(home, klass, monkeypatch):
    monkeypatch.setenv("WORKBENCH_USER_MAX_QUEUED", "2")
    for _ in range(2):
        queue.submit("sleepy", {"steps": 1}, owner="ann", home=home)
    with pytest.raises(queue.SubmitError, match=r"you already have 2 jobs waiting in the queue \(at most 2\)"):
        queue.submit("sleepy", {"steps": 1}, owner="ann", home=home)
    assert queue.submit("sleepy", {"steps": 1}, owner="bob", home=home)
    open_store(home).update_user("ann", max_queued=3)               # a per-user override
    assert queue.submit("sleepy", {"steps": 1}, owner="ann", home=home)
    out = cli(home, "submit", "sleepy", "-", "--owner", "ann")
    assert out.returncode == 2 and "at most 3" in out.stderr


def test_a_trusted_proxy_names_the_user_and_nobody_else_can(home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_AUTH", "header")
    monkeypatch.setenv("WORKBENCH_TRUSTED_PROXIES", "10.0.0.1")
    # no shared secret configured: no header is believed, from anywhere
    assert users.header_user({"X-Forwarded-User": "ann", "X-Workbench-Proxy-Secret": ""}, "10.0.0.1", home=home) is None
    secret = "s3cret-only-the-proxy-knows"
    monkeypatch.setenv("WORKBENCH_AUTH_PROXY_SECRET", secret)
    proxy = {"X-Workbench-Proxy-Secret": secret}
    assert users.header_user({"x-forwarded-user": "ann", **proxy}, "10.0.0.1", home=home) == users.User("ann", "student")
    assert users.header_user({"x-forwarded-user": "ann", "x-workbench-proxy-secret": secret}, "10.0.0.1", home=home).name == "ann"
    # a student who reaches the app's port (an SSH tunnel arrives from a trusted address) has no secret
    assert users.header_user({"X-Forwarded-User": "teach"}, "10.0.0.1", home=home) is None
    assert users.header_user({"X-Forwarded-User": "teach", "X-Workbench-Proxy-Secret": secret[:-1]}, "10.0.0.1", home=home) is None
    # X-Forwarded-For is not believed: the address is the connection's
    assert users.header_user({"X-Forwarded-User": "teach", "X-Forwarded-For": "10.0.0.1", **proxy}, "10.0.0.66", home=home) is None
    assert users.header_user({"X-Forwarded-User": "bad name!", **proxy}, "10.0.0.1", home=home) is None
    assert cli(home, "users", "role", "ann", "instructor").returncode == 0
    assert users.header_user({"X-Forwarded-User": "ann", **proxy}, "10.0.0.1", home=home).instructor


def test_fair_share_puts_whoever_ran_less_lately_first(home, klass):
    store = open_store(home)
    ran = queue.submit("sleepy", {"steps": 1}, owner="ann", home=home)
    assert store.claim(ran, "w", {})
    store.update_job(ran, started_at=time.time() - 600)          # ann's job ran for ten minutes
    store.transition(ran, "running")
    store.transition(ran, "succeeded")
    ann, bob = (queue.submit("sleepy", {"steps": 1}, owner=o, home=home) for o in ("ann", "bob"))
    assert queue.recent_usage(home)["ann"] == pytest.approx(600, abs=5)
    assert [queue.place_in_queue(j, home=home) for j in (bob, ann)] == [1, 2]    # bob is newer but ran nothing


def test_instructor_console_roster_progress_announcement_and_quotas(home, klass):
    ann, teach = users.acting("ann", home=home), users.acting("teach", home=home)
    store = open_store(home)
    done = queue.submit("sleepy", {"steps": 1}, owner="ann", home=home)          # a finished fine-tune counts as a step
    store.update_job(done, kind="finetune")
    assert store.claim(done, "w", {})
    store.transition(done, "running")
    store.transition(done, "succeeded")
    datasets.save_upload("mine.jsonl", io.BytesIO(b'{"text": "hi"}\n'), owner="ann", home=home)
    queue.submit("sleepy", {"steps": 1}, owner="bob", home=home)
    for call in (lambda by: classroom.roster(by, home), lambda by: classroom.progress(by, home), lambda by: classroom.set_announcement("hi", by=by, home=home)):
        with pytest.raises(users.Refused):
            call(ann)
    rows = {r["name"]: r for r in classroom.roster(teach, home=home)}
    assert rows["bob"]["queued"] == 1 and rows["ann"]["queued"] == 0 and rows["teach"]["role"] == "instructor"
    assert classroom.progress_csv(teach, home=home).splitlines() == [
        "name,dataset,finetune,evaluate,chat", "ann,yes,yes,no,no", "bob,no,no,no,no"]
    fake = FakeOpenAI()                                     # a chat answered by a server: the last step
    try:
        ep = {"name": "class-llm", "url": fake.url + "/v1", "model": "fake-model", "external": True}
        assert "".join(chat.stream_chat(ep, [{"role": "user", "content": "hi"}], api_key=KEY, by=ann, home=home))
    finally:
        fake.close()
    assert classroom.progress_csv(teach, home=home).splitlines()[1] == "ann,yes,yes,no,yes"
    classroom.set_announcement("  Lab 3 starts at 10:00  ", by=teach, home=home)
    assert classroom.announcement(home=home) == "Lab 3 starts at 10:00"
    classroom.set_announcement("", by=teach, home=home)
    assert classroom.announcement(home=home) == ""

    out = cli(home, "users", "quota", "bob", "--queued", "1", "--running", "2")
    assert out.stdout.strip() == "bob: running 2, queued 1, GPU-hours a day no cap (class default)", out.stderr
    with pytest.raises(queue.SubmitError, match=r"1 jobs waiting in the queue \(at most 1\)"):
        queue.submit("sleepy", {"steps": 1}, owner="bob", home=home)
    assert queue.running_caps(home) == {"bob": 2}
    out = cli(home, "users", "quota", "bob", "--queued", "-1")
    assert out.stdout.strip().startswith("bob: running 2, queued no cap (class default), ")


def running_server(home, owner: str, name: str, engine: str = "transformers") -> int:
    """A running job of ``owner`` with an endpoint registered the way jobs/serve.py registers its own
    (nothing listens at the URL: what is tested is who may reach it)."""
    from jobs.common import Job
    from jobs.serve import register
    store = open_store(home)
    job = queue.submit("sleepy", {"steps": 1}, owner=owner, home=home)
    assert store.claim(job, "w", {})
    store.transition(job, "running")
    url = f"http://127.0.0.1:9/{name}/v1"
    (home / "jobs" / str(job)).mkdir(parents=True)
    register(Job(home / "jobs" / str(job)),
             {name: (home, {"url": url, "model": name, "engine": engine, "device": "cpu", "job_id": job})})
    return job


def test_students_chat_with_their_own_and_the_instructors_servers_only(home, klass):
    from backend.pipeline import vlm
    ann, bob, teach = (users.acting(n, home=home) for n in ("ann", "bob", "teach"))
    for owner in ("ann", "bob", "teach"):
        running_server(home, owner, f"{owner}-llm")
        running_server(home, owner, f"{owner}-vlm", engine="vlm")
    names = lambda eps: {e["name"] for e in eps}                       # noqa: E731
    assert names(chat.endpoints(by=bob, home=home)) == {"bob-llm", "teach-llm"}
    assert names(vlm.endpoints(by=bob, home=home)) == {"bob-vlm", "teach-vlm"}
    assert names(chat.endpoints(by=teach, home=home)) == {"ann-llm", "bob-llm", "teach-llm"}
    every = {e["name"]: e for e in chat.live_endpoints(by=teach, home=home)}
    msgs = [{"role": "user", "content": "hi"}]
    for call in (lambda: list(chat.stream_chat(every["ann-llm"], msgs, by=bob, home=home)),
                 lambda: list(chat.stream_chat({**every["ann-llm"], "name": "mine", "external": True}, msgs,
                                               by=bob, home=home)),            # the same server as an "outside URL"
                 lambda: list(vlm.stream(every["ann-vlm"], msgs, by=bob, home=home))):
        with pytest.raises(users.Refused, match="the server ann-.* is another student's"):
            call()
    with pytest.raises(chat.ChatError):                                # what the Chat page catches
        list(chat.stream_chat(every["ann-llm"], msgs, by="bob", home=home))
    for who, ep in ((ann, "ann-llm"), (bob, "teach-llm"), (teach, "ann-llm")):   # allowed: it gets as far
        with pytest.raises(chat.ChatError, match="cannot reach") as e:                # as the (absent) server
            list(chat.stream_chat(every[ep], msgs, by=who, home=home))
        assert not isinstance(e.value, users.Refused)
    refused = [r for r in users.audit_log("refused", home=home) if r["target"].startswith("endpoint")]
    assert [r["actor"] for r in refused] == ["bob"] * 4
    from backend.pipeline import agent
    with pytest.raises(users.Refused, match="the server ann-llm is another student's"):
        agent.ask("hi", by=bob, endpoint="ann-llm", home=home)                    # nor through the Agent page
    assert not agent.runs(by=teach, home=home)


def test_evaluations_and_drafts_are_the_students_own_and_the_instructors(home, klass, tiny_model):
    from backend.pipeline import compose
    from backend.pipeline import evaluate as ev
    ann, bob, teach = (users.acting(n, home=home) for n in ("ann", "bob", "teach"))
    spec = {"models": [{"name": "tiny", "path": str(tiny_model)}],
            "datasets": [{"name": "q", "path": str(ROOT / "assets" / "datasets" / "easy_qa.jsonl")}]}
    runs = {o: ev.submit(spec, owner=o, install_engine_if_missing=True, home=home) for o in ("ann", "bob", "teach")}
    ids = lambda who: {r["job_id"] for r in ev.runs(by=who, home=home)}                  # noqa: E731
    assert ids(bob) == {runs["bob"], runs["teach"]} and ids(teach) == set(runs.values())
    with pytest.raises(users.Refused, match=f"evaluation {runs['ann']} is another student's"):
        ev.result(runs["ann"], by=bob, home=home)                                      # opened by its number
    assert ev.result(runs["ann"], by=ann, home=home) is None and ev.result(runs["teach"], by=bob, home=home) is None   # not done yet
    running_server(home, "ann", "ann-llm")
    url = next(e["url"] for e in chat.endpoints(by=teach, home=home))
    assert "ann-llm" not in {m["name"] for m in ev.model_choices(by=bob, home=home)}
    with pytest.raises(queue.SubmitError, match="the server ann-llm is another student's"):   # its key is ann's
        ev.submit({**spec, "models": [{"name": "x", "url": url, "api_model": "m"}]}, owner="bob", home=home)

    mine, hers, class_ = (compose.new_draft("Write about Hangzhou", [], owner=o) for o in ("bob", "ann", "teach"))
    for i, d in enumerate((mine, hers, class_)):
        d["id"] += f"-{i}"
        compose.save(d, by=d["owner"], home=home)
    assert {d["id"] for d in compose.drafts(by=bob, home=home)} == {mine["id"], class_["id"]}
    assert len(compose.drafts(by=teach, home=home)) == 3
    with pytest.raises(users.Refused, match=f"draft {hers['id']} is another student's"):
        compose.draft(hers["id"], by=bob, home=home)                                   # ?draft=<ann's id>
    with pytest.raises(users.Refused):
        compose.save(class_, by=bob, home=home)                                        # read, never changed
    assert compose.draft(class_["id"], by=bob, home=home)["owner"] == "teach" and compose.draft(hers["id"], by=teach, home=home)
    refused = {r["target"] for r in users.audit_log("refused", home=home)}
    assert {f"evaluation {runs['ann']}", "endpoint ann-llm", f"draft {hers['id']}", f"draft {class_['id']}"} <= refused


def test_students_see_and_train_on_their_own_the_samples_and_the_instructors_datasets(home, klass, tiny_model):
    from backend.pipeline import evaluate as ev
    ann, bob, teach = (users.acting(n, home=home) for n in ("ann", "bob", "teach"))
    row = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    for owner in ("ann", "bob", "teach"):
        datasets.save_upload(f"{owner}-set.jsonl", io.BytesIO(row), owner=owner, home=home)
    datasets.save_upload("ann-qa.jsonl", io.BytesIO(b'{"question": "2+2?", "answer": "4"}\n'), owner="ann", home=home)
    samples = {p.stem for p in (ROOT / "assets" / "datasets").iterdir() if p.suffix in datasets.EXTENSIONS}
    names = lambda who: {e.name for e in datasets.list_datasets(by=who, home=home)}          # noqa: E731
    assert names(bob) == samples | {"bob-set", "teach-set"}
    assert names(teach) == samples | {"ann-set", "ann-qa", "bob-set", "teach-set"}
    assert "ann-set" not in {d["name"] for d in ev.dataset_choices(by=bob, home=home)}
    open_store(home).put(models.TYPE, "tiny", tiny_model, owner=users.OPERATOR_NAME, shared=True)   # the class model
    spec = {"base_model": "tiny", "preset": "cpu_demo"}
    for ok in (["bob-set"], ["teach-set", "mini_instructions"]):
        assert queue.submit("finetune", {**spec, "datasets": ok}, owner="bob", home=home)
    with pytest.raises(queue.SubmitError, match="dataset ann-set is another student's"):
        queue.submit("finetune", {**spec, "datasets": ["bob-set", "ann-set"]}, owner="bob", home=home)
    assert queue.submit("finetune", {**spec, "datasets": ["ann-set"]}, owner="teach", home=home)
    ann_file = next(e.path for e in datasets.list_datasets(by=ann, home=home) if e.name == "ann-qa")
    with pytest.raises(users.Refused, match="dataset ann-qa is another student's"):    # by its file, too
        queue.submit("evaluate", {"models": [{"name": "tiny", "path": str(tiny_model)}],
                                  "datasets": [{"name": "mine", "path": ann_file}]}, owner="bob", home=home)
    assert sorted(r["target"] for r in users.audit_log("refused", home=home)) == ["dataset ann-qa", "dataset ann-set"]
    assert len(queue.list_jobs(by=bob, home=home)) == 2


def test_disk_quota_is_refused_at_upload_and_import_with_current_usage(home, klass, monkeypatch):
    monkeypatch.setenv("WORKBENCH_USER_DISK_QUOTA_GB", str(1 / 1024))          # 1 MB
    line = b'{"text": "' + b"x" * 1000 + b'"}\n'
    big = line * 600                                                           # ~590 KB
    datasets.save_upload("first.jsonl", io.BytesIO(big), owner="ann", home=home)
    assert users.disk_used("ann", home=home) == len(big) and users.disk_used("bob", home=home) == 0
    kb = re.escape(human_size(len(big)))
    for data in (big, io.BytesIO(big)):                                        # sized, and a stream
        with pytest.raises(users.Refused, match=f"already take {kb}; adding {kb} would pass your disk quota of 1.0 MB"
                           ) as e:
            datasets.save_upload("second.jsonl", data, owner="ann", home=home)
        assert isinstance(e.value, datasets.DatasetError)                       # what the Datasets page shows
    assert [e.name for e in datasets.list_datasets(by="ann", home=home) if e.meta["source"] == "upload"] == ["first"]
    assert not list(datasets.datasets_dir(home=home).glob("*second*"))                   # nothing left behind
    datasets.save_upload("second.jsonl", io.BytesIO(line * 100), owner="bob", home=home)    # bob's own quota
    datasets.save_upload("class.jsonl", io.BytesIO(big * 2), owner="teach", home=home)     # instructors' files are the class's
    datasets.save_upload("more.jsonl", io.BytesIO(line * 400), owner="ann", home=home)     # ~390 KB: still fits
    imp = {"source": "url", "id": "https://example.com/data.jsonl"}
    assert queue.submit("dataset_import", imp, owner="ann", home=home)                    # its size is known only once fetched
    monkeypatch.setenv("WORKBENCH_USER_DISK_QUOTA_GB", str(0.5 / 1024))        # the instructor lowers it: ann is over
    used = re.escape(human_size(users.disk_used("ann", home=home)))
    with pytest.raises(queue.SubmitError, match=f"take {used}, your whole disk quota of 512.0 KB"):
        queue.submit("dataset_import", imp, owner="ann", home=home)
    assert queue.submit("dataset_import", imp, owner="bob", home=home)
    datasets.delete("first", by=users.acting("ann", home=home), home=home)
    assert queue.submit("dataset_import", imp, owner="ann", home=home)
    assert len([r for r in users.audit_log("refused", home=home) if r["detail"].startswith("add files")]) == 3


def test_gpu_hours_per_day_are_weighted_by_memory_held_and_refused_at_submit(home, klass, monkeypatch, local_noon):
    """Real job rows placed by placement.place on a simulated 80 GB GPU (and CPU slots), with their times. The
    submits and the roster read the clock, so the test runs where it is noon (no job straddles midnight)."""
    monkeypatch.setenv("WORKBENCH_USER_GPU_HOURS_PER_DAY", "0.1")
    store, now, midnight = open_store(home), time.time(), local_noon
    gpu = [placement.GPU(0, "sim", 80.0, 0.0)]

    def ran(owner: str, asked: dict, start: float, end: float | None, gpus=gpu) -> None:
        job = queue.submit("sleepy", {"steps": 1}, owner=owner, home=home)
        assert store.claim(job, "w", placement.place(asked, gpus, [], 1))
        store.update_job(job, started_at=start)
        store.transition(job, "running")
        if end is not None:
            store.transition(job, "succeeded", finished_at=end)
    ran("ann", {"gpus": 1, "gpu_mem_gb": 20.0}, now - 720, now - 360)            # a quarter GPU, 6 min: 0.025
    ran("ann", {"gpus": 1}, now - 180, None)                                      # a whole GPU, still running: 0.05
    ran("ann", {"cpu_slots": 1}, now - 90, now, gpus=[])                          # one CPU slot, 1.5 min: 0.025
    ran("bob", {"gpus": 1}, midnight - 7200, midnight - 60)                      # yesterday's: not counted
    used = queue.gpu_hours_today(home)
    assert used["ann"] == pytest.approx(0.1, abs=0.002) and used.get("bob", 0.0) == 0.0
    with pytest.raises(queue.SubmitError, match=r"you have used 0\.10 of your 0\.1 GPU-hours for today") as e:
        queue.submit("sleepy", {"steps": 1}, owner="ann", home=home)
    assert "0,10" not in e.value.text("zh") and "GPU 时" in e.value.text("zh")
    assert queue.submit("dataset_import", {"source": "url", "id": "https://example.com/d.jsonl"}, owner="ann", home=home)
    assert queue.submit("sleepy", {"steps": 1}, owner="bob", home=home)
    ran("teach", {"gpus": 1}, now - 3600, now)                                     # instructors have no cap
    assert queue.submit("sleepy", {"steps": 1}, owner="teach", home=home)
    out = cli(home, "users", "quota", "ann", "--gpu-hours", "0.5")
    assert out.stdout.strip() == "ann: running no cap (class default), queued no cap (class default), " \
                                 "GPU-hours a day 0.5", out.stderr
    assert queue.submit("sleepy", {"steps": 1}, owner="ann", home=home)
    out = cli(home, "users", "quota", "ann", "--gpu-hours", "0.05")
    out = cli(home, "submit", "sleepy", "-", "--owner", "ann")
    assert out.returncode == 2 and "of your 0.05 GPU-hours" in out.stderr
    refused = [r for r in users.audit_log("refused", home=home) if r["actor"] == "ann"]
    assert len(refused) == 2 and all("submit:" in r["detail"] for r in refused)

    datasets.save_upload("ann.jsonl", io.BytesIO(b'{"text": "hi"}\n' * 10), owner="ann", home=home)
    rows = {r["name"]: r for r in classroom.roster(users.acting("teach", home=home), home=home)}
    assert rows["ann"]["gpu_hours_today"] == pytest.approx(0.1, abs=0.01) and rows["bob"]["gpu_hours_today"] == 0
    assert rows["teach"]["gpu_hours_today"] == pytest.approx(1.0, abs=0.01)
    assert rows["ann"]["disk_bytes"] == 150 and rows["bob"]["disk_bytes"] == 0


def test_gpu_hours_today_count_only_the_part_after_local_midnight(home, timezone):
    """A fixed clock: a job that ran from 23:30 to 00:30 counts half an hour on the new day; the hour before
    midnight is yesterday's whole."""
    timezone("CST-8")                                     # local time is UTC+8 (as in a Beijing classroom)
    midnight = time.mktime((2026, 3, 1, 0, 0, 0, 0, 0, -1))
    gpu = [placement.GPU(0, "sim", 80.0, 0.0)]
    store = open_store(home)
    for owner, start, end in [("ann", midnight - 1800, midnight + 1800), ("bob", midnight - 3600, midnight),
                              ("cy", midnight + 600, None)]:
        job = queue.submit("sleepy", {"steps": 1}, owner=owner, home=home)
        assert store.claim(job, "w", placement.place({"gpus": 1}, gpu, [], 1))
        store.update_job(job, started_at=start)
        store.transition(job, "running")
        if end is not None:
            store.transition(job, "succeeded", finished_at=end)
    assert queue.midnight(midnight + 1800) == midnight and queue.midnight(midnight - 1) == midnight - 86400
    used = queue.gpu_hours_today(home, now=midnight + 1800)
    assert used["ann"] == pytest.approx(0.5) and used.get("bob", 0.0) == 0.0 and used["cy"] == pytest.approx(1 / 3)
    before = queue.gpu_hours_today(home, now=midnight - 60)     # the evening before: ann's first 29 min, bob's 59
    assert before["ann"] == pytest.approx(29 / 60) and before["bob"] == pytest.approx(59 / 60) and "cy" not in before
    timezone("Europe/Berlin")                             # the day summer time starts has 23 hours
    noon = time.mktime((2026, 3, 29, 12, 0, 0, 0, 0, -1))
    assert noon - queue.midnight(noon) == 11 * 3600 and queue.midnight(noon) == time.mktime((2026, 3, 29, 0, 0, 0, 0, 0, -1))


def test_students_convert_and_split_their_own_the_samples_and_the_instructors_datasets_only(home, klass):
    row = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    path = {o: datasets.save_upload(f"{o}-set.jsonl", io.BytesIO(row * 4), owner=o, home=home).path for o in ("ann", "teach")}
    for call in (lambda: datasets.convert(path["ann"], "sharegpt", owner="bob", home=home),
                 lambda: datasets.split(path["ann"], 0.5, owner="bob", home=home)):
        with pytest.raises(datasets.DatasetError, match="dataset ann-set is another student's") as e:   # the page shows it
            call()
        assert isinstance(e.value, users.Refused)
    made = [datasets.convert(path["teach"], "sharegpt", owner="bob", home=home)["name"],
            datasets.split(ROOT / "assets" / "datasets" / "mini_instructions.jsonl", 0.5, owner="bob", home=home)["val"]["name"],
            datasets.convert(path["ann"], "alpaca", owner="ann", home=home)["name"],
            datasets.split(path["ann"], 0.5, owner="teach", home=home)["train"]["name"]]
    owners = {e.name: e.owner for e in datasets.list_datasets(by="teach", home=home)}
    assert [owners[n] for n in made] == ["bob", "bob", "ann", "teach"]
    assert not [n for n in owners if n.startswith("ann-set") and owners[n] == "bob"]       # nothing made for bob
    refused = users.audit_log("refused", home=home)
    assert [(r["actor"], r["target"], r["detail"].split(":")[0]) for r in reversed(refused)] == [
        ("bob", "dataset ann-set", "convert"), ("bob", "dataset ann-set", "split")]


def test_a_students_gallery_is_their_own_images_and_the_class_s(home, klass, monkeypatch):
    from backend.pipeline import compose
    from tests.test_vlm import png
    ann, teach = users.acting("ann", home=home), users.acting("teach", home=home)
    (home / "gallery").mkdir()
    (home / "gallery" / "lake.png").write_bytes(png(10, 10, "blue"))              # put there by the operator
    mine = compose.add_to_gallery("cat.png", png(20, 20, "orange"), home, owner="ann")
    bobs = compose.add_to_gallery("dog.png", png(20, 20, "brown"), home, owner="bob")
    class_ = compose.add_to_gallery("map.png", png(30, 20, "green"), home, owner="teach")
    assert mine.startswith("gallery/users/ann/") and class_.startswith("gallery/uploads/")
    assert compose.gallery(home, by=ann) == sorted([mine, class_, "gallery/lake.png"])
    assert compose.gallery(home, by=teach) == sorted([mine, bobs, class_, "gallery/lake.png"])
    (home / "jobs" / "1").mkdir(parents=True)
    (home / "jobs" / "1" / "plot.png").write_bytes(png())
    walked = "gallery/uploads/../users/bob/" + bobs.rsplit("/", 1)[1]                 # a path that walks there
    for rel in (bobs, walked, "jobs/1/plot.png"):                                  # or a file outside the gallery
        with pytest.raises(compose.ComposeRefused, match=f"image {re.escape(rel)} is not in your gallery or the class's"):
            compose.resolve(rel, home, by=ann)
    assert compose.resolve(bobs, home, by=teach) and compose.resolve(class_, home, by="bob")
    draft = compose.new_draft("Write about pets", [], owner="ann")
    draft["paragraphs"] = ["A cat.", "A dog."]
    draft["slots"] = compose.parse_slots("1: a cat\n2: a dog", draft["paragraphs"], 2)
    compose.rerank(draft, home, by=ann)                                            # ranks only what ann may use
    assert {p for s in draft["slots"] for p, _ in s["ranked"]} == {mine, class_, "gallery/lake.png"}
    draft["slots"][1]["image"] = bobs
    with pytest.raises(compose.ComposeRefused):
        compose.export_html(draft, home, by=ann)
    assert [r["target"] for r in reversed(users.audit_log("refused", home=home))] == [
        f"image {bobs}", f"image {walked}", "image jobs/1/plot.png", f"image {bobs}"]
    assert users.disk_used("ann", home=home) == len(png(20, 20, "orange")) and users.disk_used("teach", home=home) == 0   # her folder
    monkeypatch.setenv("WORKBENCH_USER_DISK_QUOTA_GB", str(150 / 2**30))              # 85 bytes used
    with pytest.raises(compose.ComposeRefused, match="would pass your disk quota"):
        compose.add_to_gallery("big.png", png(40, 40, "red"), home, owner="ann")


PARALLEL_LOGINS = """
import sys, threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from backend.access import users

def rss(field):
    return int(next(l for l in open('/proc/self/status') if l.startswith(field)).split()[1]) * 1024

home, name, password, n = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
try:                                # warm: the library loaded, one hash's memory seen
    users.login(name, password, '127.0.0.1', home=home)
except users.Refused:
    pass
base = rss('VmRSS:')
gate = threading.Barrier(n)

def wrong(i):
    gate.wait()
    try:
        users.login(name if name != '-' else f'nobody{i}', 'guess', '127.0.0.1', home=home)
    except users.Refused as e:
        return type(e).__name__

with ThreadPoolExecutor(n) as pool:
    outcomes = list(pool.map(wrong, range(n)))
print(outcomes.count('Refused'), outcomes.count('Throttled'), (rss('VmHWM:') - base) // 2**20)
"""


def parallel_logins(home, name, password, n=50):
    out = subprocess.run([sys.executable, "-c", PARALLEL_LOGINS, str(home), name, password, str(n)], cwd=ROOT,
                         env=env_for(home), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return tuple(map(int, out.stdout.split()))


def test_fifty_parallel_wrong_logins_verify_at_most_the_limit_in_bounded_memory(home, klass, monkeypatch):
    """50 wrong tries at once on one account: only the first LOGIN_MAX_FAILS are verified (each try on an
    account and address waits for the one before it), the rest wait their delay; 50 at once on 50 names all
    verify, but no more than PASSWORD_HASHES_AT_ONCE argon2 hashes (64 MiB each) are in memory together.
    The instructor still logs in."""
    monkeypatch.setenv("WORKBENCH_LOGIN_MAX_FAILS", "5")
    verified, throttled, _ = parallel_logins(home, "ann", klass["ann"])
    assert (verified, throttled) == (5, 45)
    assert open_store(home).count_audit("login_failed", 0, target="ann") == 5
    verified, throttled, grown = parallel_logins(home, "-", klass["ann"])        # 50 names: each is verified
    assert (verified, throttled) == (50, 0)
    assert grown < (defaults.PASSWORD_HASHES_AT_ONCE + 1) * 64 + 40, f"50 logins grew the app by {grown} MB"
    assert users.login("teach", klass["teach"], "127.0.0.1", home=home)[0].role == "instructor"
