"""One module per job kind: its pydantic ``Spec`` (every field and default, written once) and,
where the kind needs them, its submit-time checks ``resources(spec) -> dict``. The backend validates
with these before a job is queued; the job module (``jobs/<kind>.py``) reads the same Spec."""
