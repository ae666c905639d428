"""``POST /display`` (the viewer's decoder) and the routes that serve the review page, in process."""

from __future__ import annotations

import base64
import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from tests.support import decode_raw, demo_png, make_client


@pytest.fixture(scope="module")
def client():
    with make_client() as c:
        yield c


def _file(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as f:
        return f.read()


def test_grey_dicom_comes_back_as_modality_values_with_its_windows(client):
    ct = _file("CT_small.dcm")
    r = client.post("/display", files={"image": ("ct.dcm", ct)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["format"] == "DICOM" and body["kind"] == "grey" and body["image"] == {"width": 128, "height": 128}
    ds = pydicom.dcmread(io.BytesIO(ct))
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    np.testing.assert_array_equal(decode_raw(body["values"]), expected)  # Hounsfield units, exactly
    assert body["range"] == [float(expected.min()), float(expected.max())]
    assert body["windows"] == [] and body["invert"] is False  # CT_small carries no window: the model sees the range
    mr = client.post("/display", files={"image": ("mr.dcm", _file("MR_small.dcm"))}).json()
    assert mr["windows"] == [{"center": 600.0, "width": 1600.0}]


def test_other_images_come_back_as_the_pixels_the_model_sees(client):
    png = demo_png(3)
    body = client.post("/display", files={"image": ("a.png", png)}).json()
    assert body["kind"] == "rgb" and body["format"] == "PNG" and "values" not in body
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["png"]))))
    np.testing.assert_array_equal(shown, np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
    # JSON bodies work as on every image endpoint
    assert client.post("/display", json={"image": base64.b64encode(png).decode()}).status_code == 200


@pytest.mark.parametrize(("data", "status"), [(b"not an image at all" * 20, 422), (b"", 422),
                                               (_file("CT_small.dcm")[:2000], 422)])
def test_broken_files_are_problems(client, data, status):
    r = client.post("/display", files={"image": ("x.dcm", data)})
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json" and r.json()["detail"]


def test_unknown_option_and_bad_frame_are_refused(client):
    ct = _file("CT_small.dcm")
    assert client.post("/display", files={"image": ("ct.dcm", ct)}, data={"bogus": "1"}).status_code == 400
    assert client.post("/display", files={"image": ("ct.dcm", ct)}, data={"frame": "3"}).status_code == 422


def test_page_and_assets_are_served_with_a_strict_policy(client):
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/ui"
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    html = page.text
    assert 'src="/ui/assets/app.js"' in html and 'href="/ui/assets/app.css"' in html
    assert "http://" not in html and "https://" not in html  # no CDN: everything from this service
    js = client.get("/ui/assets/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/assets/app.css").headers["content-type"].startswith("text/css")
    for bad in ("../app.py", "..%2Fapp.py", "missing.js", ".hidden.js", "index"):
        assert client.get(f"/ui/assets/{bad}").status_code == 404


def test_page_loads_without_the_api_key_but_the_api_does_not():
    with make_client(api_keys=["s3cret"]) as c:
        assert c.get("/ui").status_code == 200
        assert c.get("/ui/assets/app.js").status_code == 200
        assert c.get("/", follow_redirects=False).status_code == 307
        assert c.get("/models").status_code == 401
        assert c.post("/display", files={"image": ("a.png", demo_png(1))}).status_code == 401
        ok = c.post("/display", files={"image": ("a.png", demo_png(1))}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/uix").status_code == 401 and c.get("/ui/assets").status_code == 401
