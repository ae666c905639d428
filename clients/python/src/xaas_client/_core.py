"""The I/O-free heart of the client, shared by :class:`Client` and :class:`AsyncClient`.

Each endpoint function returns a :class:`Call`: what to send and how to read the answer. :func:`exchange` is the
retry loop written as a generator that *asks* for I/O (``Send`` / ``Sleep``) instead of doing it, so the blocking and
the asyncio clients are two ten-line drivers over the same logic rather than two copies of it.
"""

from __future__ import annotations

import base64
import io
import numbers
import random
import time
import zipfile
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from .errors import (
    JobCancelled,
    JobFailed,
    JobTimeout,
    NotFound,
    UnexpectedResponse,
    XaasConnectionError,
    XaasError,
    error_from_response,
)
from .images import ImageInput, encode_image
from .retry import RetryPolicy
from .types import (
    ActivationResponse,
    ExplainResponse,
    FilterResponse,
    Health,
    Job,
    LocalizeResponse,
    MethodInfo,
    ModelDetail,
    ModelInfo,
    PredictResponse,
    Readiness,
)

T = TypeVar("T")
Target = int | str
Targets = Target | Sequence[Target] | None
FormValue = str | int | float | bool | Sequence[str | int | float | bool] | None


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call described as data: method, path, form fields, the image part, and the result parser."""

    method: str
    path: str
    parse: Callable[[Any], T]
    fields: dict[str, list[str]] = field(default_factory=dict)
    image: tuple[str, bytes, str] | None = None
    accept: frozenset[int] = frozenset({200})
    json: Any = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    #: For calls that start a job (``Prefer: respond-async``): how to read the job's result once it is done; the
    #: clients then return a job handle instead of the bare :class:`Job`.
    job_result: Callable[[Job], Any] | None = None
    #: The form field of the file part (``image``; ``archive`` for ``POST /audit``).
    file_field: str = "image"
    #: Parse the body as text (an HTML page) rather than JSON.
    text: bool = False

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """A fresh request per attempt: a multipart stream is not guaranteed to be re-readable."""
        headers = self.headers or None
        if self.image is not None:
            return http.build_request(self.method, self.path, data=self.fields, files={self.file_field: self.image},
                                      headers=headers)
        if self.json is not None:
            return http.build_request(self.method, self.path, json=self.json, headers=headers)
        return http.build_request(self.method, self.path, params=self.params or None, headers=headers)

    def result(self, response: httpx.Response) -> T:
        try:
            if response.status_code == 204:  # no content: the parser gets None
                return self.parse(None)
            return self.parse(response.text if self.text else response.json())
        except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
            raise UnexpectedResponse(f"{self.method} {self.path}: response does not match the API schema: {exc}",
                                     status=response.status_code, request_id=response.headers.get("x-request-id"),
                                     response=response) from exc


@dataclass(frozen=True)
class Send:
    """Step of :func:`exchange`: send the call once; the driver answers with the response or throws the error in."""


@dataclass(frozen=True)
class Sleep:
    """Step of :func:`exchange`: wait ``seconds`` before the next attempt."""

    seconds: float


SEND = Send()
Exchange = Generator[Send | Sleep, httpx.Response | None, T]
# A multi-call operation (poll a job, look up the default model): yields the calls to make (the driver sends each
# through :func:`exchange` and sends back its result, or throws its XaasError in) and the pauses between them.
Flow = Generator["Call[Any] | Sleep", Any, T]

# Failures before the request reached the server: safe to repeat for any method.
_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)


def exchange(call: Call[T], policy: RetryPolicy, *, clock: Callable[[], float] = time.monotonic,
             rand: Callable[[], float] = random.random) -> Exchange[T]:
    """Attempt ``call`` until it succeeds or the policy gives up; returns the parsed result or raises XaasError."""
    start = clock()
    attempt = 0
    while True:
        attempt += 1
        error: XaasError
        try:
            response = yield SEND
        except httpx.TransportError as exc:
            error = XaasConnectionError(f"{call.method} {call.path}: {_describe(exc)}")
            error.__cause__ = exc
            retryable = policy.retry_connect and isinstance(exc, _CONNECT_ERRORS)
        else:
            assert response is not None, "the driver must send the response"
            if response.status_code in call.accept:
                return call.result(response)
            error = error_from_response(response)
            retryable = response.status_code in policy.statuses
        wait = policy.next_delay(attempt, error.retry_after, clock() - start, rand) if retryable else None
        if wait is None:
            raise error
        yield Sleep(wait)


def _describe(exc: httpx.TransportError) -> str:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "connection failed"
    return f"{kind} ({type(exc).__name__}: {exc or 'no detail'})"


# --- form encoding ------------------------------------------------------------------------------------------------

def _text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):  # before Integral: bool is an int
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    raise TypeError(f"cannot send an option value of type {type(value).__name__}")


def form_fields(options: dict[str, FormValue]) -> dict[str, list[str]]:
    """Options → form fields: ``None`` is left out (the server's default applies), sequences repeat the field."""
    out: dict[str, list[str]] = {}
    for name, value in options.items():
        if value is None:
            continue
        values: Iterable[Any] = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
        out[name] = [_text(v) for v in values]
    return out


def _image_call(path: str, parse: Callable[[Any], T], image: ImageInput, options: dict[str, FormValue]) -> Call[T]:
    return Call("POST", path, parse, form_fields(options), tuple(encode_image(image)))  # type: ignore[arg-type]


def _job_call(path: str, image: ImageInput, options: dict[str, FormValue], result: Callable[[Job], Any]) -> Call[Job]:
    """The same request with ``Prefer: respond-async``: the server answers 202 with a job at once."""
    return Call("POST", path, Job.model_validate, form_fields(options), tuple(encode_image(image)),  # type: ignore[arg-type]
                accept=frozenset({202}), headers={"Prefer": "respond-async"}, job_result=result)


# --- endpoints: one function each, wrapped into methods by client.py -------------------------------------------------

def health() -> Call[Health]:
    """Liveness (``GET /healthz``): answers while the process serves, even before models are loaded."""
    return Call("GET", "/healthz", Health.model_validate)


def ready() -> Call[Readiness]:
    """Readiness (``GET /readyz``). Returns the state rather than raising on 503 ("loading" is an answer, not an
    error); check ``.is_ready``."""
    return Call("GET", "/readyz", Readiness.model_validate, accept=frozenset({200, 503}))


def models() -> Call[list[ModelInfo]]:
    """The loaded models (``GET /models``)."""
    return Call("GET", "/models", lambda body: [ModelInfo.model_validate(m) for m in body["models"]])


def model(name: str) -> Call[ModelDetail]:
    """One model with its labels (``GET /models/{name}``); :class:`NotFound` for an unknown name."""
    return Call("GET", f"/models/{quote(name, safe='')}", ModelDetail.model_validate)


def methods() -> Call[list[MethodInfo]]:
    """Explanation methods with their family and parameters (``GET /methods``)."""
    return Call("GET", "/methods", lambda body: [MethodInfo.model_validate(m) for m in body["methods"]])


def predict(image: ImageInput, *, model: str | None = None, target: Targets = None, top_k: int | None = None,
            frame: int | None = None, outputs: str | Sequence[str] | None = None) -> Call[PredictResponse]:
    """Scores of ``image`` (``POST /predict``): the ``target`` classes (index or label, one or many), else the
    ``top_k`` best (server default 5). ``frame`` picks a frame of a multi-frame DICOM/GIF/TIFF.

    Segmentation models answer per class ``pixel_fraction``, ``mean_probability`` and a ``mask`` PNG
    (``mask_array()``); ``outputs`` picks ``mask`` (server default) and/or ``labelmap`` (``labelmap_array()``)."""
    return _image_call("/predict", PredictResponse.model_validate, image,
                       {"model": model, "target": _targets(target), "top_k": top_k, "frame": frame,
                        "outputs": _list(outputs)})


Region = str | Sequence[float] | bytes | Any
"""A segmentation region: ``"predicted"``, ``"all"``, a box ``(x0, y0, x1, y1)`` in original pixels, or a mask — PNG
file bytes, a :class:`pathlib.Path` to a PNG, a PIL image or a 2-D NumPy array (non-zero = inside) at the image's
size. A ``str`` is sent as written (``"x0,y0,x1,y1"`` and ``"mask:<base64>"`` too), never read as a path."""


def region_text(region: Region | None) -> str | None:
    """The ``region`` option's text: names and ``x0,y0,x1,y1`` / ``mask:...`` strings pass through, a box becomes
    ``x0,y0,x1,y1``, a mask ``mask:<base64 PNG>``."""
    if region is None or isinstance(region, str):
        return region
    if isinstance(region, (bytes, bytearray, memoryview)):
        return "mask:" + base64.b64encode(bytes(region)).decode("ascii")
    if isinstance(region, (list, tuple)):
        if len(region) != 4 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in region):
            raise ValueError(f"a box region is (x0, y0, x1, y1), got {region!r}")
        return ",".join(_text(v) for v in region)
    encoded = encode_image(region)  # a Path: its bytes; a PIL image or an array: PNG (bool arrays → 0/255)
    return "mask:" + base64.b64encode(encoded.content).decode("ascii")


DetectionRef = int | str | Sequence[float]
"""A detection of a detector: its ``id`` from :meth:`predict`, or a box ``(x0, y0, x1, y1)`` in original pixels
(with ``target`` = its label; the server matches it by IoU >= 0.5)."""


def detection_text(detection: DetectionRef | None) -> str | None:
    """The ``detection`` option's text: an id, or ``x0,y0,x1,y1``."""
    if detection is None or isinstance(detection, str):
        return detection
    if isinstance(detection, int) and not isinstance(detection, bool):
        return str(detection)
    if isinstance(detection, (list, tuple)) and len(detection) == 4 and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in detection):
        return ",".join(_text(v) for v in detection)
    raise ValueError(f"a detection is an id or a box (x0, y0, x1, y1), got {detection!r}")


def _list(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def explain(method: str, image: ImageInput, *, model: str | None = None, target: Targets = None,
            top_k: int | None = None, layer: str | None = None, outputs: str | Sequence[str] = ("heatmap",),
            colormap: str | None = None, alpha: float | None = None, frame: int | None = None, wait: bool = True,
            region: Region | None = None, detection: DetectionRef | None = None, box_regression: bool | None = None,
            **method_params: FormValue) -> Call[ExplainResponse]:
    """Heatmaps of ``method`` for each target (``POST /explain/{method}``); one explanation per target.

    ``outputs``: any of ``heatmap``, ``overlay`` (uses ``colormap``/``alpha``), ``raw``. ``layer`` selects the
    layer of CAM methods. ``region`` (segmentation models): where each class is explained — ``"predicted"``
    (server default), ``"all"``, a box ``(x0, y0, x1, y1)`` in original pixels, or a mask (PNG bytes, PIL image or
    2-D array, non-zero = inside). ``detection`` (detection models): the detection explained — its ``id`` from
    :meth:`predict`, or a box ``(x0, y0, x1, y1)`` with ``target`` = its label; without it the ``top_k`` most
    confident detections; ``box_regression`` adds the box's IoU to the explained score. Other keywords are the
    method's own parameters (see :meth:`methods`), e.g. ``window=16, stride=8`` for occlusion,
    ``weights="confidence"`` for ``attention-mil`` (with ``mil-gradcam`` the methods of ``task: mil`` models; the
    others are refused on them, :class:`InvalidInput` with the reason; an image of more than the model's
    ``max_patches`` patches is :class:`PayloadTooLarge`). ``wait=False`` runs it as a job on the server
    (``Prefer: respond-async``, for slow methods such as Score-CAM or RISE on large models) and returns a
    :class:`JobHandle` at once: ``.progress``, ``.refresh()``, ``.result(timeout)`` (the same
    :class:`ExplainResponse`), ``.cancel()``.
    """
    options: dict[str, FormValue] = {"model": model, "target": _targets(target), "top_k": top_k, "layer": layer,
                                     "outputs": [outputs] if isinstance(outputs, str) else list(outputs),
                                     "colormap": colormap, "alpha": alpha, "frame": frame,
                                     "region": region_text(region), "detection": detection_text(detection),
                                     "box_regression": box_regression}
    path = f"/explain/{quote(method, safe='')}"
    if not wait:
        return _job_call(path, image, {**method_params, **options}, Job.explanation)  # type: ignore[return-value]
    return _image_call(path, ExplainResponse.model_validate, image, {**method_params, **options})


def localize(image: ImageInput, *, method: str | None = None, threshold: float | None = None,
             all_components: bool | None = None, min_area: int | None = None, model: str | None = None,
             target: Targets = None, top_k: int | None = None, layer: str | None = None, frame: int | None = None,
             wait: bool = True, region: Region | None = None, detection: DetectionRef | None = None,
             box_regression: bool | None = None, **method_params: FormValue) -> Call[LocalizeResponse]:
    """Boxes derived from heatmaps (``POST /localize``), as ``(x0, y0, x1, y1)`` in original-image pixels.

    ``threshold`` is a fraction of the map's maximum; ``all_components`` boxes every connected region rather than
    the largest, keeping those of at least ``min_area`` pixels. For multi-label models without ``target``, every
    class with probability >= 0.5 is boxed. Segmentation models explain each class over ``region`` (as for
    :meth:`explain`) and add ``mask_boxes``: the components of the model's predicted mask of each class, with its
    mean probability inside. Detection models explain ``detection`` (as for :meth:`explain`); each box then
    carries the detection's own box beside the explanation's. ``wait=False``: as a job, returning a :class:`JobHandle`.
    """
    options: dict[str, FormValue] = {"method": method, "threshold": threshold, "all_components": all_components,
                                     "min_area": min_area, "model": model, "target": _targets(target),
                                     "top_k": top_k, "layer": layer, "frame": frame, "region": region_text(region),
                                     "detection": detection_text(detection), "box_regression": box_regression}
    if not wait:
        return _job_call("/localize", image, {**method_params, **options}, Job.localization)  # type: ignore[return-value]
    return _image_call("/localize", LocalizeResponse.model_validate, image, {**method_params, **options})


def _targets(target: Targets) -> list[Target] | None:
    if target is None:
        return None
    if isinstance(target, (str, int)):
        return [target]
    return list(target)


# --- feature visualisation and jobs -----------------------------------------------------------------------------------

def activations(image: ImageInput, *, model: str | None = None, layer: str | None = None, top: int | None = None,
                channel: int | None = None, frame: int | None = None) -> Call[ActivationResponse]:
    """A layer's activations for ``image`` (``POST /activations``): the ``top`` channels by mean activation as a
    grid PNG (server default 16), or with ``channel`` that one channel at native resolution. ``layer`` defaults to
    the model's target layer; see ``grid_png()`` / ``channel_png()`` on the result."""
    return _image_call("/activations", ActivationResponse.model_validate, image,
                       {"model": model, "layer": layer, "top": top, "channel": channel, "frame": frame})


def filters(model: str | None = None, layer: str | None = None) -> Flow[FilterResponse]:
    """A convolution layer's filters as one PNG grid (``GET /models/{name}/filters``); ``model`` defaults to the
    server's default model (one extra ``GET /models``), ``layer`` to the first convolution."""
    name = yield from _model_name(model)
    return (yield Call("GET", f"/models/{quote(name, safe='')}/filters", FilterResponse.model_validate,
                       params={"layer": layer} if layer is not None else {}))


def start_class_impression(model: str | None, target: Target, **params: Any) -> Flow[Job]:
    """Start a class-impression job (``POST /models/{name}/class-impressions``) and return it at once (status
    ``queued``); poll with :meth:`job`. ``params``: ``steps``, ``lr``, ``tv_weight``, ``l2_weight``, ``jitter``,
    ``rotation``, ``scale=(lo, hi)``, ``seed``. ``model=None`` uses the server's default model."""
    name = yield from _model_name(model)
    body = {"target": target, **{k: list(v) if isinstance(v, tuple) else v for k, v in params.items() if v is not None}}
    return (yield Call("POST", f"/models/{quote(name, safe='')}/class-impressions", Job.model_validate, json=body,
                       accept=frozenset({200, 202})))


def job(id: str) -> Call[Job]:
    """A job's status, progress and (when done) result (``GET /jobs/{id}``); :class:`NotFound` once expired."""
    return Call("GET", f"/jobs/{quote(id, safe='')}", Job.model_validate)


def audit(data: str | PathLike[str] | bytes, *, model: str | None = None, method: str | None = None,
          layer: str | None = None, boxless: bool | None = None, limit: int | None = None,
          border: float | None = None, examples: int | None = None) -> Call[Job]:
    """Audit a labelled set for dataset bias (``POST /audit``): ``data`` is a folder (``labels.json`` and its images,
    zipped here), a ``.zip`` path or zip bytes. Always a job: returns a :class:`JobHandle` at once
    (``.job.progress`` counts images); ``.result()`` is the report (a dict: per class its mass shares, agreement,
    ``flags``; ``flagged``); :meth:`audit_report_html` fetches the HTML page. ``boxless`` ignores the boxes
    (automatic when the labels have none); ``limit`` audits the first N images."""
    options: dict[str, FormValue] = {"model": model, "method": method, "layer": layer, "boxless": boxless,
                                     "limit": limit, "border": border, "examples": examples}
    return Call("POST", "/audit", Job.model_validate, form_fields(options), ("set.zip", _archive(data),
                "application/zip"), accept=frozenset({202}), job_result=Job.audit_report, file_field="archive")


def _archive(data: str | PathLike[str] | bytes) -> bytes:
    """Zip bytes of a folder (its files and subfolders, e.g. the object masks ``masks/00000_0.png``, by their paths
    relative to it; dot-files and dot-folders left out), of a zip file, or given as bytes."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    path = Path(data)
    if path.is_dir():
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(path.rglob("*")):
                rel = file.relative_to(path)
                if file.is_file() and not any(part.startswith(".") for part in rel.parts):
                    archive.write(file, rel.as_posix())
        return buf.getvalue()
    return path.read_bytes()


def audit_report_html(id: str) -> Call[str]:
    """A finished audit job's self-contained HTML report (``GET /jobs/{id}/report.html``)."""
    return Call("GET", f"/jobs/{quote(id, safe='')}/report.html", str, text=True)


def cancel_job(id: str) -> Call[None]:
    """Cancel a queued or running job, or delete a finished one (``DELETE /jobs/{id}``)."""
    return Call("DELETE", f"/jobs/{quote(id, safe='')}", lambda _: None, accept=frozenset({200, 202, 204}))


def wait_for_job(started: Job, *, timeout: float | None, poll_interval: float = 0.5,
                 on_progress: Callable[[Job], None] | None = None, cancel_on_timeout: bool = False) -> Flow[Job]:
    """Poll a job until it ends; returns it done. :class:`JobFailed` / :class:`JobCancelled` when it ends otherwise
    (a job deleted meanwhile counts as cancelled), :class:`JobTimeout` after ``timeout`` seconds (``None``: wait
    as long as it takes) — cancelling the job first when ``cancel_on_timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    current = started
    while True:
        if on_progress is not None:
            on_progress(current)
        if current.finished:
            break
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            if cancel_on_timeout:
                try:
                    yield cancel_job(current.id)
                except XaasError:
                    pass  # best effort: the job may have just ended or expired
            cancelled = " (cancelled)" if cancel_on_timeout else ""
            raise JobTimeout(f"job {current.id} did not finish within {timeout:g} s{cancelled}", job=current)
        yield Sleep(poll_interval if remaining is None else min(poll_interval, remaining))
        try:
            current = yield job(current.id)
        except NotFound:  # deleted (cancelled) by another client, or expired: it will never finish
            raise JobCancelled(f"job {current.id} was cancelled or has expired", job=current) from None
    if current.status == "failed":
        raise JobFailed(f"job {current.id} failed: {current.error or 'no reason given'}", job=current)
    if current.status == "cancelled":
        raise JobCancelled(f"job {current.id} was cancelled", job=current)
    return current


def class_impression(model: str | None, target: Target, *, poll_interval: float = 0.5, timeout: float = 120.0,
                     on_progress: Callable[[Job], None] | None = None, **params: Any) -> Flow[Job]:
    """Start a class-impression job and poll it until it ends; returns the done :class:`Job` (``image_png()``).

    Raises :class:`JobFailed` / :class:`JobCancelled` when it ends otherwise, and :class:`JobTimeout` (after
    cancelling the job) when it is not done within ``timeout`` seconds. ``on_progress(job)`` is called with each
    polled state (a plain function, also with :class:`AsyncClient`). ``params`` as for :meth:`start_class_impression`.
    """
    current = yield from start_class_impression(model, target, **params)
    return (yield from wait_for_job(current, timeout=timeout, poll_interval=poll_interval, on_progress=on_progress,
                                    cancel_on_timeout=True))


def _model_name(model: str | None) -> Flow[str]:
    """``model``, or the server's default model (``GET /models``) when ``None``."""
    if model is not None:
        return model
    listed = yield models()
    if not listed:
        raise NotFound("the server has no models loaded", status=None)
    return next((m.name for m in listed if m.default), listed[0].name)


@dataclass(frozen=True)
class DicomwebResult:
    """The answer of ``/dicomweb/explain/{method}`` or ``/dicomweb/localize``: the usual body, the SOP Instance UIDs
    the server stored in the PACS, and the DICOM results (base64 Part 10 by kind, one mapping per explanation)."""

    body: dict[str, Any]
    stored: list[str]

    @property
    def dicom(self) -> list[dict[str, str]]:
        if "explanations" in self.body:
            return [item.get("dicom") or {} for item in self.body["explanations"]]
        return [self.body.get("dicom") or {}]

    def datasets(self) -> list[dict[str, Any]]:
        """The DICOM results as ``pydicom.Dataset`` (needs the ``dicom`` extra: ``pip install xaas-client[dicom]``)."""
        import base64
        import io

        try:
            import pydicom
        except ImportError as exc:  # the optional extra is missing: say which one
            raise ImportError("DicomwebResult.datasets() needs pydicom: pip install 'xaas-client[dicom]'") from exc
        return [{kind: pydicom.dcmread(io.BytesIO(base64.b64decode(blob))) for kind, blob in item.items()}
                for item in self.dicom]


def _dicomweb_result(body: Any) -> DicomwebResult:
    return DicomwebResult(body=body, stored=list(body.get("stored", [])))


def explain_dicomweb(method: str | None, study: str, series: str, instance: str, *, store: bool = False,
                     outputs: Sequence[str] = ("dicom-pm",), **options: Any) -> Call[DicomwebResult]:
    """Explain an instance of the server's PACS (``POST /dicomweb/explain/{method}``; ``method=None``:
    ``/dicomweb/localize``, better asked with :func:`localize_dicomweb`); with ``store`` the server writes its DICOM
    results back by STOW-RS."""
    path = "/dicomweb/localize" if method is None else f"/dicomweb/explain/{quote(method, safe='')}"
    return _dicomweb_call(path, study, series, instance, store, outputs, options)


def localize_dicomweb(study: str, series: str, instance: str, *, method: str | None = None, store: bool = False,
                      outputs: Sequence[str] = ("dicom-sr",), **options: Any) -> Call[DicomwebResult]:
    """Boxes for an instance of the server's PACS (``POST /dicomweb/localize``; ``method``: the heatmap method,
    default the server's); with ``store`` the server writes the SR back by STOW-RS."""
    return _dicomweb_call("/dicomweb/localize", study, series, instance, store, outputs, {**options, "method": method})


def _dicomweb_call(path: str, study: str, series: str, instance: str, store: bool, outputs: Sequence[str],
                   options: dict[str, Any]) -> Call[DicomwebResult]:
    body = {"study": study, "series": series, "instance": instance, "store": store, "outputs": list(outputs),
            **{key: value for key, value in options.items() if value is not None}}
    return Call("POST", path, _dicomweb_result, json=body)
