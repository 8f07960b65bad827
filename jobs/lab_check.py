"""lab_check: run a lab's checks on its owner's artifacts (backend/pipeline/labs.py) and, when they pass, write the
signed evidence into ``artifacts/evidence.json``. A lab not passed yet is a successful job whose result says
what is missing (``passed: false``)."""
from __future__ import annotations

import json

from backend.pipeline import labs
from backend.kinds.lab_check import Spec
from jobs.common import Job, run


def main(spec: Spec, job: Job) -> dict:
    job_id, student = job.id, job.owner
    job.message(f"checking lab {spec.lab} for {student}")
    result = labs.run(spec.lab, student, job.home, job_id=job_id, log=job.message)
    if result["passed"]:
        (job.dir / "artifacts" / labs.EVIDENCE).write_text(json.dumps(result["evidence"], ensure_ascii=False,
                                                                      indent=2), encoding="utf-8")
    job.message("passed" if result["passed"] else "not passed yet")
    return result


if __name__ == "__main__":
    run(main, Spec)
