"""``POST /audit`` (a labelled zip audited as a job) and ``GET /jobs/{id}/report.html`` (its HTML report)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse

from ...handlers import audit as audit_handler
from ..deps import RuntimeDep
from ..inputs import read_file_request
from ..schemas import AuditOptions, JobAccepted, problem_responses

router = APIRouter(tags=["audit"])


def _request_body() -> dict[str, Any]:
    props = AuditOptions.model_json_schema().get("properties", {})
    archive = "A zip of labels.json (the xaas demo-data format; objects may omit 'box') and the images it lists."
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["archive"], "properties": {
            "archive": {"type": "string", "format": "binary", "description": archive}, **props}}},
        "application/json": {"schema": {"type": "object", "required": ["archive"], "additionalProperties": False,
                                        "properties": {"archive": {"type": "string", "contentEncoding": "base64",
                                                                   "description": archive}, **props}}}}}}


@router.post("/audit", status_code=202, response_model=JobAccepted,
             summary="Audit a labelled set (a zip) for dataset bias: an asynchronous job (poll Location)",
             responses={202: {"description": "The audit job was queued: poll GET /jobs/{id}; its result is the "
                                             "report, GET /jobs/{id}/report.html the HTML page",
                              "headers": {"Location": {"description": "/jobs/{id}", "schema": {"type": "string"}}}},
                        **problem_responses(400, 401, 404, 408, 413, 415, 422, 429, 503)},
             openapi_extra=_request_body())
async def start_audit(request: Request, runtime: RuntimeDep) -> JSONResponse:
    data, opts = await read_file_request(request, AuditOptions, field="archive",
                                         max_bytes=runtime.settings.max_body_bytes, what="the zip archive")
    job = await audit_handler.start_audit(runtime, data, opts)
    return JSONResponse(job.model_dump(mode="json"), status_code=202, headers={"Location": f"/jobs/{job.id}"})


@router.get("/jobs/{job_id}/report.html", response_class=HTMLResponse,
            summary="A finished audit job's self-contained HTML report (inline images, nothing fetched)",
            responses={200: {"content": {"text/html": {}}}, **problem_responses(401, 404, 409)})
async def audit_report(runtime: RuntimeDep, job_id: str = Path(max_length=64)) -> HTMLResponse:
    return HTMLResponse(audit_handler.audit_html(runtime, job_id))
