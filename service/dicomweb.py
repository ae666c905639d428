"""The PACS over DICOMweb (``dicomweb-client``): WADO-RS fetch of one instance (or of a whole series, for volume
models), STOW-RS store of results, and QIDO-RS searches for the review page's study / series / instance picker.

Every request has a bounded timeout (``XAAS_DICOMWEB_TIMEOUT``: on the connection and each read here, on the whole
request in :mod:`service.handlers.dicomweb`, which awaits it); PACS failures become
:class:`PacsUnavailable` (502), :class:`PacsTimeout` (504) or :class:`NotFound` (404, a missing instance), with
details that name the operation and the HTTP status only, never a UID or PACS message (they may identify a patient).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import zipfile
from typing import Any

from .config import Settings
from .errors import BadOption, FieldError, NotFound, PacsTimeout, PacsUnavailable, PayloadTooLarge, ServiceUnavailable

__all__ = ["MAX_SERIES_INSTANCES", "Pacs"]

#: Instances a series fetched for a volume model may hold (the volume limits check slices and voxels after).
MAX_SERIES_INSTANCES = 2048

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # DICOM_UID_PATTERN of the API schemas

# dicomweb-client logs the UIDs of every request at INFO, urllib3 every URL (UIDs in the path) at DEBUG: UIDs may
# identify a patient, so only their warnings and errors reach the service's logs, whatever its log level.
for _name in ("dicomweb_client", "urllib3.connectionpool"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class Pacs:
    def __init__(self, settings: Settings):
        if not settings.dicomweb_url:
            raise ServiceUnavailable("no PACS is configured (set XAAS_DICOMWEB_URL)")
        self.url = settings.dicomweb_url.rstrip("/")
        self.timeout = float(settings.dicomweb_timeout)
        self.headers = _auth_header(settings)
        self._answers: list[Any] = []  # responses whose body may still be read (see abort)

    def abort(self) -> None:
        """Stop reading the answers in flight (from another thread): a request past its deadline frees its thread
        now instead of at the end of a slow body. The blocked read fails, and that request's result is dropped."""
        for response in list(self._answers):
            with contextlib.suppress(Exception):  # best effort: the response may be finished or closed already
                response.raw.shutdown()

    def _client(self) -> Any:
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        session.headers.update(self.headers)
        original = session.request

        def bounded(method: str, url: str, **kwargs: Any) -> Any:
            # set, not defaulted: dicomweb-client passes its own timeout (20 s) explicitly on every request
            kwargs["timeout"] = (self.timeout, self.timeout)
            return original(method, url, **kwargs)

        session.request = bounded  # type: ignore[method-assign]
        # requests calls response hooks once the headers are in, before it reads the body: abort() can reach it
        session.hooks["response"].append(lambda response, *args, **kwargs: self._answers.append(response))
        client = DICOMwebClient(url=self.url, session=session)
        # no hidden retries with exponential back-off: the answer's time stays bounded by one timeout per request
        client.set_http_retry_params(retry=False)
        return client

    def fetch(self, study: str, series: str, instance: str | None) -> bytes:
        """Part 10 bytes of one instance (WADO-RS); without ``instance``, every instance of the series bundled as one
        zip (the form a volume model takes a series in)."""
        for name, value in (("study", study), ("series", series), ("instance", instance)):
            if value is not None:
                _check_uid(name, value)
        if instance is None:
            datasets = self._call("retrieve", lambda client: client.retrieve_series(study, series))
            if not datasets:
                raise NotFound("the PACS has no instance in that series (study/series)")
            if len(datasets) > MAX_SERIES_INSTANCES:
                raise PayloadTooLarge(f"the series has {len(datasets)} instances, above {MAX_SERIES_INSTANCES}")
            bundle = io.BytesIO()
            with zipfile.ZipFile(bundle, "w", compression=zipfile.ZIP_STORED) as archive:
                for k, dataset in enumerate(datasets):
                    buffer = io.BytesIO()
                    dataset.save_as(buffer, enforce_file_format=True)
                    archive.writestr(f"{k:05d}.dcm", buffer.getvalue())
            return bundle.getvalue()
        dataset = self._call("retrieve", lambda client: client.retrieve_instance(study, series, instance))
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    def search(self, level: str, study: str | None = None, series: str | None = None, *, limit: int = 100,
               offset: int = 0) -> list[dict[str, Any]]:
        """QIDO-RS at ``level`` (studies, series, instances), each match reduced to the allow-listed attributes of
        :data:`SEARCH_FIELDS` (UIDs, dates, descriptions, counts): no patient attribute ever leaves this method."""
        for name, value in (("study", study), ("series", series)):
            if value is not None:
                _check_uid(name, value)
        fields = SEARCH_FIELDS[level]
        keywords = [keyword for keyword, _ in fields.values()]

        def work(client: Any) -> list[dict[str, Any]]:
            if level == "studies":
                return client.search_for_studies(fields=keywords, limit=limit, offset=offset)
            if level == "series":
                return client.search_for_series(study, fields=keywords, limit=limit, offset=offset)
            return client.search_for_instances(study, series, fields=keywords, limit=limit, offset=offset)

        matches = self._call("search", work)
        return [_reduce(match, fields) for match in matches or []]

    def store(self, objects: list[bytes]) -> list[str]:
        """STOW-RS; returns the SOP Instance UIDs stored."""
        import pydicom

        datasets = [pydicom.dcmread(io.BytesIO(blob)) for blob in objects]
        if datasets:
            self._call("store", lambda client: client.store_instances(datasets))
        return [str(ds.SOPInstanceUID) for ds in datasets]

    def _call(self, operation: str, work: Any) -> Any:
        import requests

        try:
            return work(self._client())
        except requests.exceptions.Timeout:
            raise PacsTimeout(operation, self.timeout) from None
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status == 404 and operation == "retrieve":
                raise NotFound("the PACS has no such instance (study/series/instance)") from None
            raise PacsUnavailable(f"the PACS answered the {operation} request with HTTP {status}") from None
        except requests.exceptions.RequestException as exc:
            raise PacsUnavailable(f"the PACS could not be reached for the {operation} request "
                                  f"({type(exc).__name__})") from None
        except Exception as exc:  # noqa: BLE001 - a malformed PACS answer of any kind
            raise PacsUnavailable(f"the PACS's {operation} answer could not be read ({type(exc).__name__})") from None


def _auth_header(settings: Settings) -> dict[str, str]:
    if settings.dicomweb_auth_file is None:
        return {}
    try:
        line = settings.dicomweb_auth_file.read_text(encoding="utf-8").strip()
    except OSError:
        raise ServiceUnavailable("the PACS credentials file cannot be read") from None
    name, _, value = line.partition(":")
    if not (name.strip() and value.strip()) or "\n" in line:
        # refused rather than ignored: requests without the credentials would fail at the PACS, less clearly
        raise ServiceUnavailable("the PACS credentials file must hold one 'Header-Name: value' line")
    return {name.strip(): value.strip()}


def _check_uid(name: str, value: str) -> None:
    # the ASCII pattern dicomweb-client checks too (str.isdigit() would pass "٣", which it then refuses)
    if len(value) > 64 or not _UID.fullmatch(value):
        raise BadOption(f"{name} must be a DICOM UID (components of ASCII digits joined by dots, at most 64 "
                        f"characters)", errors=[FieldError(name, "a DICOM UID")])


# answer member → (attribute keyword, DICOM JSON tag); only these are asked for and only these are passed on
SEARCH_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "studies": {"study": ("StudyInstanceUID", "0020000D"), "date": ("StudyDate", "00080020"),
                "time": ("StudyTime", "00080030"), "description": ("StudyDescription", "00081030"),
                "modalities": ("ModalitiesInStudy", "00080061"),
                "series_count": ("NumberOfStudyRelatedSeries", "00201206"),
                "instance_count": ("NumberOfStudyRelatedInstances", "00201208")},
    "series": {"series": ("SeriesInstanceUID", "0020000E"), "modality": ("Modality", "00080060"),
               "number": ("SeriesNumber", "00200011"), "description": ("SeriesDescription", "0008103E"),
               "instance_count": ("NumberOfSeriesRelatedInstances", "00201209")},
    "instances": {"instance": ("SOPInstanceUID", "00080018"), "sop_class": ("SOPClassUID", "00080016"),
                  "number": ("InstanceNumber", "00200013"), "frames": ("NumberOfFrames", "00280008"),
                  "rows": ("Rows", "00280010"), "columns": ("Columns", "00280011")},
}
_LISTS = {"modalities"}
_NUMBERS = {"series_count", "instance_count", "number", "frames", "rows", "columns"}


def _reduce(match: dict[str, Any], fields: dict[str, tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for member, (_, tag) in fields.items():
        values = (match.get(tag) or {}).get("Value") or []
        if member in _LISTS:
            out[member] = [str(v) for v in values]
            continue
        value = values[0] if values else None
        if value is not None and member in _NUMBERS:
            try:
                value = int(value)
            except (TypeError, ValueError):
                value = None
        out[member] = None if value is None else (value if member in _NUMBERS else str(value))
    return out
