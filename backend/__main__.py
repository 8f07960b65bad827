"""Command line: the same backend functions the pages call.

    python -m backend submit <kind> spec.yaml [--owner NAME] [--priority N]
    python -m backend list [--state S] [--kind K] [--owner O]
    python -m backend show <id>
    python -m backend logs <id> [-f]
    python -m backend cancel <id>
    python -m backend retry <id>
    python -m backend next <id>
    python -m backend worker [--burst]
    python -m backend init
    python -m backend share <type> <name> [--off]      # share a registry entry with the class (or stop)
    python -m backend tensorboard [--port 6007]   # TensorBoard over every job's events, on 127.0.0.1
    python -m backend users add NAME [--role student|instructor] | import roster.csv | reset NAME
                            | disable NAME | role NAME ROLE | quota NAME [--running N] [--queued N] [--gpu-hours H]
                            | list | audit
    python -m backend labs list --as NAME | check LAB --as NAME [--student S | --all] | verify FILE
                           | export --as NAME
"""
from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
import time
from pathlib import Path

import yaml

from backend.access import ownership, users
from backend.core import defaults, errors, paths
from backend.pipeline import labs
from backend.runtime import logs, queue
from backend.core.registry import RegistryType
from backend.runtime.procs import AlreadyRunning
from backend.core.states import JobState
from backend.core.store import open_store
from backend.runtime.worker import Worker


def _fmt_time(t):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def cmd_submit(a) -> int:
    path = Path(a.spec)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) if a.spec != "-" else yaml.safe_load(sys.stdin)
    except FileNotFoundError:
        return _err(f"no such spec file: {a.spec}")
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        return _err(f"{a.spec} is not valid YAML/JSON: {e}")
    try:
        job_id = queue.submit(a.kind, spec or {}, owner=a.owner or defaults.setting("USER"), priority=a.priority, label=a.label or "", home=a.home)
    except queue.SubmitError as e:
        return _err(str(e))
    print(job_id)
    return 0


def cmd_list(a) -> int:
    rows = queue.list_jobs(states=[a.state] if a.state else None, kind=a.kind, owner=a.owner, limit=a.limit, home=a.home, by=users.OPERATOR)
    print(f"{'id':>5}  {'kind':<15} {'state':<10} {'owner':<10} {'queued':<19}  label")
    for j in rows:
        print(f"{j.id:>5}  {j.kind:<15} {j.state:<10} {j.owner:<10} {_fmt_time(j.created_at):<19}  {j.label}")
    return 0


def cmd_show(a) -> int:
    job = _job(a.id, a.home)
    if job is None:
        return _err(f"no job {a.id}")
    for key in ("id", "kind", "state", "owner", "label", "priority", "asked", "given", "exit_code",
                "error_class", "error_message"):
        value = getattr(job, key)
        print(f"{key:>14}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    for key in ("created_at", "started_at", "finished_at"):
        print(f"{key:>14}: {_fmt_time(getattr(job, key))}")
    print(f"{'spec':>14}: {json.dumps(job.spec, ensure_ascii=False)}")
    ev = logs.EventState().update(a.id, a.home)
    if ev.progress:
        p = ev.progress
        print(f"{'progress':>14}: {p['done']}/{p.get('total')} {p.get('unit', '')} {p.get('message', '')}")
    if job.state in (JobState.FAILED, JobState.LOST):
        tip = errors.job_suggestion(logs.result(a.id, home=a.home))
        if tip:
            print(f"{'suggestion':>14}: {tip}")
        print("--- last log lines ---")
        print(logs.tail(a.id, 20, home=a.home))
    return 0


def cmd_logs(a) -> int:
    """Stream the log a chunk at a time (it may be large); with -f, until the job ends."""
    if _job(a.id, a.home) is None:
        return _err(f"no job {a.id}")
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
    offset = 0
    while True:
        ended = JobState(_job(a.id, a.home).state).finished       # before the read: nothing written after it is missed
        for data, offset in logs.chunks(a.id, offset, home=a.home):
            sys.stdout.write(decode(data))
        sys.stdout.flush()
        if not a.follow or ended:
            return 0
        time.sleep(0.3)


def cmd_cancel(a) -> int:
    try:
        job = queue.cancel(a.id, home=a.home, by=users.OPERATOR)
    except KeyError:
        return _err(f"no job {a.id}")
    print(f"job {a.id}: {job.state}" + (" (stopping)" if job.cancel_requested and not job.finished else ""))
    return 0


def cmd_retry(a) -> int:
    try:
        print(queue.retry(a.id, home=a.home, by=users.OPERATOR))
    except (KeyError, queue.SubmitError) as e:
        return _err(str(e).strip("'\""))
    return 0


def cmd_next(a) -> int:
    try:
        queue.run_next(a.id, by=users.OPERATOR, home=a.home)
    except (KeyError, queue.SubmitError) as e:
        return _err(str(e).strip("'\""))
    print(f"job {a.id}: place {queue.place_in_queue(a.id, home=a.home)} in the queue")
    return 0


def cmd_worker(a) -> int:
    try:
        Worker(a.home, burst=a.burst, cpu_slots=a.cpu_slots).run()
    except AlreadyRunning as e:
        return _err(str(e))
    return 0


def cmd_init(a) -> int:
    home = a.home
    for sub in ("jobs", "models", "datasets", "adapters", "evals", "envs", "uploads"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    store = open_store(home)
    print(f"workspace {home} (schema v{store.version})")
    return 0


def cmd_share(a) -> int:
    """The operator shares a registry entry with the class (or stops sharing it); audited."""
    try:
        e = ownership.share(a.type, a.name, not a.off, by=users.OPERATOR, home=a.home)
    except KeyError as e:
        return _err(e.args[0])
    print(f"{e.type} {e.name} ({e.owner}): {'shared' if e.shared else 'private'}")
    return 0


def cmd_tensorboard(a) -> int:
    """TensorBoard over the workspace's runs: each job's ``<id>/tensorboard`` folder under jobs/ is one run,
    found while it serves (new jobs appear), on the loopback address (reach it through the SSH tunnel)."""
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(a.home / "jobs"), "--host", "127.0.0.1",
           "--port", str(a.port)]
    print("$ " + " ".join(cmd), flush=True)
    os.execv(sys.executable, cmd)            # this process becomes TensorBoard: Ctrl-C or a signal stops it


def cmd_users(a) -> int:
    """Accounts for class mode (WORKBENCH_AUTH=accounts); one-time passwords are printed once, never stored."""
    if a.action not in ("list", "audit") and not a.name:
        return _err(f"users {a.action} needs " + ("the roster CSV file" if a.action == "import" else "an account name"))
    if a.action == "role" and not a.role_arg:
        return _err("users role needs the name and the new role: student or instructor")
    try:
        if a.action == "add":
            print(f"{a.name}\t{users.add(a.name, a.role, home=a.home)}")
        elif a.action == "import":
            created = users.import_roster(a.name, home=a.home)
            print("name\tone-time password")
            for name, password in created:
                print(f"{name}\t{password}")
            print(f"{len(created)} accounts created", file=sys.stderr)
        elif a.action == "reset":
            print(f"{a.name}\t{users.reset(a.name, home=a.home)}")
        elif a.action == "disable":
            users.disable(a.name, home=a.home)
            print(f"{a.name}: disabled, logged out everywhere")
        elif a.action == "role":
            users.set_role(a.name, a.role_arg, home=a.home)
            print(f"{a.name}: {a.role_arg}")
        elif a.action == "quota":
            users.set_quota(a.name, a.running, a.queued, a.gpu_hours, home=a.home)
            u = next(u for u in users.accounts(home=a.home) if u["name"] == a.name)
            print(f"{a.name}: {_caps(u)}")
        elif a.action == "list":
            for u in users.accounts(home=a.home):
                print(f"{u['name']:<20} {u['role']:<11} {'disabled' if u['disabled'] else 'active':<9} {_caps(u)}")
        elif a.action == "audit":
            for r in reversed(users.audit_log(limit=a.limit, home=a.home)):
                print(f"{_fmt_time(r['at'])}  {r['actor']:<12} {r['action']:<16} {r['target']:<16} "
                      f"{r['address']:<15} {r['detail']}")
    except KeyError as e:
        return _err(e.args[0])
    except (ValueError, OSError) as e:
        return _err(str(e))
    return 0


def cmd_labs(a) -> int:
    """Labs with an explicit actor (``--as``): list them with the actor's state, queue a check, verify an evidence
    file, export the class grid as CSV."""
    if a.action != "verify" and not a.actor:
        return _err(f"labs {a.action} needs --as NAME (the person acting)")
    if a.action in ("check", "verify") and not a.target:
        return _err("labs check needs a lab id" if a.action == "check" else "labs verify needs the evidence file")
    try:
        if a.action == "list":
            for row in labs.status(a.actor, home=a.home):
                lab = row["lab"]
                print(f"{lab.id:<18} {row['state']:<12} {lab.title.en}")
            if users.acting(a.actor, home=a.home).instructor:
                for problem in labs.problems(home=a.home):
                    print(f"not shown to students: {problem}")
        elif a.action == "check":
            ids = labs.recheck_all(a.target, a.actor, home=a.home) if a.all else [labs.submit_check(a.target, a.actor, a.student, home=a.home)]
            print("\n".join(map(str, ids)))
        elif a.action == "verify":
            record = labs.verify(Path(a.target).read_bytes(), home=a.home)
            print(f"genuine and unchanged: lab {record['lab']}, student {record['student']}, "
                  f"checked {_fmt_time(record['checked_at'])}")
        elif a.action == "export":
            sys.stdout.write(labs.grid_csv(a.actor, home=a.home))
    except errors.UserError as e:
        return _err(str(e))
    except OSError as e:
        return _err(str(e))
    return 0


def _caps(u: dict) -> str:
    return (f"running {_cap(u['max_running'], 'USER_MAX_RUNNING')}, queued {_cap(u['max_queued'], 'USER_MAX_QUEUED')}, "
            f"GPU-hours a day {_cap(u['max_gpu_hours'], 'USER_GPU_HOURS_PER_DAY')}")


def _cap(value, setting: str) -> str:
    """An account's cap as the CLI shows it: its override, or the class default."""
    if value is None:
        value, whose = defaults.setting(setting), " (class default)"
    else:
        whose = ""
    return (str(value) if value else "no cap") + whose


def _job_id(text: str) -> int:
    job_id = queue.parse_job_id(text)
    if job_id is None or job_id >= 2 ** 63:
        raise argparse.ArgumentTypeError(f"not a job id: {text!r}")
    return job_id


def _job(job_id: int, home: Path):
    return open_store(home).job(job_id)


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend", description="Lab Workbench job queue")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("submit", help="validate and queue a job")
    s.add_argument("kind")
    s.add_argument("spec", help="YAML or JSON file with the job's spec, or - for stdin")
    s.add_argument("--owner")
    s.add_argument("--priority", type=int, default=0)
    s.add_argument("--label")
    s.set_defaults(fn=cmd_submit)
    s = sub.add_parser("list", help="list jobs")
    s.add_argument("--state", choices=[x.value for x in JobState])
    s.add_argument("--kind")
    s.add_argument("--owner")
    s.add_argument("--limit", type=int, default=50)
    s.set_defaults(fn=cmd_list)
    for name, fn, helptext in (("show", cmd_show, "one job in detail"), ("cancel", cmd_cancel, "cancel a job"),
                               ("retry", cmd_retry, "queue a finished job's spec again"),
                               ("next", cmd_next, "move a queued job to the front of the queue")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("id", type=_job_id)
        s.set_defaults(fn=fn)
    s = sub.add_parser("logs", help="print a job's log")
    s.add_argument("id", type=_job_id)
    s.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    s.set_defaults(fn=cmd_logs)
    s = sub.add_parser("worker", help="run the worker daemon")
    s.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    s.add_argument("--cpu-slots", type=int)
    s.set_defaults(fn=cmd_worker)
    s = sub.add_parser("users", help="class accounts: add, import, reset, disable, role, list, audit")
    s.add_argument("action", choices=["add", "import", "reset", "disable", "role", "quota", "list", "audit"])
    s.add_argument("name", nargs="?", help="the account (for import: the roster CSV with name[,role] columns)")
    s.add_argument("role_arg", nargs="?", metavar="ROLE", choices=users.ROLES, help="for role: the new role")
    s.add_argument("--role", choices=users.ROLES, default="student", help="for add")
    s.add_argument("--limit", type=int, default=100, help="for audit: the newest N entries")
    s.add_argument("--running", type=int, help="for quota: most running jobs (0: no cap, -1: class default)")
    s.add_argument("--queued", type=int, help="for quota: most waiting jobs (0: no cap, -1: class default)")
    s.add_argument("--gpu-hours", type=float, help="for quota: most GPU-hours a day (0: no cap, -1: class default)")
    s.set_defaults(fn=cmd_users)
    s = sub.add_parser("share", help="share a registry entry with the class, or stop (--off)")
    s.add_argument("type", choices=[t.value for t in RegistryType if t != RegistryType.ANNOUNCEMENT])
    s.add_argument("name")
    s.add_argument("--off", action="store_true", help="make it private to its owner again")
    s.set_defaults(fn=cmd_share)
    s = sub.add_parser("tensorboard", help="serve TensorBoard over every job's events on 127.0.0.1")
    s.add_argument("--port", type=int, default=defaults.TENSORBOARD_PORT)
    s.set_defaults(fn=cmd_tensorboard)
    s = sub.add_parser("labs", help="labs: list, check, verify evidence, export the class grid")
    s.add_argument("action", choices=["list", "check", "verify", "export"])
    s.add_argument("target", nargs="?", help="for check: the lab id; for verify: the evidence file")
    s.add_argument("--as", dest="actor", help="the person acting (a student, or an instructor)")
    s.add_argument("--student", help="for check: whose lab (an instructor's choice; default: the actor)")
    s.add_argument("--all", action="store_true", help="for check: re-check every student (instructors)")
    s.set_defaults(fn=cmd_labs)
    s = sub.add_parser("init", help="create the workspace")
    s.set_defaults(fn=cmd_init)
    return p


def main(argv=None) -> int:
    os.umask(paths.PRIVATE_UMASK)
    a = parser().parse_args(argv)
    a.home = defaults.home()         # the operator's context: this workspace, acting as users.OPERATOR
    if a.cmd != "init" and (problem := queue.workspace_problem(home=a.home)):
        return _err(problem)
    try:
        return a.fn(a)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:          # `... list | head`: the reader left; no traceback at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
