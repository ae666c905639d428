"""Every option of every endpoint against hostile values: the answer is 200 or a 4xx problem+json, never a 5xx.

Values: Unicode digits (``str.isdigit`` is true for "¹", Python's ``int`` reads "١٢"), NaN/inf, huge numbers, null
bytes, path-like strings, empty and very long strings, wrong JSON types, and (multipart) a field sent twice. Each
option is sent alone, with an otherwise valid request, once as a form field and once as a JSON member, so a failure
names exactly the option and the value.
"""

from __future__ import annotations

import base64
import json

import pytest

from service.api.schemas import (
    ActivationOptions,
    ClassImpressionRequest,
    ExplainOptions,
    LocalizeOptions,
    PredictOptions,
)
from service.engine import METHODS
from tests.support import make_client, png_bytes, wait_ready

STRINGS = [
    "¹", "١٢", "１", "½", "Ⅻ", "1_000",                         # digits that only some parsers read
    "nan", "NaN", "inf", "-Infinity", "1e400", "-1e400",       # non-finite
    "9" * 40, "-" + "9" * 40, "1e308", "0x10", "1e-400",        # huge, tiny, other notations
    "a\x00b", "\x00", "\u202e1", "🙂",                         # null bytes, bidi control, astral plane
    "../../etc/passwd", "/dev/zero", "C:\\Windows\\win.ini", "file:///etc/passwd", "%2e%2e%2f",  # path-like
    "", " ", "x" * 5000, "true", "null", "[1, 2]", "{}", "-1", "0",
]
JSON_VALUES = [True, False, None, [], {}, [[1]], {"a": 1}, 2**70, -(2**70), 1e308, -0.0, 0.5, "¹", "a\x00b", [None],
               ["x"] * 200]


def _image() -> bytes:
    import numpy as np

    rng = np.random.default_rng(0)
    return png_bytes(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


IMAGE = _image()
IMAGE_B64 = base64.b64encode(IMAGE).decode()


@pytest.fixture(scope="module")
def fuzz_client():
    # One small queue, no batching delay: answers come fast and a runaway value would show as a 429, not a hang.
    with make_client(max_batch_delay_ms=0, max_jobs=64, job_max_steps=1000) as c:
        wait_ready(c)
        yield c


def _assert_contract(response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json"), what
        body = response.json()
        assert {"type", "title", "status", "detail"} <= set(body), what
        for item in body.get("errors", []):
            assert set(item) == {"field", "message"}, (what, item)


def _image_endpoints() -> list[tuple[str, list[str]]]:
    """(path, option names) for every image endpoint; methods with their own parameters included."""
    out = [("/predict", list(PredictOptions.model_fields)), ("/localize", list(LocalizeOptions.model_fields)),
           ("/activations", list(ActivationOptions.model_fields))]
    for name, method in METHODS.items():
        options = list(ExplainOptions.model_fields) if name == "gradcam" else []
        out.append((f"/explain/{name}", options + [p.name for p in method.params]))
    return out


CASES = [(path, option) for path, options in _image_endpoints() for option in options]


@pytest.mark.parametrize(("path", "option"), CASES, ids=[f"{p}:{o}" for p, o in CASES])
def test_form_option_with_hostile_values(fuzz_client, path, option):
    for value in STRINGS:
        r = fuzz_client.post(path, files={"image": ("x.png", IMAGE)}, data={option: value, "timeout": "20"}
                             if option != "timeout" else {option: value})
        _assert_contract(r, f"{path} {option}={value[:20]!r}")
    # the same field twice
    r = fuzz_client.post(path, files={"image": ("x.png", IMAGE)}, data={option: ["1", "2"]})
    _assert_contract(r, f"{path} {option} repeated")


@pytest.mark.parametrize(("path", "option"), CASES, ids=[f"{p}:{o}" for p, o in CASES])
def test_json_option_with_hostile_values(fuzz_client, path, option):
    for value in JSON_VALUES + STRINGS[::3]:
        r = fuzz_client.post(path, json={"image": IMAGE_B64, option: value})
        _assert_contract(r, f"{path} {option}={str(value)[:20]!r} (JSON)")


def test_json_member_given_twice_is_malformed(fuzz_client):
    body = f'{{"image": "{IMAGE_B64}", "top_k": 1, "top_k": 2}}'
    r = fuzz_client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["errors"] == [{"field": "top_k", "message": "repeated"}]


def test_json_nan_literal_is_malformed(fuzz_client):
    r = fuzz_client.post("/explain/gradcam", content=f'{{"image": "{IMAGE_B64}", "alpha": NaN}}',
                         headers={"content-type": "application/json"})
    assert r.status_code == 400


@pytest.mark.parametrize("value", ["¹", "٣", "１"])
def test_unicode_digit_targets_are_labels_not_indices(fuzz_client, value):
    for path in ("/predict", "/explain/gradcam", "/localize"):
        r = fuzz_client.post(path, files={"image": ("x.png", IMAGE)}, data={"target": value})
        assert r.status_code == 422 and "not a label" in r.json()["detail"], (path, r.text)
    r = fuzz_client.post("/models/demo/class-impressions", json={"target": value})
    assert r.status_code == 422 and "not a label" in r.json()["detail"]


@pytest.mark.parametrize("option", list(ClassImpressionRequest.model_fields))
def test_class_impression_body_with_hostile_values(fuzz_client, option):
    for value in JSON_VALUES + STRINGS[::2]:
        body = {"target": 0, "steps": 1, option: value}
        r = fuzz_client.post("/models/demo/class-impressions", json=body)
        _assert_contract(r, f"class-impressions {option}={str(value)[:20]!r}")
        if r.status_code == 202:
            fuzz_client.delete(f"/jobs/{r.json()['id']}")
    # booleans are not numbers: "seed": false is not seed 0
    if option in ("steps", "seed", "jitter", "lr", "rotation", "tv_weight", "l2_weight"):
        r = fuzz_client.post("/models/demo/class-impressions", json={"target": 0, option: False})
        assert r.status_code == 422, (option, r.text)


@pytest.mark.parametrize("value", STRINGS)
def test_path_and_query_values(fuzz_client, value):
    from urllib.parse import quote

    for url in (f"/models/{quote(value, safe='')}", f"/models/{quote(value, safe='')}/filters",
                f"/models/demo/filters?layer={quote(value, safe='')}", f"/jobs/{quote(value, safe='')}",
                f"/explain/{quote(value, safe='')}"):
        method = fuzz_client.post if url.startswith("/explain/") else fuzz_client.get
        kwargs = {"files": {"image": ("x.png", IMAGE)}} if url.startswith("/explain/") else {}
        _assert_contract(method(url, **kwargs), url[:60])
    _assert_contract(fuzz_client.delete(f"/jobs/{quote(value, safe='')}"), "DELETE job")


def test_still_serving_after_the_fuzzing(fuzz_client):
    r = fuzz_client.post("/predict", files={"image": ("x.png", IMAGE)})
    assert r.status_code == 200 and json.loads(r.text)["predictions"]
