"""Experiment trackers for training jobs: every metric point a job reports (``job.metric``: loss, lr,
grad_norm, tokens/s, eval_loss, TRL's rewards) also goes to TensorBoard event files in the job folder
(``<job_dir>/tensorboard/``, backend.core.defaults.TENSORBOARD_DIR), written offline by
torch.utils.tensorboard. ``python -m backend tensorboard`` serves every job's folder.
"""
from __future__ import annotations

import contextlib

from backend.core.defaults import TENSORBOARD_DIR
from jobs.common import Job


@contextlib.contextmanager
def tensorboard(job: Job):
    """While open, each ``job.metric(step, **values)`` is also a TensorBoard scalar per value (tag = the
    metric's name, the same names the job page charts)."""
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(job.dir / TENSORBOARD_DIR))
    metric = job.metric

    def both(step: int, **values: float) -> None:
        metric(step, **values)
        for name, value in values.items():
            writer.add_scalar(name, value, step)
        writer.flush()

    job.metric = both
    try:
        yield writer
    finally:
        job.metric = metric
        writer.close()
