"""Open Inference Protocol v2 with a real OIP client (NVIDIA's ``tritonclient.http``) against a running server."""

from __future__ import annotations

import base64
from urllib.parse import urlparse

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def triton(server: str):
    url = urlparse(server)
    client = httpclient.InferenceServerClient(f"{url.hostname}:{url.port}", network_timeout=60.0)
    yield client
    client.close()


def _probabilities(server_url: str, png: bytes) -> list[float]:
    import httpx

    body = httpx.post(f"{server_url}/predict", files={"image": ("x.png", png)}, data={"top_k": "6"}, timeout=60).json()
    return [p["score"] for p in sorted(body["predictions"], key=lambda p: p["index"])]


def test_health_metadata_and_readiness(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("demo")
    meta = triton.get_model_metadata("demo")
    assert meta["name"] == "demo"
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"image": "BYTES", "input": "FP32"}
    assert {"name": "probabilities", "datatype": "FP32", "shape": [-1, 6]} in meta["outputs"]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        triton.get_model_metadata("nope")


def test_infer_bytes_images_equals_predict(triton, server: str, sample_png: bytes):
    """Two encoded images as BYTES (base64 strings in JSON): the probabilities /predict gives for the same file."""
    image = httpclient.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(np.array([base64.b64encode(sample_png)] * 2, dtype=np.object_), binary_data=False)
    result = triton.infer("demo", [image], request_id="r-1")
    probs = result.as_numpy("probabilities")
    assert probs.shape == (2, 6) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[0], _probabilities(server, sample_png), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs[0], probs[1], rtol=1e-6)
    assert result.get_response()["id"] == "r-1"


def test_infer_preprocessed_fp32_and_an_explanation(triton, sample_png: bytes):
    """FP32 [1, 3, 128, 128] prepared as the service would, with parameters.explain: the Grad-CAM heatmap of the
    requested class at the layer's grid, equal to the engine's own map of that input."""
    import torch

    from service.config import DEFAULT_MODELS_FILE
    from service.engine import get_method
    from service.imaging import decode_image, to_model_input
    from service.registry import ModelRegistry

    registry = ModelRegistry.from_file(DEFAULT_MODELS_FILE, device_policy="cpu")
    registry.load_all()
    model = registry.get("demo")
    spec = model.spec
    x = to_model_input(decode_image(sample_png), input_size=spec.input_size, channels=spec.channels, mean=spec.mean,
                       std=spec.std)
    tensor = httpclient.InferInput("input", [1, *x.shape], "FP32")
    tensor.set_data_from_numpy(x[None].numpy(), binary_data=False)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("heatmap", "explained_class")]
    result = triton.infer("demo", [tensor], outputs=outputs, parameters={"explain": "gradcam", "target": "square"})
    heatmap = result.as_numpy("heatmap")
    square = model.labels.index("square")
    assert result.as_numpy("explained_class").tolist() == [square]
    assert result.as_numpy("probabilities") is None          # not asked for: no prediction pass
    mine = get_method("gradcam").explain(model.module, x[None], torch.tensor([square]), layer=model.target_layer,
                                         task=model.task)
    np.testing.assert_allclose(heatmap, mine.numpy(), rtol=1e-4, atol=1e-6)


def test_bad_requests_are_errors_an_oip_client_reads(triton, sample_png: bytes):
    wrong = httpclient.InferInput("input", [1, 3, 8, 8], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32), binary_data=False)
    with pytest.raises(InferenceServerException, match=r"takes FP32 \[N, 3, 128, 128\]"):
        triton.infer("demo", [wrong])
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([base64.b64encode(sample_png)], dtype=np.object_), binary_data=False)
    with pytest.raises(InferenceServerException, match="unknown explanation method 'nope'"):
        triton.infer("demo", [image], parameters={"explain": "nope"})


def test_binary_tensor_extension(triton, sample_png: bytes):
    """tritonclient's default: tensors as bytes after the JSON header (BYTES length-prefixed, FP32 little-endian);
    the answers equal the JSON-encoded request's."""
    as_json = httpclient.InferInput("image", [1], "BYTES")
    as_json.set_data_from_numpy(np.array([base64.b64encode(sample_png)], dtype=np.object_), binary_data=False)
    as_binary = httpclient.InferInput("image", [1], "BYTES")
    as_binary.set_data_from_numpy(np.array([sample_png], dtype=np.object_), binary_data=True)   # raw file bytes
    expected = triton.infer("demo", [as_json]).as_numpy("probabilities")
    np.testing.assert_allclose(triton.infer("demo", [as_binary]).as_numpy("probabilities"), expected, rtol=1e-6)
    zeros = httpclient.InferInput("input", [2, 3, 128, 128], "FP32")
    zeros.set_data_from_numpy(np.zeros((2, 3, 128, 128), np.float32), binary_data=True)
    probs = triton.infer("demo", [zeros]).as_numpy("probabilities")
    assert probs.shape == (2, 6)
    np.testing.assert_allclose(probs[0], probs[1], rtol=1e-6)
