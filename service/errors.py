"""Domain errors shared by every layer.

Each error class carries the HTTP status it maps to, a short machine-readable ``code`` and — for the errors a
client meets often — owns its message: callers pass the facts (``QueueFull(model, rows, limit, retry_after)``), the
class writes the sentence and the ``Retry-After`` header. The API layer turns every :class:`XaasError` into an RFC
9457 problem+json document; field-level problems travel as :class:`FieldError` items, the only shape of ``errors``.

Engine and imaging code raise these instead of bare exceptions so that a client always learns *what* was wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class FieldError:
    """One field-level problem: which option (``field``, dotted for nested members) and what is wrong with it."""

    field: str
    message: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


class XaasError(Exception):
    """Base class: an error with a client-facing title/detail and an HTTP status."""

    status: int = 500
    code: str = "internal-error"
    title: str = "Internal error"

    def __init__(self, detail: str, *, errors: Iterable[FieldError] | None = None, retry_after: int | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors: list[FieldError] = list(errors or [])
        self.retry_after = retry_after
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers["Retry-After"] = str(int(retry_after))


def _shown(names: Sequence[str], limit: int = 12) -> str:
    """The last ``limit`` names (the most useful ones: layers near the head, recent entries), and how many more."""
    if not names:
        return "none"
    head = ", ".join(names[-limit:])
    return head + (f" (and {len(names) - limit} earlier ones)" if len(names) > limit else "")


# ------------------------------------------------------------------------------------------------- 4xx


class BadOption(XaasError):
    """A malformed request: unknown option, wrong type, repeated single-valued field, broken body."""

    status, code, title = 400, "bad-option", "Malformed option"


class NotFound(XaasError):
    status, code, title = 404, "not-found", "Not found"


class UnknownModel(NotFound):
    def __init__(self, name: str, available: Sequence[str]):
        super().__init__(f"unknown model {name!r}; available: {', '.join(available)}",
                         errors=[FieldError("model", "unknown model")])


class UnknownMethod(NotFound):
    def __init__(self, name: str, valid: Sequence[str]):
        super().__init__(f"unknown explanation method {name!r}; valid methods: {', '.join(valid)}",
                         errors=[FieldError("method", "unknown method")])


class UnknownJob(NotFound):
    def __init__(self, job_id: str, ttl: float):
        super().__init__(f"unknown job {job_id!r} (finished jobs are kept for {ttl:g} s; deleted ones are gone)")


class PayloadTooLarge(XaasError):
    status, code, title = 413, "payload-too-large", "Payload too large"


class TooManyPatches(PayloadTooLarge):
    """A mil model's image would make more patches than its entry allows (``max_patches``): refused from the header,
    before the pixels are decoded."""

    def __init__(self, width: int, height: int, rows: int, cols: int, patch: int, stride: int, limit: int):
        super().__init__(f"image is {width}×{height}: {rows}×{cols} = {rows * cols} patches of {patch} px at stride "
                         f"{stride}, above the model's limit of {limit} (max_patches)",
                         errors=[FieldError("image", f"at most {limit} patches (max_patches)")])


class UnsupportedMediaType(XaasError):
    status, code, title = 415, "unsupported-media-type", "Unsupported media type"


class InvalidImage(XaasError):
    """The bytes were received but are not a decodable image (truncated, corrupt, unknown format)."""

    status, code, title = 422, "invalid-image", "Image could not be decoded"


class InvalidDataset(XaasError):
    """A labelled set (``POST /audit``'s zip) that cannot be read: a broken archive, a bad ``labels.json``, a missing
    image, classes the model does not know."""

    status, code, title = 422, "invalid-dataset", "Dataset could not be read"


class JobNotDone(XaasError):
    """A job's product asked for before the job is done."""

    status, code, title = 409, "job-not-done", "Job not done"

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id!r} is {status}; its report exists once it is done")


class InvalidOption(XaasError):
    """An option was well-formed but its value is not acceptable (out of range, unknown class label...)."""

    status, code, title = 422, "invalid-option", "Invalid option value"


class UnknownLayer(InvalidOption):
    """A layer name the model does not have (or one that cannot be explained); lists the valid ones."""

    def __init__(self, layer: str | None, model: str, valid: Sequence[str], *, field: str = "layer"):
        shown = _shown(valid) if valid else "none (the model cannot be hooked)"
        super().__init__(f"unknown layer {layer!r} for model '{model}'; layers with a spatial output: {shown}",
                         errors=[FieldError(field, "not a layer with a spatial output")])


class MethodNotApplicable(InvalidOption):
    """The method cannot explain this model (the applicability probe found why at load time)."""

    def __init__(self, method: str, model: str, reason: str):
        super().__init__(f"method '{method}' cannot explain model '{model}': {reason}",
                         errors=[FieldError("method", reason)])


class TooManyTargets(InvalidOption):
    def __init__(self, count: int, limit: int):
        super().__init__(f"{count} targets requested; the limit is {limit} (XAAS_MAX_TARGETS)",
                         errors=[FieldError("target", f"at most {limit} targets")])


class QueueFull(XaasError):
    status, code, title = 429, "queue-full", "Too many requests queued"

    def __init__(self, model: str, rows: int, limit: int, retry_after: int):
        super().__init__(f"model '{model}' has {rows} rows queued (limit {limit}); retry shortly",
                         retry_after=retry_after)


class TooManyJobs(QueueFull):
    """The job queue's bound (``XAAS_MAX_JOBS`` unfinished jobs) rather than a model's row queue."""

    code, title = "too-many-jobs", "Too many jobs"

    def __init__(self, active: int, limit: int, retry_after: int):
        XaasError.__init__(self, f"{active} jobs are unfinished (limit {limit}, XAAS_MAX_JOBS); retry later",
                           retry_after=retry_after)


# ------------------------------------------------------------------------------------------------- 5xx


class ServiceUnavailable(XaasError):
    status, code, title = 503, "unavailable", "Service unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5, **kwargs: object):
        super().__init__(detail, retry_after=retry_after, **kwargs)  # type: ignore[arg-type]


class ShuttingDown(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__("the service is shutting down")


class ModelNotReady(ServiceUnavailable):
    def __init__(self, name: str) -> None:
        super().__init__(f"model {name!r} is not loaded yet")


class OutOfMemory(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__("the model ran out of memory on this request")


class DeadlineExceeded(XaasError):
    status, code, title = 504, "deadline-exceeded", "Request deadline exceeded"


class PacsUnavailable(XaasError):
    """The PACS could not be reached or answered with an error (its own message is never passed on)."""

    status, code, title = 502, "pacs-unavailable", "PACS error"


class PacsTimeout(XaasError):
    status, code, title = 504, "pacs-timeout", "PACS did not answer in time"

    def __init__(self, operation: str, seconds: float) -> None:
        super().__init__(f"the PACS did not answer the {operation} request within {seconds:g} s")


class ModelExecutionError(XaasError):
    """The model failed on a job for a reason that is not the client's fault."""

    status, code, title = 500, "model-error", "Model execution failed"


class ConfigError(Exception):
    """A broken registry entry or setting: names the entry and the field, fails start-up."""


class InvalidMask(ConfigError):
    """An object's mask in a labelled set that cannot be used: ``where`` names the set and the image, ``path`` the
    mask file (as ``labels.json`` gives it), ``reason`` what is wrong (missing, not an image, wrong size, empty)."""

    def __init__(self, where: str, path: str, reason: str) -> None:
        super().__init__(f"{where}: mask {path!r}: {reason}")
        self.path = path
