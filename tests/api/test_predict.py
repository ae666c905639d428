"""/predict over HTTP: both encodings, targets, and every bad input answered with a 4xx problem."""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from tests.support import png_bytes

PROBLEM = "application/problem+json"


def _assert_problem(resp, status: int, needle: str = "") -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status
    assert needle.lower() in body["detail"].lower(), body["detail"]
    assert resp.headers.get("x-request-id")
    return body


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _testdata(name: str) -> bytes:
    return Path(get_testdata_file(name)).read_bytes()


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def test_predict_multipart_returns_the_demo_classes(client, demo_sample):
    data, objects = demo_sample
    resp = client.post("/predict", files={"image": ("x.png", data, "image/png")}, headers={"X-Request-ID": "abc-123"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-request-id"] == "abc-123"
    body = resp.json()
    assert body["model"] == "demo" and body["task"] == "multilabel"
    assert body["image"] == {"width": 128, "height": 128}
    preds = body["predictions"]
    assert len(preds) == 5 and preds == sorted(preds, key=lambda p: -p["score"])
    present = {o["class"] for o in objects}
    confident = {p["label"] for p in preds if p["score"] >= 0.5}
    assert confident == present  # the shipped model recognises the shapes of a fresh synthetic image


def test_predict_json_base64_and_targets_by_label_and_index(client, demo_sample):
    data, _ = demo_sample
    b64 = base64.b64encode(data).decode()
    resp = client.post("/predict", json={"image": b64, "target": ["star", 0], "model": "demo"})
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert [(p["index"], p["label"]) for p in preds] == [(5, "star"), (0, "circle")]
    multi = client.post("/predict", files={"image": ("x.png", data)}, data={"target": ["ring", "1"], "top_k": "2"})
    assert [p["label"] for p in multi.json()["predictions"]] == ["ring", "square"]
    top1 = client.post("/predict", json={"image": b64, "top_k": 1})
    assert len(top1.json()["predictions"]) == 1


def test_scores_match_the_model_run_directly(client, demo_sample):
    import torch

    from service.imaging import decode_image, to_model_input

    data, _ = demo_sample
    runtime = client.app.state.runtime
    model = runtime.registry.get("demo")
    x = to_model_input(decode_image(data), input_size=model.spec.input_size, channels=3, mean=model.spec.mean,
                       std=model.spec.std)
    with torch.no_grad():
        expected = torch.sigmoid(model.module(x[None]))[0]
    preds = client.post("/predict", files={"image": ("x.png", data)}, data={"top_k": "6"}).json()["predictions"]
    for p in preds:
        assert p["score"] == pytest.approx(float(expected[p["index"]]), abs=1e-5)


GOOD_INPUTS = {
    "rgb-jpeg": lambda: _encode(Image.new("RGB", (64, 48), (200, 30, 30)), "JPEG"),
    "16-bit-png": lambda: _encode(Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16), "PNG"),
    "cmyk-jpeg": lambda: _encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"),
    "palette-png": lambda: _encode(Image.new("RGB", (32, 32), (0, 128, 255)).convert("P"), "PNG"),
    "rgba-png": lambda: _encode(Image.new("RGBA", (32, 32), (0, 128, 255, 0)), "PNG"),
    "animated-gif": lambda: _encode(Image.new("P", (30, 30), 1), "GIF", save_all=True,
                                    append_images=[Image.new("P", (30, 30), 2)], duration=50, loop=0),
    "1x1": lambda: png_bytes(np.zeros((1, 1, 3), np.uint8)),
    "1x10000": lambda: png_bytes(np.full((1, 10000, 3), 90, np.uint8)),
    "webp": lambda: _encode(Image.new("RGB", (20, 20), (1, 2, 3)), "WEBP"),
    "bmp": lambda: _encode(Image.new("RGB", (20, 20), (1, 2, 3)), "BMP"),
    "tiff": lambda: _encode(Image.new("L", (20, 20), 9), "TIFF"),
    "dicom-ct": lambda: _testdata("CT_small.dcm"),
    "dicom-mr": lambda: _testdata("MR_small.dcm"),
    "dicom-jpeg-extended": lambda: _testdata("JPGExtended.dcm"),
    "dicom-jpeg2000": lambda: _testdata("JPEG2000.dcm"),
}


@pytest.mark.parametrize("name", sorted(GOOD_INPUTS))
def test_every_supported_input_is_predicted(client, name):
    data = GOOD_INPUTS[name]()
    resp = client.post("/predict", files={"image": ("f", data)})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["predictions"]) == 5


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD_INPUTS = {
    "empty": (lambda: b"", 422, "empty"),
    "random-bytes": (lambda: os.urandom(4096), 422, ""),
    "text-file": (lambda: b"hello, this is not an image\n" * 20, 422, ""),
    "truncated-jpeg": (lambda: _truncated(_encode(Image.effect_noise((256, 256), 60).convert("RGB"), "JPEG")), 422,
                       "truncated"),
    "truncated-png": (lambda: _truncated(_encode(Image.effect_noise((256, 256), 60), "PNG")), 422, ""),
    "png-bomb-header": (lambda: _png_claiming(50000, 50000), 413, "pixels"),
    "truncated-dicom": (lambda: _truncated(_testdata("CT_small.dcm")), 422, ""),
    # pydicom's JPEG-lossy.dcm has a misplaced SOS marker (JPGExtended.dcm is its fixed version): a clean 422
    "broken-dicom-jpeg": (lambda: _testdata("JPEG-lossy.dcm"), 422, ""),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_images_get_a_problem_and_the_service_keeps_serving(client, demo_sample, name):
    make, status, needle = BAD_INPUTS[name]
    _assert_problem(client.post("/predict", files={"image": ("f", make())}), status, needle)
    assert client.post("/predict", files={"image": ("x.png", demo_sample[0])}).status_code == 200


@pytest.mark.parametrize(
    "kwargs, status, needle",
    [
        ({"content": b"abc", "headers": {"content-type": "text/plain"}}, 415, "content-type"),
        ({"content": b"abc"}, 415, "content-type"),
        ({"files": {"picture": ("x.png", b"123")}}, 400, "missing file field 'image'"),
        ({"data": {"image": "abc"}, "files": {"other": ("a", b"1")}}, 400, "must be a file"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"json": ["image"]}, 400, "JSON body must be an object"),
        ({"json": {"img": "AAAA"}}, 400, "missing member 'image'"),
        ({"json": {"image": "!!!notbase64"}}, 422, "base64"),
        ({"json": {"image": 5}}, 400, "base64 string"),
    ],
)
def test_malformed_requests(client, kwargs, status, needle):
    _assert_problem(client.post("/predict", **kwargs), status, needle)


@pytest.mark.parametrize(
    "options, status, needle",
    [
        ({"model": "nope"}, 404, "unknown model 'nope'"),
        ({"target": "hexagon"}, 422, "not a label"),
        ({"target": 17}, 422, "out of range"),
        ({"top_k": 0}, 422, "top_k"),
        ({"top_k": "many"}, 422, "top_k"),
        ({"colour": "red"}, 400, "unknown option(s): colour"),
        ({"frame": -1}, 422, "frame"),
    ],
)
def test_bad_options(client, demo_sample, options, status, needle):
    b64 = base64.b64encode(demo_sample[0]).decode()
    body = _assert_problem(client.post("/predict", json={"image": b64, **options}), status, needle)
    if status == 422 and "errors" in body:
        assert body["errors"][0]["field"]


def test_body_limit_is_enforced_before_reading():
    from tests.support import make_client, wait_ready

    with make_client(max_body_bytes=4096) as small:
        wait_ready(small)
        big = png_bytes(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
        _assert_problem(small.post("/predict", files={"image": ("x.png", big)}), 413, "exceeds the limit")


def test_unknown_route_and_method_are_problems(client):
    _assert_problem(client.get("/nope"), 404)
    _assert_problem(client.get("/predict"), 405)
