"""A live job view in the browser: it follows a job to its end, shows the final state, then stops polling."""
import pytest

from backend.runtime import queue
from tests.conftest import shot, wait_for

pytestmark = pytest.mark.browser


def test_a_job_view_follows_a_job_to_its_end_then_goes_quiet(page, home):
    job = queue.submit("sleepy", {"steps": 40, "interval_s": 0.1}, home=home, owner="local")
    sent = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)))
    page.goto(f"{page.base_url}/jobs?job={job}")
    log = page.locator(f".st-key-joblog-{job}")
    log.get_by_text("step 5 of 40").wait_for()                         # follows it while it runs
    log.get_by_text("step 40 of 40").wait_for()
    page.locator("[data-state='succeeded']").wait_for(state="attached")  # and shows how it ended
    page.get_by_text("40 / 40 steps").wait_for()
    page.get_by_text("Metrics").first.wait_for()
    page.locator("[data-testid='stVegaLiteChart'], .stVegaLiteChart").first.wait_for()
    page.get_by_text("Result").wait_for()
    shot(page, "jobs-finished")
    # a finished job cannot change: the page stops asking for refreshes (the job list alone polls, slowly)
    wait_for(lambda: sent, 5, what="the page's first messages")
    page.wait_for_timeout(1000)               # let the rerun that noticed the end settle
    before = len(sent)
    page.wait_for_timeout(4000)               # a measuring window, not a synchronisation
    assert len(sent) - before <= 1, f"{len(sent) - before} refreshes of a finished job in 4 s"
    page.reload()                                                       # re-attaches to the final state
    page.locator(f".st-key-joblog-{job}").get_by_text("step 40 of 40").wait_for()
    page.locator("[data-state='succeeded']").wait_for(state="attached")
