"""A class on one box as people see it: two students and an instructor logged in at once (real app, real
worker, headless Chromium, accounts made with the real CLI)."""
import io
import subprocess
import sys

import pytest

from backend.access import users
from backend.runtime import queue
from backend.workspace import datasets
from backend.core.paths import human_size
from jobs.common import Job
from jobs.serve import register
from tests.conftest import cli, shot, wait_for

pytestmark = pytest.mark.browser


@pytest.fixture
def app_env(home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_AUTH", "accounts")           # the app, the worker and this test's calls
    monkeypatch.setenv("WORKBENCH_LOGIN_MAX_FAILS", "2")
    return {}


def log_in(page, name: str, password: str, path: str = "") -> None:
    """The login form (backend/access/webauth.py): a page asked for without a session redirects to it first."""
    page.goto(f"{page.base_url}/{path}")
    page.locator("#name").fill(name)
    page.locator("#password").fill(password)
    page.get_by_role("button", name="Log in").click()


def first_login(page, name: str, password: str, path: str = "") -> None:
    log_in(page, name, password, path)
    page.locator(".st-key-pw_old input").fill(password)
    page.locator(".st-key-pw_new input").fill(name + "-own-password")
    page.locator(".st-key-pw_again input").fill(name + "-own-password")
    page.get_by_role("button", name="Save and continue").click()
    page.get_by_text(f"Signed in as {name}").wait_for()


def test_two_students_and_an_instructor_at_once(page, home):
    pw = {}
    for name, role in (("ann", "student"), ("bob", "student"), ("teach", "instructor"), ("carl", "student")):
        out = cli(home, "users", "add", name, "--role", role)
        pw[name] = out.stdout.strip().split("\t")[1]
    ann_job = queue.submit("sleepy", {"steps": 2000, "interval_s": 0.2}, owner="ann", label="ann's run", home=home)
    bob_job = queue.submit("sleepy", {"steps": 1}, owner="bob", label="bob's run", home=home)
    browser = page.context.browser

    # the login page; wrong passwords are throttled (per account and address), and the right one then waits too
    page.goto(page.base_url)
    page.get_by_text("Log in to Lab Workbench").wait_for()
    shot(page, "class-login")
    for _ in range(2):
        log_in(page, "carl", "guess")
        page.get_by_text("Wrong name or password.").wait_for()
    log_in(page, "carl", pw["carl"])
    page.get_by_text("Too many failed logins").wait_for()

    # ann: first login asks for her own password; the session is a SameSite=Strict cookie, not in the URL
    first_login(page, "ann", pw["ann"], f"jobs?job={ann_job}")
    page.locator(f".st-key-joblog-{ann_job}").get_by_text("step 2 of 2000").wait_for()
    cookie = next(c for c in page.context.cookies() if c["name"] == users.COOKIE)
    assert cookie["sameSite"] == "Strict" and cookie["httpOnly"] and cookie["value"] not in page.url
    assert users.COOKIE not in page.evaluate("document.cookie")          # no script on the page can read it
    page.reload()                                          # a reload keeps the session
    page.get_by_text("Signed in as ann").wait_for()

    bob = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    bob.base_url = page.base_url
    teach = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    teach.base_url = page.base_url
    first_login(bob, "bob", pw["bob"], "jobs")
    first_login(teach, "teach", pw["teach"], "jobs")

    # bob opens his own job; ann's is refused by URL, and ?user= no longer impersonates anybody
    assert bob.locator(".st-key-owner_input").count() == 0             # no name box to type another name
    bob.goto(f"{page.base_url}/jobs?job={bob_job}")
    bob.locator(f".st-key-jobstate-{bob_job}").wait_for()
    bob.goto(f"{page.base_url}/jobs?job={ann_job}&user=ann")
    bob.get_by_text(f"Job {ann_job} is not yours").wait_for()
    assert bob.locator(f".st-key-joblog-{ann_job}").count() == 0
    bob.get_by_text("Signed in as bob").wait_for()
    shot(bob, "class-student")

    # ann's running job serves a model (registered as jobs/serve.py does): bob's Chat page doesn't list it,
    # the instructor's does
    (home / "jobs" / str(ann_job)).mkdir(parents=True, exist_ok=True)
    register(Job(home / "jobs" / str(ann_job)), {"ann-llm": (home, {"url": "http://127.0.0.1:9/v1", "model": "ann-llm",
                                                                    "engine": "transformers", "device": "cpu",
                                                                    "job_id": ann_job})})
    bob.goto(f"{page.base_url}/chat")
    bob.locator(".st-key-chat_endpoints").get_by_text("No model server is running").wait_for()
    assert bob.locator(".st-key-chat_endpoints").get_by_text("ann-llm").count() == 0
    teach.goto(f"{page.base_url}/chat")
    teach.locator(".st-key-chat_endpoints").get_by_text("ann-llm", exact=True).first.wait_for()

    # the instructor opens anybody's job and stops ann's
    teach.goto(f"{page.base_url}/jobs?job={ann_job}")
    teach.locator(f".st-key-joblog-{ann_job}").get_by_text("step").first.wait_for()
    teach.get_by_role("button", name="Cancel").click()
    wait_for(lambda: queue.get(ann_job, home=home, by=users.OPERATOR).state == "cancelled", 30, what="ann's job cancelled")
    assert queue.get(bob_job, home=home, by=users.OPERATOR).owner == "bob"
    refused = [r for r in users.audit_log("refused", home=home) if r["actor"] == "bob"]
    assert refused and refused[0]["target"] == f"job {ann_job}"
    assert any(r["actor"] == "teach" and r["action"] == "cancel" for r in users.audit_log(home=home))

    # the instructor's console: the roster (with GPU-hours today and disk used), lab progress, and an
    # announcement every page shows
    datasets.save_upload("ann-notes.jsonl", io.BytesIO(b'{"text": "hi"}\n' * 3000), owner="ann", home=home)
    teach.goto(f"{page.base_url}/console")
    for column in ("GPU-hours today", "Disk used"):                # in the data grid's accessible table
        teach.get_by_role("columnheader", name=column, include_hidden=True).wait_for(state="attached")
    used = users.disk_usage(home=home)["ann"]                               # her upload and her (cancelled) job's folder
    assert used >= 3000 * 15
    teach.get_by_text(human_size(used), exact=True).wait_for(state="attached")
    teach.locator(".st-key-console_announce_text textarea").fill("Lab 3: fine-tune by 11:00")
    teach.get_by_role("button", name="Post").click()
    teach.get_by_text("Lab 3: fine-tune by 11:00").nth(1).wait_for()
    teach.get_by_text("Lab progress").wait_for()
    shot(teach, "class-console")
    bob.reload()
    bob.get_by_text("Lab 3: fine-tune by 11:00").wait_for()
    bob.goto(f"{page.base_url}/console")                    # not a page for students
    bob.get_by_text("Signed in as bob").wait_for()
    bob.get_by_text("Queue at a glance").wait_for()         # the default page instead
    assert bob.get_by_text("Lab progress").count() == 0

    # the language is remembered with the account: a reload comes back in 中文
    teach.locator("label").filter(has_text="中文").click()
    teach.get_by_role("link", name="退出登录").wait_for()
    teach.reload()
    teach.get_by_role("link", name="退出登录").wait_for()

    # Logout ends the session on the server: a reload with the old cookie is back at the login page
    page.get_by_role("link", name="Log out").click()
    page.get_by_text("Log in to Lab Workbench").wait_for()
    page.reload()
    page.get_by_text("Log in to Lab Workbench").wait_for()
    assert users.session_user(cookie["value"], home=home) is None


def test_httponly_login_sticks_twenty_times_and_a_key_s_snippet_runs(page, home):
    """The login route's cookie: HttpOnly, kept by every reload, on the first login and the 19 after; then the
    API keys page makes a key whose Python snippet, run as it is, streams an answer through the gateway."""
    from tests.fixtures.fake_openai import KEY, FakeOpenAI
    from tests.test_gateway import placeholder
    password = cli(home, "users", "add", "ann").stdout.strip().split("\t")[1]
    first_login(page, "ann", password, "jobs")
    for i in range(20):
        if i:
            page.context.clear_cookies()
            log_in(page, "ann", "ann-own-password", "jobs")
        page.get_by_text("Signed in as ann").wait_for()
        page.reload()
        page.get_by_text("Signed in as ann").wait_for()
        cookie = next(c for c in page.context.cookies() if c["name"] == users.COOKIE)
        assert cookie["httpOnly"] and users.COOKIE not in page.evaluate("document.cookie")
    assert len([r for r in users.audit_log("login", home=home) if r["actor"] == "ann"]) == 20

    fake = FakeOpenAI()
    try:
        placeholder(home, "ann", "ann-model", fake)
        page.goto(f"{page.base_url}/api")
        page.locator(".st-key-api_key_name input").fill("laptop")
        page.get_by_role("button", name="Create key").click()
        key = page.locator(".st-key-api_new code").inner_text().strip()
        assert key.startswith("wbk-")
        snippet = page.locator("code.language-python").first.inner_text()
        assert key in snippet and "ann-model" in snippet and KEY not in page.content()
        shot(page, "api-keys")
        out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.strip() == "fake-model answer 1: Who are you?", out.stderr
    finally:
        fake.close()


def test_a_disabled_students_open_page_cannot_retry(page, home):
    """An open job view keeps running its fragment; once the account is disabled, its Retry acts for nobody."""
    password = cli(home, "users", "add", "ann").stdout.strip().split("\t")[1]
    job = queue.submit("sleepy", {"steps": 1}, owner="ann", home=home)
    first_login(page, "ann", password, f"jobs?job={job}")
    wait_for(lambda: queue.get(job, home=home, by=users.OPERATOR).state.finished, 60, 0.2, "ann's job to end")
    retry = page.locator(f".st-key-retry-{job} button")
    retry.wait_for()
    users.disable("ann", home=home)
    retry.click()
    page.get_by_text("Your session has ended").wait_for()
    assert [j.id for j in queue.list_jobs(home=home, by=users.OPERATOR)] == [job]          # nothing was queued in her name
