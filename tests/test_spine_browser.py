"""The spine as a person sees it: the real app and worker, headless Chromium."""
import pytest

from backend.access import users
from backend.core import paths
from backend.runtime import queue
from tests.conftest import cli, shot, wait_for
from tests.test_worker import gone

pytestmark = pytest.mark.browser


def test_home_shows_pipeline_hardware_queue_and_switches_language(page, home):
    page.goto(page.base_url)
    page.get_by_text("Pipeline").first.wait_for()
    page.get_by_text("CPU only").wait_for()
    page.get_by_text("Worker running").wait_for()
    shot(page, "home")
    page.locator("label").filter(has_text="中文").click()
    page.get_by_text("全链路流程").wait_for()
    page.get_by_text("仅 CPU").wait_for()
    shot(page, "home-zh")


def test_jobs_page_follows_a_cli_job_and_cancels_it(page, home, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("steps: 400\ninterval_s: 0.1\nchild: true\n")
    job = int(cli(home, "submit", "sleepy", str(spec), "--label", "browser").stdout)
    page.goto(f"{page.base_url}/jobs?job={job}")
    log = page.locator(f".st-key-joblog-{job}")
    log.get_by_text("step 3 of 400").wait_for()
    # the log follows new lines without a reload
    log.get_by_text("step 12 of 400").wait_for()
    page.get_by_text("ETA").wait_for()
    shot(page, "jobs-running")
    # a reload (or a second browser) re-attaches to the same job
    page.reload()
    page.locator(f".st-key-joblog-{job}").get_by_text("step 1").first.wait_for()
    second = page.context.browser.new_page()
    second.goto(f"{page.base_url}/jobs?job={job}")
    second.locator(f".st-key-joblog-{job}").get_by_text("of 400").first.wait_for(timeout=30_000)
    second.close()
    pid = queue.get(job, home=home, by=users.OPERATOR).pid
    child = int((paths.job_dir(job, home=home) / "child.pid").read_text())
    page.get_by_role("button", name="Cancel").click()
    wait_for(lambda: queue.get(job, home=home, by=users.OPERATOR).state == "cancelled", 30, what="cancelled")
    wait_for(lambda: gone(pid) and gone(child), 10, what="process group gone")
    page.locator("[data-state='cancelled']").wait_for(state="attached")
    shot(page, "jobs-cancelled")
    # a finished job offers retry, which queues the same spec as a new job
    page.get_by_role("button", name="Retry").click()
    wait_for(lambda: len(queue.list_jobs(home=home, by=users.OPERATOR)) == 2, 30, what="retried job")
    retried = queue.list_jobs(home=home, by=users.OPERATOR)[0]
    assert retried.parent_id == job and retried.spec == queue.get(job, home=home, by=users.OPERATOR).spec
    page.wait_for_url(f"**/jobs?job={retried.id}")
    queue.cancel(retried.id, home=home, by=users.OPERATOR)
    shot(page, "jobs-list")


def test_failed_job_shows_its_own_suggestion(page, home, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("steps: 1\ninterval_s: 0\nfail: true\n")
    job = int(cli(home, "submit", "sleepy", str(spec)).stdout)
    wait_for(lambda: queue.get(job, home=home, by=users.OPERATOR).state == "failed", 30, what="the job to fail")
    page.goto(f"{page.base_url}/jobs?job={job}")
    page.get_by_text("Failed (bad_input): asked to fail").wait_for()
    page.get_by_text("For this job: do not ask it to fail").wait_for()     # the job's JobError suggestion


@pytest.fixture
def classroom(monkeypatch):
    monkeypatch.setenv("WORKBENCH_INSTRUCTORS", "teacher")


def test_names_in_a_class_own_jobs_and_only_owner_or_instructor_stops_them(classroom, page, home):
    job = queue.submit("sleepy", {"steps": 400, "interval_s": 0.1}, owner="ann", home=home)
    page.goto(f"{page.base_url}/jobs?job={job}&user=bob")
    page.locator(f".st-key-joblog-{job}").get_by_text("step 3 of 400").wait_for()
    name = page.locator(".st-key-owner_input input")
    assert name.input_value() == "bob"
    cancel = page.get_by_role("button", name="Cancel")
    assert cancel.is_disabled()
    page.get_by_text("This is ann's job: only they or an instructor can stop it.").wait_for()
    shot(page, "jobs-classroom-student")
    # a bad name is refused and the session keeps the one it had
    name.fill("bad name!")
    name.press("Enter")
    page.get_by_text("A name is 1 to 32 letters").wait_for()
    wait_for(lambda: name.input_value() == "bob", 10, what="the name box to show bob again")   # may come after
    page.reload()                                   # the URL carries the name
    page.locator(f".st-key-joblog-{job}").get_by_text("of 400").first.wait_for()
    assert page.locator(".st-key-owner_input input").input_value() == "bob"
    assert page.get_by_role("button", name="Cancel").is_disabled()
    # an instructor may stop anybody's job; what they queue from the page is theirs
    name = page.locator(".st-key-owner_input input")
    name.fill("teacher")
    name.press("Enter")
    page.get_by_text("Instructor: you may stop anybody's job.").wait_for()
    page.wait_for_url("**user=teacher**")
    wait_for(lambda: page.get_by_role("button", name="Cancel").is_enabled(), 30, what="Cancel enabled")
    shot(page, "jobs-classroom")
    # while ann's job holds the CPU slot: bob's queued job goes first (fair share) until the instructor
    # moves ann's second one to the front
    later = queue.submit("sleepy", {"steps": 400, "interval_s": 0.1}, owner="bob", home=home)
    demo = queue.submit("sleepy", {"steps": 400, "interval_s": 0.1}, owner="ann", home=home)
    page.goto(f"{page.base_url}/jobs?job={demo}&user=teacher")
    page.get_by_text("Place in the queue: 2").wait_for()
    page.get_by_role("button", name="Run next").click()
    page.get_by_text("Place in the queue: 1").wait_for()
    page.goto(f"{page.base_url}/jobs?job={job}&user=teacher")
    page.get_by_role("button", name="Cancel").click()
    wait_for(lambda: queue.get(job, home=home, by=users.OPERATOR).state == "cancelled", 30, what="cancelled by the instructor")
    wait_for(lambda: queue.get(demo, home=home, by=users.OPERATOR).state == "running", 30, what="the moved job to start")
    assert queue.get(later, home=home, by=users.OPERATOR).state == "queued"
    page.get_by_role("button", name="Retry").click()
    wait_for(lambda: len(queue.list_jobs(home=home, by=users.OPERATOR)) == 4, 30, what="retried job")
    retried = queue.list_jobs(home=home, by=users.OPERATOR)[0]
    assert retried.owner == "teacher" and queue.get(job, home=home, by=users.OPERATOR).owner == "ann"
    for j in (retried.id, later, demo):
        queue.cancel(j, home=home, by=users.OPERATOR)
