"""The CLI calls the same backend functions as the pages; ./workbench up starts and stops the app and worker."""
import os
import signal
import subprocess
from pathlib import Path

import pytest

from backend.access import users
from backend.runtime import queue
from backend.core.store import open_store
from tests.conftest import ROOT, app_healthy, cli, free_port, run_burst, wait_for
from tests.test_worker import gone


def test_submit_list_show_logs_cancel(home, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("steps: 2\ninterval_s: 0\n")
    out = cli(home, "submit", "sleepy", str(spec), "--label", "first")
    assert out.returncode == 0, out.stderr
    job = int(out.stdout)
    assert queue.get(job, home=home, by=users.OPERATOR).label == "first"
    assert "sleepy" in cli(home, "list").stdout
    run_burst(home)
    shown = cli(home, "show", str(job)).stdout
    assert "succeeded" in shown and "progress" in shown
    assert cli(home, "logs", str(job), "-f").stdout.count("step ") == 2
    assert "succeeded" in cli(home, "cancel", str(job)).stdout      # cancelling a finished job changes nothing


def test_bad_input_is_a_clear_message_and_nothing_is_queued(home, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: many\n")
    for args, needle in [(("submit", "nope", str(bad)), "unknown job kind 'nope'"),
                         (("submit", "sleepy", str(bad)), "steps: Input should be a valid integer"),
                         (("submit", "sleepy", str(tmp_path / "missing.yaml")), "no such spec file"),
                         (("show", "999"), "no job 999"), (("logs", "999"), "no job 999")]:
        out = cli(home, *args)
        assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr
    (tmp_path / "broken.yaml").write_text("steps: [1,\n")
    out = cli(home, "submit", "sleepy", str(tmp_path / "broken.yaml"))
    assert out.returncode == 2 and "not valid YAML" in out.stderr
    assert queue.list_jobs(home=home, by=users.OPERATOR) == []


def test_engine_install_spec_is_validated(home, tmp_path):
    spec = tmp_path / "e.yaml"
    spec.write_text("engine: nosuch\n")
    out = cli(home, "submit", "engine_install", str(spec))
    assert out.returncode == 2 and "unknown engine 'nosuch'" in out.stderr
    spec.write_text("engine: openxlab\nextra_requirements: ['x; rm -rf /']\n")
    out = cli(home, "submit", "engine_install", str(spec))
    assert out.returncode == 2 and "not a plain requirement" in out.stderr


def test_output_cut_short_by_the_reader_is_no_traceback(home):
    """`list | head -1`: the reader has gone when the CLI writes; it ends quietly."""
    import os
    import subprocess
    from tests.conftest import PY, ROOT, env_for
    queue.submit("sleepy", {"steps": 1}, home=home, owner="local")
    read, write = os.pipe()
    os.close(read)                           # the reader left before the first line
    proc = subprocess.run([PY, "-m", "backend", "list"], cwd=ROOT, env=env_for(home), stdout=write,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    os.close(write)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def _pid_of(*words: str) -> int | None:
    """The process whose command line holds all ``words`` (from /proc: no psutil needed)."""
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if d.name.isdigit() and all(w in cmd for w in words):
            return int(d.name)
    return None


@pytest.mark.slow
def test_workbench_up_stops_both_on_ctrl_c_or_when_one_ends(tmp_path):
    """README's first command: the worker and the app start, Ctrl-C stops both, and when one of them ends
    by itself the other is stopped too. (The bundled model is left out here: its download has its own tests.)"""
    port = free_port()
    env = dict(os.environ, WORKBENCH_HOME=str(tmp_path / "ws"), WORKBENCH_PORT=str(port),
               WORKBENCH_SMOLLM2_GGUF=str(tmp_path / "absent.gguf"))
    log = tmp_path / "up.log"

    def up() -> tuple[subprocess.Popen, int, int]:
        with open(log, "w") as out:
            proc = subprocess.Popen([str(ROOT / "workbench"), "up"], cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        # past its start-up checks: the launcher is waiting on both processes
        wait_for(lambda: "Ctrl-C stops both" in log.read_text() or proc.poll() is not None, 300, 0.5, "the launcher")
        assert proc.poll() is None and app_healthy(f"http://127.0.0.1:{port}"), log.read_text()
        live = wait_for(lambda: [w["pid"] for w in open_store(tmp_path / "ws").workers() if not gone(w["pid"])],
                        30, what="the worker to register")
        return proc, _pid_of("-m pages", f"--server.port {port}"), live[0]

    proc, app, worker = up()
    os.killpg(proc.pid, signal.SIGINT)                  # Ctrl-C in the terminal
    proc.wait(60)
    out = log.read_text()
    assert proc.returncode == 0 and "stopping" in out and "Traceback" not in out, out
    wait_for(lambda: gone(app) and gone(worker), 30, what="app and worker stopped")

    proc, app, worker = up()
    os.kill(app, signal.SIGKILL)                        # the app dies: the worker must not be left running
    proc.wait(60)
    out = log.read_text()
    assert "a process ended" in out and "unbound variable" not in out and proc.returncode == 0, out
    wait_for(lambda: gone(worker), 30, what="the worker stopped")
