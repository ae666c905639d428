"""The sync and async clients against a real ``xaas serve``: every endpoint, every image kind, the error paths."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

from xaas_client import (
    AsyncClient,
    BadRequest,
    Client,
    ExplainResponse,
    InvalidInput,
    NotFound,
    PredictResponse,
    XaasConnectionError,
)

LABELS = ["circle", "square", "triangle", "cross", "ring", "star"]


@pytest.fixture()
def xaas(server: str):
    with Client(server, retries=0) as c:
        yield c


def test_metadata_endpoints(xaas: Client):
    assert xaas.health().status == "ok"
    assert xaas.ready().is_ready
    models = xaas.models()
    demo = next(m for m in models if m.name == "demo")
    assert demo.default and demo.task == "multilabel" and demo.input_size == (128, 128) and "gradcam" in demo.methods
    detail = xaas.model("demo")
    assert detail.labels == LABELS and detail.num_classes == 6
    methods = {m.name: m for m in xaas.methods()}
    assert {"gradcam", "occlusion", "smoothgrad"} <= set(methods)
    assert methods["occlusion"].family == "perturbation" and "window" in methods["occlusion"].params


@pytest.mark.parametrize("kind", ["str", "path", "bytes", "bytearray", "file", "pil", "uint8-rgb", "uint8-grey",
                                  "float"])
def test_every_image_kind(xaas: Client, kind: str, sample_image, sample_path):
    image = sample_image[0]
    rgb = np.asarray(image)
    value = {
        "str": str(sample_path),
        "path": sample_path,
        "bytes": sample_path.read_bytes(),
        "bytearray": bytearray(sample_path.read_bytes()),
        "file": io.BytesIO(sample_path.read_bytes()),
        "pil": image,
        "uint8-rgb": rgb,
        "uint8-grey": rgb[:96, :, 0],
        "float": rgb[:, :80].astype(np.float32) / 255.0,
    }[kind]
    result = xaas.predict(value, top_k=3)
    assert isinstance(result, PredictResponse)
    height, width = np.asarray(value if kind.startswith(("uint8", "float")) else image).shape[:2]
    assert result.image.size == (width, height)
    assert len(result.predictions) == 3 and all(0.0 <= p.score <= 1.0 for p in result.predictions)


def test_predict_targets_by_index_and_label(xaas: Client, sample_path):
    result = xaas.predict(sample_path, target=["star", 1], model="demo")
    assert [(p.index, p.label) for p in result.predictions] == [(5, "star"), (1, "square")]
    assert result.model == "demo" and result.task == "multilabel"


def test_explain_all_outputs(xaas: Client, sample_path):
    result = xaas.explain("gradcam", sample_path, target=[0, "star"], outputs=("heatmap", "overlay", "raw"),
                          colormap="viridis", alpha=0.4)
    assert isinstance(result, ExplainResponse) and result.method == "gradcam" and result.layer
    assert [e.index for e in result.explanations] == [0, 5]
    for exp in result.explanations:
        heat = exp.heatmap_array()
        assert heat.shape == (128, 128) and heat.dtype == np.uint8
        assert heat.max() == (0 if exp.empty else 255)
        assert exp.overlay_array().shape == (128, 128, 3)
        raw = exp.raw_array()
        assert raw.dtype == np.float32 and raw.shape == exp.raw.shape
        assert np.isclose(np.nanmax(raw), exp.max, rtol=1e-4, atol=1e-6)


def test_explain_method_params_and_original_size(xaas: Client):
    wide = np.random.default_rng(0).integers(0, 255, (90, 150, 3), dtype=np.uint8)
    result = xaas.explain("occlusion", wide, window=32, stride=16, top_k=2)
    assert len(result.explanations) == 2 and result.layer is None
    assert result.explanations[0].heatmap_array().shape == (90, 150)
    assert xaas.explain("smoothgrad", wide, samples=3, seed=1).explanations[0].heatmap_image().size == (150, 90)


def test_errors_are_typed_and_carry_the_problem(xaas: Client, sample_path):
    with pytest.raises(NotFound) as info:
        xaas.model("no-such-model")
    err = info.value
    assert err.status == 404 and err.request_id and err.type.startswith("https://") and "no-such-model" in err.detail
    with pytest.raises(NotFound):
        xaas.predict(sample_path, model="no-such-model")
    with pytest.raises(NotFound):
        xaas.explain("no-such-method", sample_path)
    with pytest.raises(InvalidInput) as info:
        xaas.predict(sample_path, target=99)
    assert info.value.status == 422 and "99" in info.value.detail and info.value.request_id
    with pytest.raises(InvalidInput):
        xaas.predict(b"definitely not an image")
    with pytest.raises(BadRequest) as info:
        xaas.explain("gradcam", sample_path, bogus=1)
    assert info.value.status == 400 and info.value.errors and info.value.errors[0]["field"] == "bogus"
    assert "bogus" in str(info.value) and info.value.request_id in str(info.value)


def test_unreachable_server_is_a_connection_error():
    with Client("http://127.0.0.1:9", retries=1, max_retry_time=1.0) as c, pytest.raises(XaasConnectionError):
        c.health()


def test_async_client_happy_paths_and_errors(server: str, sample_path, sample_image):
    async def main():
        async with AsyncClient(server, retries=0) as xaas:
            health, ready, models, model, methods, predicted, explained = await asyncio.gather(
                xaas.health(), xaas.ready(), xaas.models(), xaas.model("demo"), xaas.methods(),
                xaas.predict(sample_image[0], top_k=2),
                xaas.explain("gradcam-pp", sample_path, target="circle", outputs=["heatmap", "overlay", "raw"]),
            )
            with pytest.raises(NotFound) as info:
                await xaas.model("no-such-model")
            with pytest.raises(InvalidInput):
                await xaas.predict(sample_path, target="unicorn")
            return health, ready, models, model, methods, predicted, explained, info.value

    health, ready, models, model, methods, predicted, explained, not_found = asyncio.run(main())
    assert health.status == "ok" and ready.is_ready and models[0].name == "demo" and model.labels == LABELS
    assert any(m.name == "gradcam-pp" for m in methods)
    assert len(predicted.predictions) == 2
    exp = explained.explanations[0]
    assert exp.label == "circle" and exp.heatmap_array().shape == (128, 128)
    assert exp.overlay_image().mode == "RGB" and exp.raw_array().ndim == 2
    assert not_found.status == 404 and not_found.request_id


def test_results_round_trip_to_the_servers_json(xaas: Client, sample_path):
    result = xaas.predict(sample_path, top_k=1)
    assert PredictResponse.model_validate(result.to_json()) == result
    assert set(result.to_json()) == {"model", "task", "image", "predictions"}
