"""Open Inference Protocol v2 over the app: readiness, metadata, and every bad request a 4xx problem that an OIP
client reads (``error``) as well as a problem+json client (``detail``), the service serving on."""

from __future__ import annotations

import base64
import json

import pytest

from tests.support import demo_png, make_client, wait_ready

IMAGE = base64.b64encode(demo_png(31)).decode()


def _infer(client, body, **kwargs):
    return client.post("/v2/models/demo/infer", content=json.dumps(body) if not isinstance(body, bytes) else body,
                       headers={"content-type": "application/json", **kwargs.pop("headers", {})}, **kwargs)


def test_health_metadata_and_model_readiness(client):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/demo/ready").status_code == 200
    missing = client.get("/v2/models/nope/ready")
    assert missing.status_code == 404 and missing.json()["error"] == missing.json()["detail"]
    meta = client.get("/v2/models/demo").json()
    assert meta["versions"][0] and meta["parameters"]["labels"][0] == "circle"
    assert client.get("/v2").json()["extensions"] == ["xaas-explain"]


def test_explain_extension_matches_explain_raw(client):
    body = {"parameters": {"explain": "layercam", "target": "circle"},
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [IMAGE]}],
            "outputs": [{"name": "heatmap"}]}
    out = _infer(client, body).json()["outputs"]
    assert [o["name"] for o in out] == ["heatmap"]
    raw = client.post("/explain/layercam", json={"image": IMAGE, "target": "circle", "outputs": "raw"}).json()
    want = raw["explanations"][0]["raw"]
    assert out[0]["shape"] == [1, *want["shape"]]
    import numpy as np

    from tests.support import decode_raw

    np.testing.assert_allclose(np.array(out[0]["data"], np.float32).reshape(want["shape"]), decode_raw(want),
                               rtol=1e-5, atol=1e-7)


BAD = [
    ({"inputs": []}, 400, "inputs"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1]}]}, 400, "datatype"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}, 400, "not valid base64"),
    ({"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": [IMAGE]}]}, 400, "2 base64 strings"),
    ({"inputs": [{"name": "x", "shape": [65], "datatype": "BYTES", "data": [IMAGE] * 65}]}, 422, "1..64"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES"}]}, 400, "'data' is missing"),
    ({"inputs": [{"name": "x", "shape": [1, 3, 128, 128], "datatype": "FP32", "data": [0.0] * 5}]}, 400,
     "needs 49152"),
    ({"inputs": [{"name": "x", "shape": [1, 1, 128, 128], "datatype": "FP32", "data": [0.0]}]}, 422,
     "takes FP32 [N, 3, 128, 128]"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [IMAGE]}], "outputs": [{"name": "heatmap"}]},
     400, "need parameters.explain"),
    ({"parameters": {"explain": "gradcam", "steps": 3}, "inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                                                    "data": [IMAGE]}]}, 400, "steps"),
    ({"parameters": {"explain": "gradcam", "target": "unicorn"},
      "inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [IMAGE]}]}, 422, "unicorn"),
    ({"parameters": {"temperature": 1}, "inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                                    "data": [IMAGE]}]}, 400, "unknown parameters temperature"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(b"junk").decode()]}]},
     422, "image"),
    (b'{"inputs": [], "inputs": []}', 400, "more than once"),
    ({"parameters": {"explain": "gradcam", "target": {"a": 1}},
      "inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [IMAGE]}]}, 400,
     "boolean, number or string"),
    ({"parameters": {"explain": "gradcam", "layer": "nope"},
      "inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [IMAGE]}]}, 422, "nope"),
    ({"parameters": {"explain": "gradcam", "target": 99},
      "inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [IMAGE]}]}, 422, "99"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN]}]}', 400, "NaN"),
]


@pytest.mark.parametrize(("body", "status", "says"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_are_problems_with_an_error_member(client, body, status, says):
    r = _infer(client, body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["error"] == problem["detail"] and says in problem["detail"], problem
    assert client.get("/v2/models/demo/ready").status_code == 200   # still serving


def test_binary_header_length_is_checked(client):
    body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 99}}]}).encode()
    r = _infer(client, body + b"\x00" * 4, headers={"inference-header-content-length": str(len(body))})
    assert r.status_code == 400 and "binary_data_size must be 0..4" in r.json()["error"]
    r = _infer(client, body, headers={"inference-header-content-length": "999999"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]


def test_probes_need_no_api_key_but_infer_does():
    with make_client(api_keys=["s3cret"]) as c:
        wait_ready(c)
        assert c.get("/v2/health/live").status_code == 200 and c.get("/v2/health/ready").status_code == 200
        assert c.get("/v2/models/demo").status_code == 401
        ok = c.get("/v2/models/demo", headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_a_segmentation_model_over_oip(client):
    """demo-seg: per-pixel probabilities [N, K, H, W]; its explanation over the predicted region equals /explain's."""
    import numpy as np

    from tests.support import decode_raw

    meta = client.get("/v2/models/demo-seg").json()
    assert meta["parameters"]["task"] == "segmentation"
    image = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [IMAGE]}
    out = {o["name"]: o for o in client.post("/v2/models/demo-seg/infer", json={
        "inputs": [image], "parameters": {"explain": "gradcam", "target": "circle"}}).json()["outputs"]}
    k = len(meta["parameters"]["labels"])
    shape = out["probabilities"]["shape"]
    assert shape[:2] == [1, k] and len(shape) == 4
    probs = np.array(out["probabilities"]["data"], np.float32).reshape(shape)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-4)            # softmax over classes per pixel
    raw = client.post("/explain/gradcam", json={"image": IMAGE, "model": "demo-seg", "target": "circle",
                                                "region": "predicted", "outputs": "raw"}).json()
    want = raw["explanations"][0]["raw"]
    np.testing.assert_allclose(np.array(out["heatmap"]["data"], np.float32).reshape(want["shape"]), decode_raw(want),
                               rtol=1e-5, atol=1e-7)
    r = client.post("/v2/models/demo/infer", json={"inputs": [image], "parameters": {"explain": "gradcam",
                                                                                      "region": "all"}})
    assert r.status_code == 422 and "segmentation models only" in r.json()["error"]
