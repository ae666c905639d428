"""A scripted DICOMweb PACS on 127.0.0.1 for tests that need no Orthanc (importable as ``tests.fake_pacs``).

``FakePacs(mode)`` serves WADO-RS instance retrieval and STOW-RS on a free loopback port, in a thread:

- ``"ok"``: WADO-RS answers ``instance`` (Part 10 bytes) as multipart/related for any UIDs, QIDO-RS one match (the
  instance's UIDs), STOW-RS answers 200 and keeps every stored object in ``stored``;
- ``"missing"``: every request is a 404; ``"broken"``: every request is a 503;
- ``"store-fails"``: WADO-RS as ``"ok"``, STOW-RS a 500;
- ``"silent"``: connections are accepted and read, then never answered (until the fake stops); ``"store-silent"``:
  WADO-RS as ``"ok"``, STOW-RS never answered;
- ``"trickle"``: WADO-RS answers its headers, then one byte of the body every 0.2 s (for at most 30 s), so that no
  single read ever waits long enough for a socket timeout.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BOUNDARY = "xaas-fake-pacs-boundary"


class FakePacs:
    def __init__(self, mode: str = "ok", instance: bytes | None = None) -> None:
        if instance is None:
            from pydicom.data import get_testdata_file

            instance = Path(get_testdata_file("CT_small.dcm")).read_bytes()
        self.mode = mode
        self.instance = instance
        self.stored: list[bytes] = []
        self.requests: list[str] = []
        self.headers: list[dict[str, str]] = []  # of each request, in order
        self._release = threading.Event()
        self.hung_up = threading.Event()  # set when a client closes a trickled answer
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/dicom-web"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakePacs:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()  # a silent handler returns (and its connection closes) before the server stops
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        pacs = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet: pytest shows stderr of failed tests
                pass

            def do_GET(self) -> None:
                pacs.requests.append(f"GET {self.path}")
                pacs.headers.append(dict(self.headers))
                if pacs.mode == "silent":
                    pacs._release.wait(120)
                    return
                if pacs.mode in ("missing", "broken"):
                    self._empty(404 if pacs.mode == "missing" else 503)
                    return
                if pacs.mode == "trickle":
                    self.send_response(200)
                    self.send_header("Content-Type", f'multipart/related; type="application/dicom"; '
                                                     f'boundary={BOUNDARY}')
                    self.send_header("Content-Length", "1000000")
                    self.end_headers()
                    for _ in range(150):
                        if pacs._release.wait(0.2):
                            return
                        try:
                            self.wfile.write(b"-")
                            self.wfile.flush()
                        except OSError:  # the client hung up
                            pacs.hung_up.set()
                            return
                    return
                if self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1] in ("studies", "series", "instances"):
                    self._search()   # QIDO-RS
                    return
                body = (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + pacs.instance
                        + f"\r\n--{BOUNDARY}--\r\n".encode())
                self.send_response(200)
                self.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                pacs.requests.append(f"POST {self.path}")
                pacs.headers.append(dict(self.headers))
                body = self._read_body()
                if pacs.mode in ("silent", "store-silent"):
                    pacs._release.wait(120)
                    return
                if pacs.mode in ("missing", "broken", "store-fails"):
                    self._empty({"missing": 404, "broken": 503}.get(pacs.mode, 500))
                    return
                pacs.stored.extend(_parts(body, self.headers.get("Content-Type", "")))
                answer = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = bytearray()
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return bytes(data)
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _search(self) -> None:
                """One match, the served instance's UIDs (DICOM JSON), whatever the query."""
                import io
                import json

                import pydicom

                ds = pydicom.dcmread(io.BytesIO(pacs.instance), stop_before_pixels=True)
                match = {"0020000D": {"vr": "UI", "Value": [str(ds.StudyInstanceUID)]},
                         "0020000E": {"vr": "UI", "Value": [str(ds.SeriesInstanceUID)]},
                         "00080018": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
                         "00080060": {"vr": "CS", "Value": [str(ds.Modality)]}}
                answer = json.dumps([match]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def _empty(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


def _parts(body: bytes, content_type: str) -> list[bytes]:
    """The application/dicom parts of a multipart/related STOW-RS body."""
    boundary = next((item.split("=", 1)[1].strip().strip('"') for item in content_type.split(";")
                     if item.strip().lower().startswith("boundary=")), None)
    if boundary is None:
        return []
    parts = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk.partition(b"\r\n\r\n")
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts


def closed_port() -> int:
    """A loopback port with no listener (bound, then released): connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
