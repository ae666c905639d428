"""Hostile and odd input: patient data never leaks, odd encodings and sizes get clean 4xx answers."""

from __future__ import annotations

import base64
import io
import json
import logging

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

SECRET_NAME = "Doe^Jane^ZQXSECRET"
SECRET_ID = "PID-ZQX-4711"


def _dicom_with_patient(truncate: bool = False) -> bytes:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    buf = io.BytesIO()
    ds.save_as(buf)
    data = buf.getvalue()
    return data[: len(data) * 2 // 3] if truncate else data


def test_dicom_patient_data_appears_in_no_response_and_no_log(client, caplog):
    caplog.set_level(logging.DEBUG)
    bodies = []
    for data in (_dicom_with_patient(), _dicom_with_patient(truncate=True)):
        for path, form in (("/predict", {}), ("/explain/gradcam", {"outputs": "heatmap"}), ("/localize", {}),
                           ("/predict", {"frame": "3"})):
            r = client.post(path, files={"image": ("scan.dcm", data, "application/dicom")}, data=form)
            assert r.status_code < 500
            bodies.append(r.text + json.dumps(dict(r.headers)))
        r = client.post("/predict", json={"image": base64.b64encode(data).decode()})
        bodies.append(r.text)
    assert any('"predictions"' in b for b in bodies)  # the good file was really served
    everything = "\n".join(bodies) + "\n".join(rec.getMessage() + json.dumps(rec.__dict__, default=str)
                                               for rec in caplog.records)
    for secret in ("ZQXSECRET", SECRET_ID):
        assert secret not in everything


@pytest.mark.parametrize(
    "kwargs, status",
    [
        ({"json": {"image": "AAAA", "top_k": -3}}, 422),
        ({"json": {"image": "AAAA", "top_k": 10**30}}, 422),
        ({"json": {"image": "AAAA", "timeout": -1}}, 422),
        ({"json": {"image": "AAAA", "frame": 10**12}}, 422),
        ({"json": {"image": "AAAA", "target": [[1]]}}, 422),
        ({"json": {"image": "AAAA", "target": [1.5]}}, 422),
        ({"json": {"image": "AAAA", "model": "../../etc/passwd"}}, 404),
        ({"json": {"image": "AAAA", "model": {"$ne": 1}}}, 422),
        ({"json": {"image": ["AAAA"]}}, 400),
        ({"content": b'{"image": "AAAA", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
          "headers": {"content-type": "application/json"}}, 400),
        ({"content": b"\xff\xfe\x00garbage", "headers": {"content-type": "application/json"}}, 400),
        ({"content": b"--x\r\nbroken multipart", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400),
        ({"content": b"abc", "headers": {"content-type": "multipart/form-data"}}, 400),
        ({"content": b"image=abc", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415),
    ],
)
def test_odd_requests_get_4xx_problems(client, kwargs, status):
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


def test_path_traversal_in_names_is_just_not_found(client):
    for path in ("/models/..%2F..%2Fetc%2Fpasswd", "/models/%2e%2e", "/explain/..%2Fpredict"):
        r = client.get(path) if path.startswith("/models") else client.post(path, json={"image": "AAAA"})
        assert r.status_code in (404, 422), (path, r.status_code)
        assert r.headers["content-type"].startswith("application/problem+json")


def test_huge_json_is_refused_by_size_before_parsing():
    from tests.support import make_client, wait_ready

    with make_client(max_body_bytes=64 * 1024) as c:
        wait_ready(c)
        body = json.dumps({"image": "A" * 200_000})
        r = c.post("/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 413
        # a chunked body without Content-Length is cut off as soon as it passes the limit
        r = c.post("/predict", content=iter([b'{"image": "', b"A" * 40_000, b"A" * 40_000, b'"}']),
                   headers={"content-type": "application/json"})
        assert r.status_code == 413
