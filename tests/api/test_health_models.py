from __future__ import annotations

import json

from tests.support import ROOT, demo_png


def test_health_ready_and_request_ids(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert len(r.headers["x-request-id"]) == 32
    ready = client.get("/readyz", headers={"X-Request-ID": "ok-1"})
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["models"] == {"demo": "loaded", "demo-seg": "loaded", "demo-3d": "loaded", "demo-mil": "loaded"}
    assert ready.headers["x-request-id"] == "ok-1"
    # a hostile request id is replaced, not echoed
    assert client.get("/healthz", headers={"X-Request-ID": "a\tb" * 100}).headers["x-request-id"] != "a\tb" * 100


def test_models_list_and_detail(client):
    models = client.get("/models").json()["models"]
    assert [m["name"] for m in models] == ["demo", "demo-seg", "demo-3d", "demo-mil"]
    seg = models[1]
    assert seg["task"] == "segmentation" and seg["num_classes"] == 7 and seg["target_layer"] == "context"
    assert seg["default"] is False
    m = models[0]
    assert m["name"] == "demo" and m["default"] is True and m["task"] == "multilabel"
    assert m["num_classes"] == 6 and m["input_size"] == [128, 128] and m["device"] == "cpu"
    assert m["target_layer"]
    detail = client.get("/models/demo").json()
    assert detail["labels"] == ["circle", "square", "triangle", "cross", "ring", "star"]
    missing = client.get("/models/resnet50")
    assert missing.status_code == 404 and "available: demo, demo-seg" in missing.json()["detail"]


def test_metrics_exposes_requests_and_batches(client, demo_sample):
    client.post("/predict", files={"image": ("x.png", demo_sample[0])})
    text = client.get("/metrics").text
    assert 'xaas_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'xaas_batch_rows_count{model="demo"}' in text
    assert 'xaas_model_ready{model="demo"} 1.0' in text


def test_readyz_is_503_until_loaded_and_reports_failures(tmp_path):
    from tests.support import make_client

    bad = tmp_path / "models.yaml"
    bad.write_text("models:\n  - name: broken\n    source: torchvision:resnet18\n    weights: missing.pth\n")
    with make_client(models=bad) as c:
        c.app.state.runtime.wait_loaded(30)
        r = c.get("/readyz")
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json()["status"] == "failed" and "field 'weights'" in r.json()["detail"]
        p = c.post("/predict", json={"image": "AAAA"})
        assert p.status_code == 503 and p.headers["content-type"].startswith("application/problem+json")


def test_openapi_document_is_in_sync():
    from service.openapi import export_openapi

    committed = (ROOT / "openapi" / "openapi.json").read_text()
    assert json.loads(committed) == json.loads(export_openapi()), \
        "openapi/openapi.json drifted: run `xaas export-openapi`"


def test_openapi_document_is_valid_openapi_3_1_and_says_problem_json():
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation.validators import OpenAPIV31SpecValidator

    doc = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    assert doc["openapi"].startswith("3.1")
    validate(doc, cls=OpenAPIV31SpecValidator)  # raises with the path of the first problem
    text = json.dumps(doc)
    assert "prefixItems" not in text, "tuple typing: several tools cannot read it; use minItems/maxItems"
    assert "HTTPValidationError" not in text
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (method, path, status)
    info = doc["components"]["schemas"]["ModelInfo"]["properties"]["input_size"]
    assert info["type"] == "array" and info["minItems"] == 2 and info["maxItems"] == 3   # [D,] H, W


def test_one_structured_access_line_per_request(client, caplog):
    import logging

    from service.logs import JsonFormatter

    caplog.set_level(logging.INFO, logger="xaas.access")
    image = demo_png(8101)  # an image of this test's own: the first request is a result-cache miss

    def access_line(request_id: str) -> dict:
        client.post("/explain/gradcam", files={"image": ("x.png", image)}, data={"top_k": "2"},
                    headers={"X-Request-ID": request_id})
        [record] = [r for r in caplog.records if r.name == "xaas.access" and getattr(r, "request_id", "") == request_id]
        return json.loads(JsonFormatter().format(record))

    line = access_line("trace-me")
    assert line["route"] == "/explain/{method}" and line["status"] == 200 and line["http_method"] == "POST"
    assert line["model"] == "demo" and line["method"] == "gradcam" and line["batch_rows"] == 2
    assert line["cache"] == "miss" and line["latency_ms"] > 0 and line["level"] == "info"
    again = access_line("trace-me-again")
    assert again["cache"] == "hit" and "batch_rows" not in again  # no rows went to the model


def test_versions_come_from_the_installed_distributions(client):
    from importlib.metadata import version

    import service
    import xaas_client

    assert service.__version__ == version("xaas") == client.get("/openapi.json").json()["info"]["version"]
    assert xaas_client.__version__ == version("xaas-client")
