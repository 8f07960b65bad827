"""Shared fixtures: a real workspace per test, a real worker subprocess, the real Streamlit app in
headless Chromium, and a tiny random chat model built offline."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from backend.access import users

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TEST_KINDS = "sleepy=tests.fixtures.jobs_sleepy"
ARTIFACTS = ROOT / "test-artifacts"          # screenshots the browser tests save
ENGINES_DIR = ROOT / ".cache" / "envs"       # engine venvs `./workbench test` installs once (backend/runtime/provision.py)
CHROMIUM = os.environ.get("WORKBENCH_CHROMIUM", "/usr/bin/chromium")


def wait_for(fn, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``fn`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def endpoint_of(home: Path, job_id: int, timeout: float = 120) -> dict:
    """The live endpoint of server job ``job_id`` (serve or vlm); fails with the job's log if it ends first."""
    from backend.pipeline import chat
    from backend.runtime import queue

    def ready():
        job = queue.get(job_id, home, by=users.OPERATOR)
        assert job.state in ("queued", "starting", "running"), \
            f"{job.kind} job {job.state}: {job.error_message}\n{(home / 'jobs' / str(job_id) / 'run.log').read_text()}"
        return next((e for e in chat.live_endpoints(home, by=users.OPERATOR) if e["job_id"] == job_id and not e.get("base_of")), None)
    return wait_for(ready, timeout, 0.2, "the endpoint to become ready")


def pick(page, key: str, option: str, exact: bool = True) -> None:
    """Open the select or multiselect ``key`` and click ``option`` (any option containing it when not ``exact``); again if a
    rerun closed the list."""
    def once():
        page.locator(f".st-key-{key} button[aria-label='Open'], .st-key-{key} [data-baseweb='select']").first.click()
        opt = page.get_by_role("option", name=option, exact=exact).first
        try:
            opt.wait_for(timeout=3000)
            opt.click(timeout=3000)
        except Exception:           # noqa: BLE001 - playwright's TimeoutError: the list closed; open it again
            page.keyboard.press("Escape")
            return False
        return True
    wait_for(once, 30, 0.2, f"option {option!r} of {key}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty workspace; WORKBENCH_HOME points at it for this test and its subprocesses."""
    h = tmp_path / "workspace"
    h.mkdir()
    monkeypatch.setenv("WORKBENCH_HOME", str(h))
    monkeypatch.setenv("WORKBENCH_EXTRA_KINDS", TEST_KINDS)
    monkeypatch.setenv("WORKBENCH_POLL_S", "0.1")
    monkeypatch.setenv("WORKBENCH_CANCEL_GRACE_S", "3")
    monkeypatch.setenv("WORKBENCH_ENGINES_DIR", str(ENGINES_DIR))
    # the tests' fake servers listen on 127.0.0.1: user URLs may reach loopback (the URL guard's tests turn it off)
    monkeypatch.setenv("WORKBENCH_URL_IMPORT_ALLOW_LOOPBACK", "1")
    return h


@pytest.fixture
def timezone():
    """Sets the local time zone (``TZ``) of this test and its subprocesses; the suite's own comes back after."""
    old = os.environ.get("TZ")

    def set_tz(tz: str) -> None:
        os.environ["TZ"] = tz
        time.tzset()
    yield set_tz
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.fixture
def local_noon(timezone) -> float:
    """A time zone in which it is about noon now: a test about "today" that reads the clock (a submit, the
    roster, a CLI subprocess) never straddles midnight, whatever hour the suite runs at. Gives local midnight."""
    hours = (time.gmtime().tm_hour - 12) % 24
    timezone(f"NOON{hours - 24 if hours > 12 else hours:+d}")     # POSIX: "XXX+5" is five hours behind UTC
    return time.mktime(time.localtime()[:3] + (0, 0, 0, 0, 0, -1))


def env_for(home: Path, **extra) -> dict:
    env = dict(os.environ, WORKBENCH_HOME=str(home), PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_worker(home: Path, *args: str, **env) -> subprocess.Popen:
    log = open(home / "worker.log", "ab")
    return subprocess.Popen([PY, "-m", "backend", "worker", *args], cwd=ROOT, env=env_for(home, **env),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def worker(home):
    """A real worker daemon on the test's workspace."""
    proc = start_worker(home)
    yield proc
    stop(proc)


def run_burst(home: Path, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    """Run a worker in --burst mode until the queue is empty."""
    return subprocess.run([PY, "-m", "backend", "worker", "--burst"], cwd=ROOT, env=env_for(home, **env),
                          capture_output=True, text=True, timeout=timeout)


def cli(home: Path, *args: str, timeout: float = 60, **env) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "backend", *args], cwd=ROOT, env=env_for(home, **env),
                          capture_output=True, text=True, timeout=timeout)


def start_app(home: Path, port: int, **env) -> subprocess.Popen:
    log = open(home / "streamlit.log", "ab")
    return subprocess.Popen(
        [PY, "-m", "pages", "--server.address", "127.0.0.1", "--server.port", str(port),
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env_for(home, **env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def app_healthy(url: str) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture
def app_env() -> dict:
    """Extra environment for the app (a test module overrides this fixture, e.g. for class mode)."""
    return {}


@pytest.fixture
def app(home, worker, app_env):
    """The real Streamlit app and worker on free ports; yields the base URL."""
    port = free_port()
    proc = start_app(home, port, **app_env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: app_healthy(url) or proc.poll() is not None, 60, 0.2, "streamlit to start")
        assert proc.poll() is None, (home / "streamlit.log").read_text()
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (./workbench test installs it)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                    "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


@pytest.fixture
def page(browser, app):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    pg.base_url = app
    yield pg
    ctx.close()


def shot(page, name: str) -> Path:
    """A full-page screenshot once the widgets have drawn (no loading skeletons left, 15 s at most)."""
    deadline = time.monotonic() + 15
    while page.locator('[data-testid="stSkeleton"]').count() and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama chat model folder (tokenizer, config, safetensors, chat template)."""
    from tests.fixtures.tiny_model import make_tiny_llama
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")
