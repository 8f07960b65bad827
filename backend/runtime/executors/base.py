"""What every cluster executor shares: a job's ``Status``, its ``Handle``, the launch file."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from backend.core.states import JobState

POLL_S = 1.0                     # ask a cluster about a job at most this often
SOON_S = 0.1                     # or this often once the job wrote its result (it is about to exit)
LAUNCHER = Path(__file__).with_name("launch.py")


@dataclass(frozen=True)
class Status:
    phase: str                   # "pending" (queued by the cluster), "running" or "ended"
    exit_code: int | None = None                     # the job process's exit (-N: signal N), when known
    verdict: tuple[JobState, str, str] | None = None  # (state, error class, message) when the cluster ended it
    node: str = ""               # the node it runs on, once the cluster says

    @property
    def ended(self) -> bool:
        return self.phase == "ended"


class Handle:
    """One job on a cluster; subclasses fill in ``_ask`` and ``_stop``."""
    executor = ""

    def __init__(self, ident: dict):
        self.ident = ident
        self._status = Status("pending")
        self._asked = 0.0

    def poll(self, soon: bool = False) -> Status:
        """The job's status, asked anew after POLL_S (SOON_S when ``soon``: the job said it is ending)."""
        if not self._status.ended and time.monotonic() - self._asked >= (SOON_S if soon else POLL_S):
            self._asked = time.monotonic()
            try:
                self._status = self._ask()
            except Exception as e:  # noqa: BLE001 - a cluster that does not answer now may answer later
                print(f"{self.executor} job {self.ident.get('id')}: no status ({type(e).__name__}: {e})", flush=True)
        return self._status

    def stop(self, force: bool) -> None:
        """The first stage of a cancel (the job gets SIGTERM), or the forced one; never raises (a job that
        ended meanwhile cannot be stopped)."""
        try:
            self._stop(force)
        except Exception as e:  # noqa: BLE001 - the next poll says how it ended
            print(f"{self.executor} job {self.ident.get('id')}: stop: {type(e).__name__}: {e}", flush=True)

    def _ask(self) -> Status:
        raise NotImplementedError

    def _stop(self, force: bool) -> None:
        raise NotImplementedError


def write_launch(job_dir: Path, cmd: list[str], env: dict[str, str], cwd: Path) -> Path:
    """The file launch.py reads on the node (readable by this user only: it holds the job's secrets)."""
    path = job_dir / "launch.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"cmd": cmd, "env": env, "cwd": str(cwd), "log": str(job_dir / "run.log")}, f)
    return path


def launch_command(python: str, job_dir: Path) -> list[str]:
    return [python, str(LAUNCHER), str(job_dir / "launch.json")]

