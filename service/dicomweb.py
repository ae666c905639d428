"""The PACS over DICOMweb (``dicomweb-client``): WADO-RS fetch of one instance, STOW-RS store of results, and QIDO-RS
searches for the review page's study / series / instance picker.

Every request has a bounded timeout (``XAAS_DICOMWEB_TIMEOUT``, connect and read); PACS failures become
:class:`PacsUnavailable` (502), :class:`PacsTimeout` (504) or :class:`NotFound` (404, a missing instance), with
details that name the operation and the HTTP status only, never a UID or PACS message (they may identify a patient).
"""

from __future__ import annotations

import io
from typing import Any

from .config import Settings
from .errors import BadOption, NotFound, PacsTimeout, PacsUnavailable, ServiceUnavailable

__all__ = ["Pacs"]


class Pacs:
    def __init__(self, settings: Settings):
        if not settings.dicomweb_url:
            raise ServiceUnavailable("no PACS is configured (set XAAS_DICOMWEB_URL)")
        self.url = settings.dicomweb_url.rstrip("/")
        self.timeout = float(settings.dicomweb_timeout)
        self.headers = _auth_header(settings)

    def _client(self) -> Any:
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        session.headers.update(self.headers)
        original = session.request

        def bounded(method: str, url: str, **kwargs: Any) -> Any:  # every PACS request gets the timeout
            kwargs.setdefault("timeout", (self.timeout, self.timeout))
            return original(method, url, **kwargs)

        session.request = bounded  # type: ignore[method-assign]
        client = DICOMwebClient(url=self.url, session=session)
        # no hidden retries with exponential back-off: the answer's time stays bounded by one timeout per request
        client.set_http_retry_params(retry=False)
        return client

    def fetch(self, study: str, series: str, instance: str) -> bytes:
        """Part 10 bytes of one instance (WADO-RS)."""
        for name, value in (("study", study), ("series", series), ("instance", instance)):
            _check_uid(name, value)
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
            raise PacsTimeout(f"the PACS did not answer the {operation} request within {self.timeout:g} s") from None
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
    return {name.strip(): value.strip()} if name.strip() and value.strip() else {}


def _check_uid(name: str, value: str) -> None:
    if not value or len(value) > 64 or not all(c.isdigit() or c == "." for c in value):
        raise BadOption(f"{name} must be a DICOM UID (digits and dots, at most 64)")


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
