"""The CLI calls the same backend functions as the pages."""
from backend import queue
from tests.conftest import cli, run_burst


def test_submit_list_show_logs_cancel(home, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("steps: 2\ninterval_s: 0\n")
    out = cli(home, "submit", "sleepy", str(spec), "--label", "first")
    assert out.returncode == 0, out.stderr
    job = int(out.stdout)
    assert queue.get(job)["label"] == "first"
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
    assert queue.list_jobs() == []


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
    queue.submit("sleepy", {"steps": 1})
    read, write = os.pipe()
    os.close(read)                           # the reader left before the first line
    proc = subprocess.run([PY, "-m", "backend", "list"], cwd=ROOT, env=env_for(home), stdout=write,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    os.close(write)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
