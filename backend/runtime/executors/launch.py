"""Run on a cluster node by the engine's interpreter (stdlib only, no imports from the workbench):
    python launch.py <job>/launch.json
Reads the job's command, environment and log from the file, deletes it (it holds the job's secrets),
appends stdout and stderr to run.log, and execs the command (same pid: the scheduler's signals reach the
job itself) in the job's environment plus what the scheduler set for it on this node: the GPUs it was given
(CUDA_VISIBLE_DEVICES) and Slurm's SLURM_* variables."""
import json
import os
import sys

path = sys.argv[1]
with open(path, encoding="utf-8") as f:
    spec = json.load(f)
os.unlink(path)
os.umask(0o077)                     # the job's files are its user's only, on every node
log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
os.dup2(log, 1)
os.dup2(log, 2)
os.close(log)
os.chdir(spec["cwd"])
node = {k: v for k, v in os.environ.items() if k == "CUDA_VISIBLE_DEVICES" or k.startswith("SLURM_")}
os.execve(spec["cmd"][0], spec["cmd"], {**spec["env"], **node})
