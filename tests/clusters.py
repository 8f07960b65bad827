"""Real one-node clusters on localhost for the executor tests: Slurm from Debian's packages (munge,
slurmctld, slurmd with a generated slurm.conf, state and logs in a temp folder) and a Ray head
(``ray start --head`` from the venv). Each start installs what is missing (apt-get, as root) or says why
it can't (``Unavailable``: the tests skip with that reason)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLURM_PACKAGES = ["slurm-wlm", "munge"]
GPU_FILES = ["/dev/null", "/dev/zero"]
GPUS = len(GPU_FILES)       # each test cluster declares this many GPUs (counted by the scheduler; no device behind them)


class Unavailable(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(fn, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}"
                               + (f"\n{log.read_text(errors='replace')[-3000:]}" if log and log.exists() else ""))
        time.sleep(0.2)
    return value


def install_slurm() -> None:
    if all(shutil.which(p) for p in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable("Slurm is not installed and this is not root with apt-get to install slurm-wlm and munge")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *SLURM_PACKAGES]
    if subprocess.run(cmd, env=env, capture_output=True).returncode:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            raise Unavailable(f"apt-get install {' '.join(SLURM_PACKAGES)} failed: {out.stderr[-500:]}")


class Slurm:
    """munged + slurmctld + slurmd (foreground children of this process) on a slurm.conf in ``root``.
    ``env``: what a worker needs to use the cluster."""

    def __init__(self, root: Path):
        install_slurm()
        if os.geteuid() != 0:
            raise Unavailable("a test Slurm cluster runs its daemons as root")
        self.root = root
        for d in ("state", "spool", "munge"):
            (root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(root / "munge", 0o700)
        self.procs: dict[str, subprocess.Popen] = {}
        sock = root / "munge" / "munge.sock"
        self._start("munged", ["munged", "-F", "--force", f"--socket={sock}", f"--pid-file={root}/munge/munged.pid",
                               f"--log-file={root}/munge/munged.log", f"--seed-file={root}/munge/seed"])
        _wait(sock.exists, 15, "munged's socket")
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True).stdout.splitlines()[0]
        self.node = node.split()[0].split("=", 1)[1]
        node = node.replace(f"NodeName={self.node}", f"NodeName={self.node} NodeAddr=127.0.0.1 Gres=gpu:{GPUS}")
        # Slurm counts a GPU per device file: character devices stand in for GPUs (nothing opens them)
        (root / "gres.conf").write_text("".join(f"NodeName={self.node} Name=gpu File={f}\n" for f in GPU_FILES))
        conf = root / "slurm.conf"
        conf.write_text("\n".join([
            "ClusterName=workbench-test", f"SlurmctldHost={self.node}(127.0.0.1)",
            "SlurmUser=root", "SlurmdUser=root", f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={sock}",
            f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool",
            f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
            f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core", "MpiDefault=none", "ReturnToService=2", "JobRequeue=0",
            "SlurmdTimeout=5", "MinJobAge=600", "SchedulerType=sched/builtin",
            "GresTypes=gpu", "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
            node, f"PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP", ""]))
        self.env = {"SLURM_CONF": str(conf)}
        os.environ["SLURM_CONF"] = str(conf)
        self._start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)])
        self.start_slurmd()

    def _start(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_slurmd(self) -> None:
        self._start("slurmd", ["slurmd", "-D", "-f", str(self.root / "slurm.conf")])
        _wait(lambda: "idle" in self.sinfo() or "mix" in self.sinfo(), 60, "the Slurm node to be idle",
              self.root / "slurmctld.log")

    def sinfo(self) -> str:
        return subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout

    def kill_slurmd(self) -> None:
        self.procs["slurmd"].send_signal(signal.SIGKILL)
        self.procs["slurmd"].wait()

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


class Ray:
    """A Ray head (``ray start --head --block`` from this interpreter's venv) with its dashboard on a free
    port; ``env``: WORKBENCH_RAY_ADDRESS for a worker."""

    def __init__(self, root: Path, token: str = ""):
        ray = Path(sys.executable).with_name("ray")
        if not ray.exists():
            raise Unavailable('ray is not installed in the venv: pip install "ray[default]" (requirements-dev.txt)')
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        # Ray's sockets live under its temp dir, and a socket path may not pass 107 bytes: a short one in /tmp
        self.temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        port, self.dashboard = _free_port(), _free_port()
        self.address = f"http://127.0.0.1:{self.dashboard}"
        # token: Ray's token authentication on (RAY_AUTH_MODE=token); the token reaches Ray through its environment
        auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if token else {"RAY_AUTH_MODE": "disabled"}
        log = open(root / "ray.out", "ab")
        self.proc = subprocess.Popen(
            [str(ray), "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={self.dashboard}", "--num-cpus=2", f"--num-gpus={GPUS}", "--include-dashboard=true",
             f"--temp-dir={self.temp}", "--disable-usage-stats",
             # every other port free too, so two heads can run side by side (one with token authentication)
             *(f"--{name}={_free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                      "metrics-export-port", "runtime-env-agent-port",
                                                      "ray-client-server-port", "node-manager-port",
                                                      "object-manager-port"))],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **auth})
        self.env = {"WORKBENCH_RAY_ADDRESS": self.address}
        from ray.job_submission import JobSubmissionClient

        def up():        # the dashboard answers before its agent takes jobs: up once a job can be submitted
            try:
                return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {token}"} if token else None
                                           ).submit_job(entrypoint="true")
            except Exception:  # noqa: BLE001 - not up yet
                assert self.proc.poll() is None, (root / "ray.out").read_text()[-3000:]
                return False
        _wait(up, 120, "the Ray head's Jobs API", root / "ray.out")

    def stop(self) -> None:
        """``ray start --block`` ends on SIGTERM, not always with all of Ray: the rest of its group goes too."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        shutil.rmtree(self.temp, ignore_errors=True)
