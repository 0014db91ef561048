"""The job spec: typed sections, loading with overrides, and checks (the bottom layer: it imports
nothing else of recall but errors)."""
from recall.spec.load import load_spec, parse_override, resolve_job_path
from recall.spec.sections import JOB_NAME_RE, JobSpec

__all__ = ["JobSpec", "JOB_NAME_RE", "load_spec", "parse_override", "resolve_job_path"]
