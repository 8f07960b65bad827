"""Experiment trackers for training jobs: every metric point a job reports (``job.metric``: loss, lr,
grad_norm, tokens/s, eval_loss, TRL's rewards) also goes to

- TensorBoard event files in the job folder (``<job_dir>/tensorboard/``, backend.core.defaults.TENSORBOARD_DIR),
  always, written offline by torch.utils.tensorboard; ``python -m backend tensorboard`` serves every job's;
- Weights & Biases and SwanLab when the spec's ``trackers`` names them, offline (no network, no key): their
  run folders are ``<job_dir>/wandb/`` and ``<job_dir>/swanlog/`` (backend.core.defaults.TRACKER_DIRS), which
  ``wandb sync`` / ``swanlab sync`` upload later with the student's own key.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from backend.core.defaults import TENSORBOARD_DIR, TRACKER_DIRS
from jobs.common import Job

Log = Callable[[int, dict], None]      # (step, {name: value}) -> written to the tracker


@contextlib.contextmanager
def _tensorboard(job: Job, config: dict) -> Iterator[Log]:
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(job.dir / TENSORBOARD_DIR))

    def log(step: int, values: dict) -> None:
        for name, value in values.items():
            writer.add_scalar(name, value, step)
        writer.flush()
    try:
        yield log
    finally:
        writer.close()


@contextlib.contextmanager
def _wandb(job: Job, config: dict) -> Iterator[Log]:
    folder = job.dir / TRACKER_DIRS["wandb"]
    folder.mkdir(exist_ok=True)
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(folder))   # this job's process only
    import wandb
    run = wandb.init(project="workbench", name=f"job-{job.id}", dir=str(folder), config=config,
                     settings=wandb.Settings(mode="offline", console="off", save_code=False, disable_git=True,
                                             x_disable_stats=True))
    try:
        yield lambda step, values: run.log(values, step=step)
    finally:
        run.finish()
        wandb.teardown()


@contextlib.contextmanager
def _swanlab(job: Job, config: dict) -> Iterator[Log]:
    import swanlab
    run = swanlab.init(project="workbench", experiment_name=f"job-{job.id}", logdir=str(job.dir / TRACKER_DIRS["swanlab"]),
                       mode="offline", config=config)
    try:
        yield lambda step, values: run.log(values, step=step)
    finally:
        run.finish()


TRACKERS = {"tensorboard": _tensorboard, "wandb": _wandb, "swanlab": _swanlab}


@contextlib.contextmanager
def trackers(job: Job, names: list[str], config: dict):
    """While open, each ``job.metric(step, **values)`` also goes to TensorBoard and to each tracker in
    ``names`` ("wandb", "swanlab"), one scalar per value under the metric's name (the job page's names)."""
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(TRACKERS[n](job, config)) for n in ["tensorboard", *names]]
        metric = job.metric

        def every(step: int, **values: float) -> None:
            metric(step, **values)
            for log in logs:
                log(step, values)

        job.metric = every
        try:
            yield
        finally:
            job.metric = metric


def tensorboard(job: Job):
    """TensorBoard only (the jobs that have no ``trackers`` field)."""
    return trackers(job, [], {})
