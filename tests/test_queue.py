"""Who may stop a job: its owner, an instructor, or the operator's shell (real store, real CLI)."""
import pytest

from backend import queue
from tests.conftest import cli


def test_only_the_owner_or_an_instructor_stops_a_job(home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_INSTRUCTORS", " teacher , 老师 ")
    a, b, c = (queue.submit("sleepy", {"steps": 1}, owner="ann") for _ in range(3))
    with pytest.raises(queue.SubmitError, match="belongs to ann: only they or an instructor"):
        queue.cancel(a, by="bob")
    assert queue.get(a)["state"] == "queued" and not queue.get(a)["cancel_requested"]
    assert queue.cancel(a, by="ann")["state"] == "cancelled"
    assert queue.cancel(b, by="老师")["state"] == "cancelled"
    assert queue.instructors() == {"teacher", "老师"}
    out = cli(home, "cancel", str(c), WORKBENCH_USER="bob")        # the command line is the operator's
    assert out.returncode == 0 and queue.get(c)["state"] == "cancelled", out.stderr
    monkeypatch.delenv("WORKBENCH_INSTRUCTORS")
    assert not queue.may_manage(queue.get(c), "teacher") and queue.may_manage(queue.get(c), None)
