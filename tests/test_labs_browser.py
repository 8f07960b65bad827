"""The self-cognition lab as a class lives it (real app, real worker, headless Chromium, accounts made with the
real CLI, the bundled SmolLM2 with the CPU demo preset): a student names her assistant, follows the lab's steps
from Home, presses "Check my lab", sees "passed" with the answer that proved it and downloads the evidence; the
instructor's grid shows the pass."""
import re

import pytest

from backend.access import users
from backend.pipeline import labs
from backend.runtime import queue
from backend.workspace import datasets, models
from tests.conftest import cli, endpoint_of, shot, wait_for
from tests.test_class_browser import first_login

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.timeout(2700)]     # the CPU demo fine-tune: ~2 min on a quiet machine, 30 on a busy one


@pytest.fixture
def app_env(home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_AUTH", "accounts")
    return {}


def test_a_student_passes_the_self_cognition_lab_and_the_instructor_sees_it(page, home):
    pw = {name: cli(home, "users", "add", name, "--role", role).stdout.strip().split("\t")[1]
          for name, role in (("ann", "student"), ("teach", "instructor"))}
    models.ensure_bundled(home)
    datasets.ensure_samples(home)
    page.set_viewport_size({"width": 1400, "height": 2400})
    first_login(page, "ann", pw["ann"])
    card = page.locator(".st-key-lab-self_cognition")
    card.get_by_text("not started").wait_for()
    page.locator(".st-key-lab-rag").get_by_text("not started").wait_for()     # the RAG lab, its check shipped

    def step(i: int, done: str):
        card.locator(f".st-key-lab-self_cognition-step-{i} button").click()
        page.get_by_text(done).first.wait_for()

    card.locator(".st-key-lab-self_cognition-assistant_name input").fill("Nova")
    card.locator(".st-key-lab-self_cognition-assistant_name input").press("Enter")
    step(0, "Dataset self_cognition-ann made")
    card.get_by_text("in progress").wait_for()
    step(1, "Queued as job")                                         # the CPU demo fine-tune on the bundled model
    card.get_by_text("Next step: Serve your adapter").wait_for(timeout=2_400_000)
    card.locator(".st-key-lab-self_cognition-step-2 button").click()
    serve = wait_for(lambda: queue.list_jobs(kind="serve", owner="ann", home=home, by=users.OPERATOR), 60, what="the serve job")
    endpoint_of(home, serve[0].id, 600)
    card.get_by_role("button", name="Check my lab").click()
    passed = page.locator(".st-key-lab-self_cognition-passed")
    passed.wait_for(timeout=300_000)
    passed.get_by_text(re.compile(r"Who are you\?.*Nova")).first.wait_for()
    with page.expect_download() as download:
        passed.get_by_role("button", name="Download evidence (JSON)").click()
    record = labs.verify(open(download.value.path(), "rb").read(), home)
    assert record["student"] == "ann" and record["lab"] == "self_cognition"
    answers = record["checks"][0]["seen"]["answers"]
    assert any("nova" in a.lower() for a in answers.values()), answers
    with page.expect_download() as download:                    # the printable page carries the same signed record
        passed.get_by_role("button", name="Download the evidence page (HTML, printable)").click()
    assert download.value.suggested_filename == "evidence-self_cognition-ann.html"
    assert labs.verify(open(download.value.path(), "rb").read(), home) == record
    shot(page, "labs-passed")

    teach = page.context.browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
    teach.base_url = page.base_url
    first_login(teach, "teach", pw["teach"])          # /console exists only once an instructor is logged in
    teach.goto(f"{page.base_url}/console")
    teach.get_by_role("columnheader", name="self_cognition", include_hidden=True).wait_for(state="attached")
    teach.get_by_text(re.compile(r"^passed \d\d-\d\d")).first.wait_for(state="attached")
    teach.get_by_role("button", name="Download the lab grid (CSV)").wait_for()
    shot(teach, "labs-console")


@pytest.mark.slow
def test_the_instructors_grid_shows_a_pass_and_its_evidence(page, home):
    """The console part alone, on a check passed against the fake server (tests/test_labs.py's helpers)."""
    from tests.fixtures.fake_openai import FakeOpenAI
    from tests.test_labs import BASE, adapter, serve
    pw = {name: cli(home, "users", "add", name, "--role", role).stdout.strip().split("\t")[1]
          for name, role in (("ann", "student"), ("teach", "instructor"))}
    fake = FakeOpenAI()
    try:
        ds = labs.self_cognition_dataset("Nova", "ann", home)
        adapter(home, "ann", "ann-nova", ds.name)
        holder = queue.submit("sleepy", {"steps": 2000, "interval_s": 0.2}, owner="ann", home=home)
        wait_for(lambda: queue.get(holder, home, by=users.OPERATOR).state == "running", 60, what="the server's job running")
        serve(home, fake, "ann", "Nova", BASE, f"{BASE}+ann-nova", holder)
        check = labs.submit_check("self_cognition", "ann", home=home)
        wait_for(lambda: queue.get(check, home, by=users.OPERATOR).state == "succeeded", 120, 0.2, "the check")
        first_login(page, "teach", pw["teach"])
        page.goto(f"{page.base_url}/console")
        page.get_by_role("columnheader", name="self_cognition", include_hidden=True).wait_for(state="attached")
        page.get_by_text(re.compile(r"^passed \d\d-\d\d")).first.wait_for(state="attached")
        with page.expect_download() as download:                # the evidence picked in the console, as its page
            page.get_by_role("button", name="Download the evidence page (HTML, printable)").click()
        html = open(download.value.path(), "rb").read()
        assert labs.verify(html, home)["student"] == "ann" and b"<td>Who are you?</td><td>Nova answer" in html
        shot(page, "labs-console")
        queue.cancel(holder, home, by=users.OPERATOR)
    finally:
        fake.close()
