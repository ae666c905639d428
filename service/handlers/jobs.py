"""``/jobs/{id}``: poll or delete an asynchronous job."""

from __future__ import annotations

from ..api.schemas import JobStatus
from ..runtime import Runtime

__all__ = ["delete_job", "get_job"]


def get_job(runtime: Runtime, job_id: str) -> JobStatus:
    doc = runtime.jobs.get(job_id).to_json()
    if doc["kind"] == "audit" and "result" in doc:
        from .audit import shown_result

        doc["result"] = shown_result(job_id, doc["result"])
    return JobStatus.model_validate(doc)


def delete_job(runtime: Runtime, job_id: str) -> None:
    """Cancel an unfinished job or delete a finished one; either way ``GET`` answers 404 afterwards."""
    runtime.jobs.cancel(job_id)
