"""``POST /audit``: a labelled set as one zip (``labels.json`` + its images) audited as a job of the one job system;
``GET /jobs/{id}/report.html``: the job's self-contained HTML report.

Everything a client can get wrong is checked before the job exists, so it is a 4xx and not a failed job: the
archive (bounded: bytes by the body limit, ``XAAS_AUDIT_MAX_MEMBERS`` files, ``XAAS_AUDIT_MAX_INFLATED_BYTES``
inflated — declared sizes first, then counted while reading, so a zip bomb stops at the bound), ``labels.json`` (its
format, every listed image present), at most ``XAAS_AUDIT_MAX_IMAGES`` images, classes the model knows, the method
and layer, and every image and object mask decoded (in the I/O pool, bounded by the service's pixel limits; a mask
missing, undecodable, not of its image's size or empty is a 422 naming it). The job then explains
one image's pairs per step on the model's worker (so live requests wait for at most one image's explanation) and
measures and renders the report in the I/O pool when the last image is done.

The job's ``result`` is the JSON report (:class:`~service.api.schemas_audit.AuditReport`) with ``report_html`` =
``/jobs/{id}/report.html``; the HTML page is kept in the job record beside it (so any replica sharing the job store
serves it) and left out of ``GET /jobs/{id}``.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import PurePosixPath
from typing import Any

from ..api.schemas import AuditOptions, JobAccepted
from ..audit import AuditData, AuditRun, check_audit_method, public
from ..audit_report import render_html
from ..calibrate import prepare_pairs
from ..demo.data import LABELS_FILE, DatasetFormatError, parse_labels
from ..engine.passes import Progress
from ..errors import ConfigError, FieldError, InvalidDataset, InvalidOption, JobNotDone, NotFound, PayloadTooLarge
from ..jobs import JobWork
from ..runtime import Runtime

__all__ = ["AuditWork", "audit_html", "read_archive", "shown_result", "start_audit"]

#: The member of a finished audit job's result that holds the HTML page (not shown by ``GET /jobs/{id}``).
HTML_MEMBER = "_html"


def read_archive(data: bytes, *, max_members: int, max_bytes: int) -> dict[str, bytes]:
    """A zip's files by their ``/``-separated path relative to the folder holding ``labels.json`` (the zip of a
    folder works as well as a zip of its contents; subfolders are read too: the object masks, ``masks/00000_0.png``);
    bounded as the module docstring says, every file under that folder counting. Directories, ``__MACOSX/``,
    dot-files and dot-folders and names with ``..`` are skipped; files outside the ``labels.json`` folder are
    ignored."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in archive.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")
                 and not any(part.startswith(".") for part in PurePosixPath(i.filename).parts)]
    except (zipfile.BadZipFile, ValueError) as exc:
        raise InvalidDataset(f"not a readable zip archive: {exc}") from None
    if len(infos) > max_members:
        raise PayloadTooLarge(f"the zip archive holds {len(infos)} files, above the limit of {max_members} "
                              "(XAAS_AUDIT_MAX_MEMBERS)")
    labels = sorted((i for i in infos if PurePosixPath(i.filename).name == LABELS_FILE),
                    key=lambda i: len(PurePosixPath(i.filename).parts))
    if not labels:
        raise InvalidDataset(f"the zip archive holds no {LABELS_FILE}")
    root = PurePosixPath(labels[0].filename).parent.parts
    chosen = [i for i in infos if PurePosixPath(i.filename).parts[:len(root)] == root]
    declared = sum(i.file_size for i in chosen)
    if declared > max_bytes:
        raise PayloadTooLarge(f"the zip archive inflates to {declared} bytes, above {max_bytes} "
                              "(XAAS_AUDIT_MAX_INFLATED_BYTES)")
    out: dict[str, bytes] = {}
    read = 0
    try:
        for info in chosen:
            with archive.open(info) as member:
                blob = member.read(max_bytes - read + 1)     # never more than the bound, whatever the header says
            read += len(blob)
            if read > max_bytes:
                raise PayloadTooLarge(f"the zip archive inflates beyond {max_bytes} bytes "
                                      "(XAAS_AUDIT_MAX_INFLATED_BYTES)")
            out["/".join(PurePosixPath(info.filename).parts[len(root):])] = blob
    except (zipfile.BadZipFile, OSError, RuntimeError, EOFError, NotImplementedError) as exc:
        # RuntimeError: encrypted members; NotImplementedError: an unsupported compression method
        raise InvalidDataset(f"cannot read the zip archive: {exc}") from None
    return out


def _load(runtime: Runtime, model: Any, data: bytes, opts: AuditOptions, name: str) -> AuditData:
    """Archive → decoded, preprocessed set (runs in the I/O pool)."""
    s = runtime.settings
    files = read_archive(data, max_members=s.audit_max_members, max_bytes=s.audit_max_inflated_bytes)
    try:
        payload = json.loads(files[LABELS_FILE])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidDataset(f"{LABELS_FILE}: not valid JSON ({exc.__class__.__name__})") from None
    try:
        classes, entries = parse_labels(payload, LABELS_FILE)
    except DatasetFormatError as exc:
        raise InvalidDataset(str(exc)) from None
    if opts.limit is not None:
        entries = entries[:opts.limit]
    if len(entries) > s.audit_max_images:
        raise PayloadTooLarge(f"{len(entries)} images to audit, above the limit of {s.audit_max_images} "
                              "(XAAS_AUDIT_MAX_IMAGES; 'limit' audits the first N)")
    missing = [n for n, _ in entries if n not in files]
    if missing:
        raise InvalidDataset(f"{LABELS_FILE} lists images the archive does not hold: {', '.join(missing[:5])}"
                             + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    unknown = [c for c in classes if c not in model.labels]
    if unknown:
        raise InvalidDataset(f"{LABELS_FILE}: classes {unknown[:10]} are not labels of model '{model.name}'",
                             errors=[FieldError("classes", "not a label of the model")])
    try:
        inputs, sizes, pairs, names = prepare_pairs(
            classes, [(n, lambda n=n: files[n], objects) for n, objects in entries], model, where=name,
            need_boxes=False, limits=runtime.limits, keep_masks=not opts.boxless, read_file=files.__getitem__)
    except ConfigError as exc:
        raise InvalidDataset(str(exc)) from None
    if not pairs:
        raise InvalidDataset(f"{LABELS_FILE}: no labelled objects to audit")
    keep = set(names)
    images = {n: b for n, b in files.items() if n in keep}
    return AuditData(inputs, sizes, pairs, names, images.__getitem__, name)


async def start_audit(runtime: Runtime, data: bytes, opts: AuditOptions, name: str | None = None) -> JobAccepted:
    """Validate and decode the set now (4xx on any problem), then queue the audit job on the model's worker."""
    model = runtime.model(opts.model)
    if opts.layer is not None:
        model.capabilities.check_layer(model.name, opts.layer)
    from ..engine import get_method

    explainer = get_method(opts.method)       # 404 for an unknown method
    model.capabilities.check_method(model.name, explainer.name, layer=opts.layer)
    try:
        spec = check_audit_method(model, opts.method if opts.layer is None else f"{opts.method}@{opts.layer}")
    except ConfigError as exc:
        raise InvalidOption(str(exc), errors=[FieldError("method", "not applicable to this model")]) from None
    loaded = await runtime.in_thread(_load, runtime, model, data, opts, name or "upload.zip")
    run = AuditRun(model, spec, loaded, boxless=opts.boxless, border=opts.border, examples=opts.examples)

    def finish(done: AuditRun) -> dict[str, Any]:
        report = done.report()
        return {**public(report), HTML_MEMBER: render_html(report)}

    job = runtime.jobs.submit(runtime.batcher(model), AuditWork(run), kind="audit", model=model.name, finish=finish,
                              meta={"method": spec.text})
    return JobAccepted(id=job.id, status=job.status)


def shown_result(job_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """A finished audit's result as ``GET /jobs/{id}`` shows it: the report, and where its HTML page is."""
    return {**{k: v for k, v in result.items() if k != HTML_MEMBER}, "report_html": f"/jobs/{job_id}/report.html"}


def audit_html(runtime: Runtime, job_id: str) -> str:
    """The HTML report of a finished audit job."""
    job = runtime.jobs.get(job_id)
    if job.kind != "audit":
        raise NotFound(f"job {job_id!r} is a {job.kind} job, not an audit: it has no report")
    if job.status != "done" or job.result is None:
        raise JobNotDone(job_id, job.status)
    return str(job.result.get(HTML_MEMBER, ""))


class AuditWork(JobWork):
    """An audit as job work: one image's (image, class) pairs per step."""

    def __init__(self, run: AuditRun) -> None:
        self.run = run
        self.progress = Progress(0, run.total, "images")

    def advance(self) -> bool:
        finished = self.run.advance(1)
        self.progress = Progress(self.run.images_done, self.run.total, "images")
        return finished

    def outcome(self) -> AuditRun:
        return self.run
