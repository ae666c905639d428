"""Detection models over HTTP: registry task, /predict boxes in original pixels with ids, /explain of one chosen
detection (by id, by box + label, by label) equal to the engine's on the same target, D-RISE, concurrent requests for
different detections answered each their own, and bad detections answered with a 4xx naming the field."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from tests.engine.det_support import LABELS, SIZE
from tests.support import decode_raw, make_client, png_bytes, wait_ready

PROBLEM = "application/problem+json"
WIDTH, HEIGHT = 96, 160   # not the input size, not square: boxes must be scaled per axis


@pytest.fixture(scope="module")
def det_client(tmp_path_factory):
    path = tmp_path_factory.mktemp("det") / "models.yaml"
    path.write_text(
        "models:\n"
        "  - name: det\n"
        "    source: python:tests.engine.det_support:tiny_detector\n"
        "    task: detection\n"
        f"    labels: {LABELS}\n"
        "    score_threshold: 0.3\n"
        "    max_detections: 50\n"
        f"    input_size: [{SIZE}, {SIZE}]\n")
    with make_client(models=str(path)) as c:
        wait_ready(c, timeout=120)
        yield c


def _image(seed: int = 0) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def _engine_input(data: bytes):
    from service.engine.detection import DetectorOutputs
    from service.imaging import decode_image, to_model_input
    from tests.engine.det_support import tiny_detector

    model = DetectorOutputs(tiny_detector(), 50).eval().requires_grad_(False)
    x = to_model_input(decode_image(data), input_size=(SIZE, SIZE), channels=3, mean=[0.0], std=[1.0])
    return model, x[None] if x.dim() == 3 else x


def _post(client, path, data, **fields):
    return client.post(path, files={"image": ("x.png", data, "image/png")}, data={"model": "det", **fields})


def test_models_lists_the_detection_task_its_threshold_and_methods(det_client, client):
    body = det_client.get("/models/det").json()
    assert body["task"] == "detection" and body["score_threshold"] == 0.3
    assert body["target_layer"] == "backbone.body.16"
    assert {"gradcam", "saliency", "drise", "rise", "occlusion"} <= set(body["methods"])
    assert "cam" in body["refused"] and "drise" not in body["refused"]
    demo = client.get("/models/demo").json()
    assert "drise" not in demo["methods"] and "drise" not in demo.get("refused", {})


def test_predict_answers_boxes_in_original_pixels_with_ids(det_client):
    data = _image(1)
    resp = _post(det_client, "/predict", data)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["task"] == "detection"
    preds = body["predictions"]
    model, x = _engine_input(data)
    with torch.no_grad():
        dets = model(x)[0]
    kept = [i for i in range(dets.shape[0]) if dets[i, 5] >= 0 and dets[i, 4] >= 0.3]
    assert [p["id"] for p in preds] == kept and len(kept) >= 2
    for p in preds:
        row = dets[p["id"]]
        assert p["score"] == pytest.approx(float(row[4]), abs=1e-5)
        assert p["index"] == int(row[5]) and p["label"] == LABELS[int(row[5])]
        expected = [float(row[0]) * WIDTH / SIZE, float(row[1]) * HEIGHT / SIZE,
                    float(row[2]) * WIDTH / SIZE, float(row[3]) * HEIGHT / SIZE]
        assert p["box"] == pytest.approx(expected, abs=1e-3)
        assert 0 <= p["box"][0] < p["box"][2] <= WIDTH and 0 <= p["box"][1] < p["box"][3] <= HEIGHT
    assert [p["score"] for p in preds] == sorted((p["score"] for p in preds), reverse=True)
    two = _post(det_client, "/predict", data, top_k="2").json()["predictions"]
    assert [p["id"] for p in two] == kept[:2]


def _served_and_engine(det_client, data, detection_fields, target):
    from service.engine import get_method
    from service.engine.passes import complete
    from service.engine.targets import TargetRequest

    resp = _post(det_client, "/explain/gradcam", data, outputs="raw", **detection_fields)
    assert resp.status_code == 200, resp.text
    (row,) = resp.json()["explanations"]
    model, x = _engine_input(data)
    mine = complete(get_method("gradcam").steps(model, x, [TargetRequest((target,))], layer="backbone.body.16",
                                                task="detection"))
    return row, mine


def test_explain_by_id_equals_the_engine_and_reports_the_detection(det_client):
    from service.engine.detection import Detection

    data = _image(2)
    predicted = _post(det_client, "/predict", data).json()["predictions"]
    chosen = predicted[1]
    row, mine = _served_and_engine(det_client, data, {"detection": str(chosen["id"])}, Detection(chosen["id"]))
    assert row["detection"]["id"] == chosen["id"]
    assert row["detection"]["box"] == pytest.approx(chosen["box"], abs=1e-3)
    assert row["index"] == chosen["index"] and row["score"] == pytest.approx(chosen["score"], abs=1e-5)
    served = decode_raw(row["raw"])
    expected = mine.maps[0].numpy()
    assert float(np.abs(expected).max()) > 0
    np.testing.assert_allclose(served, expected, rtol=1e-3, atol=1e-5 * float(np.abs(expected).max()))


def test_explain_by_box_and_label_finds_the_same_detection(det_client):
    data = _image(3)
    chosen = _post(det_client, "/predict", data).json()["predictions"][2]
    x0, y0, x1, y1 = chosen["box"]
    nudged = f"{x0 + 0.5:.3f},{y0 + 0.5:.3f},{min(x1 + 0.5, WIDTH):.3f},{min(y1 + 0.5, HEIGHT):.3f}"
    by_box = _post(det_client, "/explain/gradcam", data, detection=nudged, target=chosen["label"], outputs="raw")
    by_id = _post(det_client, "/explain/gradcam", data, detection=str(chosen["id"]), outputs="raw")
    assert by_box.status_code == 200, by_box.text
    a, b = by_box.json()["explanations"][0], by_id.json()["explanations"][0]
    assert a["detection"]["id"] == chosen["id"]
    np.testing.assert_allclose(decode_raw(a["raw"]), decode_raw(b["raw"]), rtol=1e-5, atol=1e-7)
    by_label = _post(det_client, "/explain/gradcam", data, target=chosen["label"]).json()["explanations"][0]
    first_of_label = next(p for p in _post(det_client, "/predict", data, top_k="50").json()["predictions"]
                          if p["index"] == chosen["index"])
    assert by_label["detection"]["id"] == first_of_label["id"]


def test_without_a_detection_the_top_k_detections_above_the_threshold_are_explained(det_client):
    data = _image(4)
    predicted = _post(det_client, "/predict", data).json()["predictions"]
    body = _post(det_client, "/explain/gradcam", data, top_k="3").json()
    assert [e["detection"]["id"] for e in body["explanations"]] == [p["id"] for p in predicted[:3]]


def test_drise_and_box_regression_over_http(det_client):
    data = _image(5)
    drise = _post(det_client, "/explain/drise", data, detection="0", masks="8", cells="4", outputs="raw")
    assert drise.status_code == 200, drise.text
    raw = decode_raw(drise.json()["explanations"][0]["raw"])
    assert raw.shape == (SIZE, SIZE) and raw.min() >= 0 and raw.max() > 0
    chosen = _post(det_client, "/predict", data).json()["predictions"][0]
    x0, y0, x1, y1 = chosen["box"]
    box = f"{x0 + 1:.3f},{y0 + 1:.3f},{x1:.3f},{y1:.3f}"   # a box of the caller's, near the detection's
    fields = {"detection": box, "target": chosen["label"], "outputs": "raw"}
    plain = _post(det_client, "/explain/saliency", data, **fields).json()["explanations"][0]
    boxed = _post(det_client, "/explain/saliency", data, box_regression="true", **fields).json()["explanations"][0]
    assert plain["detection"]["id"] == boxed["detection"]["id"] == chosen["id"]
    assert plain["detection"]["box"] == pytest.approx([x0 + 1, y0 + 1, x1, y1], abs=1e-2)
    a, b = decode_raw(plain["raw"]), decode_raw(boxed["raw"])
    assert float(np.abs(a - b).max()) > 1e-3 * float(np.abs(a).max())


def test_concurrent_requests_for_different_detections_get_their_own_answers(det_client):
    data = _image(6)
    ids = [0, 1, 2, 3]
    alone = {i: decode_raw(_post(det_client, "/explain/gradcam", data, detection=str(i), outputs="raw",
                                 ).json()["explanations"][0]["raw"]) for i in ids}

    def one(i: int):
        body = _post(det_client, "/explain/gradcam", data, detection=str(i), outputs="raw", timeout="60").json()
        return i, body["explanations"][0]

    with ThreadPoolExecutor(4) as pool:
        for i, row in pool.map(one, ids * 2):
            assert row["detection"]["id"] == i
            np.testing.assert_allclose(decode_raw(row["raw"]), alone[i], rtol=1e-4, atol=1e-7)
    assert len({alone[i].tobytes() for i in ids}) == len(ids)


@pytest.mark.parametrize("fields,needle,field", [
    ({"detection": "999"}, "does not exist", "detection"),
    ({"detection": "1,2,3"}, "expected a detection id", "detection"),
    ({"detection": "10,10,5,20", "target": "circle"}, "x0 < x1", "detection"),
    ({"detection": "0,0,20,20"}, "add target", "target"),
    ({"detection": "0,0,500,20", "target": "circle"}, "exceeds the image", "detection"),
    ({"detection": "0", "target": "circle"}, "not both", "detection"),
    ({"target": ["circle", "square"]}, "one target", "target"),
    ({"detection": "0,0,1,1", "target": "circle"}, "iou", "detection"),
])
def test_bad_detections_are_422_naming_the_field(det_client, fields, needle, field):
    resp = _post(det_client, "/explain/gradcam", _image(7), **fields)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert needle.lower() in body["detail"].lower()
    assert any(e["field"] == field for e in body.get("errors", [])), body


def test_a_detection_on_a_classifier_is_refused(det_client, client, demo_sample):
    resp = client.post("/explain/gradcam", files={"image": ("x.png", demo_sample[0], "image/png")},
                       data={"detection": "0"})
    assert resp.status_code == 422, resp.text
    assert "only detection models" in resp.json()["detail"]
    resp = client.post("/explain/drise", files={"image": ("x.png", demo_sample[0], "image/png")})
    assert resp.status_code == 422, resp.text
    assert "detection" in resp.json()["detail"]


def test_localize_boxes_the_explanation_beside_the_detections_own_box(det_client):
    data = _image(8)
    chosen = _post(det_client, "/predict", data).json()["predictions"][1]
    resp = _post(det_client, "/localize", data, detection=str(chosen["id"]))
    assert resp.status_code == 200, resp.text
    boxes = resp.json()["boxes"]
    assert boxes and all(b["detection"]["id"] == chosen["id"] for b in boxes)
    assert boxes[0]["detection"]["box"] == pytest.approx(chosen["box"], abs=1e-3)
    assert all(0 <= b["box"][0] < b["box"][2] <= WIDTH and 0 <= b["box"][1] < b["box"][3] <= HEIGHT for b in boxes)


def test_oip_answers_detections_and_explains_a_chosen_row(det_client):
    import base64

    data = _image(9)
    image = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]}
    meta = det_client.get("/v2/models/det").json()
    assert meta["outputs"][0] == {"name": "detections", "datatype": "FP32", "shape": [-1, 50, 6]}
    resp = det_client.post("/v2/models/det/infer", json={"inputs": [image], "parameters": {
        "explain": "gradcam", "detection": 2}})
    assert resp.status_code == 200, resp.text
    outputs = {o["name"]: o for o in resp.json()["outputs"]}
    dets = np.asarray(outputs["detections"]["data"], dtype=np.float32).reshape(outputs["detections"]["shape"])
    model, x = _engine_input(data)
    with torch.no_grad():
        np.testing.assert_allclose(dets[0], model(x)[0].numpy(), rtol=1e-4, atol=1e-3)
    assert outputs["explained_class"]["data"] == [int(dets[0, 2, 5])]
    served = _post(det_client, "/explain/gradcam", data, detection="2", outputs="raw").json()["explanations"][0]
    heat = np.asarray(outputs["heatmap"]["data"], dtype=np.float32).reshape(outputs["heatmap"]["shape"])[0]
    np.testing.assert_allclose(heat, decode_raw(served["raw"]), rtol=1e-4, atol=1e-9)
    bad = det_client.post("/v2/models/det/infer", json={"inputs": [image], "parameters": {
        "explain": "gradcam", "detection": "first"}})
    assert bad.status_code == 400 and "detection" in bad.json()["detail"]
    missing = det_client.post("/v2/models/det/infer", json={"inputs": [image], "parameters": {
        "explain": "gradcam", "detection": 999}})
    assert missing.status_code == 422 and "does not exist" in missing.json()["detail"]
