"""The result cache over HTTP: hits skip the model, rendering options still hit, keys tell requests apart, the LRU
bound holds, ETag / If-None-Match / 304, /localize shares maps with /explain, concurrency, weights digests."""

from __future__ import annotations

import io
import re
import textwrap
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from PIL import Image

from service.config import DEFAULT_MODELS_FILE
from tests.support import decode_png, demo_png, make_client, wait_ready

WEIGHTS = DEFAULT_MODELS_FILE.parent / "demo" / "demo_cnn.safetensors"


@pytest.fixture(scope="module")
def app():
    """A client of its own: these tests reason about what is and is not in the cache."""
    with make_client() as c:
        wait_ready(c)
        yield c


def _post(client, path, data, headers=None, **options):
    return client.post(path, files={"image": ("x.png", data)}, data=options, headers=headers)


def _explain(client, data, method="gradcam", headers=None, **options):
    return _post(client, f"/explain/{method}", data, headers, **options)


def _batches(client) -> int:
    return client.app.state.runtime.batchers["demo"].stats.batches


@contextmanager
def _forwards(client, model="demo"):
    """Counts the forward passes of a model's module while the block runs."""
    calls: list[int] = []
    module = client.app.state.runtime.registry.get(model).module
    handle = module.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        yield calls
    finally:
        handle.remove()


def _metric(client, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", client.get("/metrics").text, re.M)
    assert match, name
    return float(match.group(1))


# ---------------------------------------------------------------------------------------------------- hits


def test_a_repeat_with_other_rendering_options_is_a_hit_without_model_work(app):
    image = demo_png(9001)
    first = _explain(app, image, target="circle")
    assert first.status_code == 200, first.text
    assert first.headers["x-cache"] == "miss"
    batches = _batches(app)
    with _forwards(app) as calls:
        same = _explain(app, image, target="circle")
        overlay = _explain(app, image, target="circle", outputs="heatmap,overlay", colormap="turbo", alpha="0.3")
        raw = _explain(app, image, target="circle", outputs="raw")
    assert calls == [] and _batches(app) == batches          # no forward, no batch: the worker was never asked
    assert [r.headers["x-cache"] for r in (same, overlay, raw)] == ["hit"] * 3
    assert same.content == first.content                     # the hit's body is the miss's body, byte for byte
    [miss_map], [overlay_map] = first.json()["explanations"], overlay.json()["explanations"]
    assert overlay_map["heatmap"] == miss_map["heatmap"]     # identical PNG bytes
    assert decode_png(overlay_map["overlay"]).shape == (128, 128, 3)
    assert "heatmap" not in raw.json()["explanations"][0] and raw.json()["explanations"][0]["raw"]["shape"] == [16, 16]
    for key in ("score", "min", "max", "empty", "nonfinite", "index", "label"):
        assert overlay_map[key] == miss_map[key]


def test_an_overlay_from_the_cache_equals_the_computed_one(app):
    """On a hit the overlay needs the pixels: the image is decoded again (no model work), and the result is the same."""
    image = demo_png(9002)
    options = {"target": "star", "outputs": "overlay", "colormap": "viridis", "alpha": "0.7"}
    computed = _explain(app, image, **options)
    assert computed.headers["x-cache"] == "miss"
    with _forwards(app) as calls:
        cached = _explain(app, image, **options)
    assert calls == [] and cached.headers["x-cache"] == "hit" and cached.content == computed.content


def test_equivalent_requests_share_an_entry(app):
    """Defaults filled in (parameters, layer, frame) and explicit targets whatever top_k: one key, so hits."""
    image = demo_png(9003)
    layer = app.get("/models/demo").json()["target_layer"]
    assert _explain(app, image, target="ring").headers["x-cache"] == "miss"
    for options in ({"target": "ring", "layer": layer}, {"target": "ring", "frame": "0"},
                    {"target": "ring", "top_k": "3"}, {"target": "4"}):  # ring is class 4
        assert _explain(app, image, **options).headers["x-cache"] == "hit", options
    assert _explain(app, image, method="smoothgrad", target="ring", samples="3").headers["x-cache"] == "miss"
    assert _explain(app, image, method="smoothgrad", target="ring", samples="3", noise="0.15", seed="0"
                    ).headers["x-cache"] == "hit"  # 0.15 and 0 are the defaults


def _two_page_tiff() -> bytes:
    pages = [Image.open(io.BytesIO(demo_png(9004, i))) for i in range(2)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=[pages[1]])
    return buf.getvalue()


@pytest.mark.parametrize("change", [
    {"image": "other bytes"}, {"method": "layercam"}, {"options": {"layer": "features.block5"}},
    {"options": {"target": "star"}}, {"options": {"target": ["circle", "star"]}}, {"options": {"target": None}},
    {"options": {"target": None, "top_k": "2"}}, {"options": {"frame": "1"}},
    {"method": "smoothgrad", "options": {"samples": "4"}},
])
def test_anything_in_the_key_that_differs_is_a_miss(app, change):
    tiff = _two_page_tiff()
    base_method, base = ("smoothgrad", {"target": "circle", "samples": "3"}) if change.get("method") == "smoothgrad" \
        else ("gradcam", {"target": "circle"})
    assert _explain(app, tiff, method=base_method, **base).status_code == 200
    assert _explain(app, tiff, method=base_method, **base).headers["x-cache"] == "hit"
    options = {k: v for k, v in {**base, **change.get("options", {})}.items() if v is not None}
    data = demo_png(9005) if "image" in change else tiff
    batches = _batches(app)
    r = _explain(app, data, method=change.get("method", base_method), **options)
    assert r.status_code == 200, r.text
    assert r.headers["x-cache"] == "miss" and _batches(app) == batches + 1


def test_another_encoding_of_the_same_pixels_is_another_key(app):
    """The key is the uploaded bytes' digest, not the pixels': re-encoding is a (correct, if wasteful) miss."""
    pixels = Image.open(io.BytesIO(demo_png(9006)))
    encodings = []
    for level in (1, 9):
        buf = io.BytesIO()
        pixels.save(buf, format="PNG", compress_level=level)
        encodings.append(buf.getvalue())
    assert encodings[0] != encodings[1]
    assert [_explain(app, data, target="circle").headers["x-cache"] for data in encodings] == ["miss", "miss"]


# ---------------------------------------------------------------------------------------------------- bound


def test_lru_eviction_by_bytes_is_counted():
    entry_bytes = 16 * 16 * 4 + 2 * 512      # one gradcam row on the demo model: its 16×16 map + overhead
    with make_client(cache_bytes=2 * entry_bytes) as c:
        wait_ready(c)
        images = [demo_png(9100, i) for i in range(3)]
        assert [_explain(c, im, target="circle").headers["x-cache"] for im in images] == ["miss"] * 3
        cache = c.app.state.runtime.cache
        assert len(cache) == 2 and cache.nbytes == 2 * entry_bytes
        assert _explain(c, images[2], target="circle").headers["x-cache"] == "hit"
        assert _explain(c, images[0], target="circle").headers["x-cache"] == "miss"   # evicted, computed again
        assert _explain(c, images[1], target="circle").headers["x-cache"] == "miss"   # evicted by images[0]
        assert _metric(c, "xaas_cache_evictions_total") == 3.0
        assert _metric(c, "xaas_cache_hits_total") == 1.0 and _metric(c, "xaas_cache_misses_total") == 5.0
        assert _metric(c, "xaas_cache_bytes") == 2 * entry_bytes


def test_zero_bytes_disables_the_cache():
    with make_client(cache_bytes=0) as c:
        wait_ready(c)
        image = demo_png(9200)
        batches = _batches(c)
        answers = [_explain(c, image, target="circle") for _ in range(3)]
        assert [r.headers["x-cache"] for r in answers] == ["miss"] * 3
        assert _batches(c) == batches + 3 and len(c.app.state.runtime.cache) == 0
        assert len({r.headers["etag"] for r in answers}) == 1  # the ETag names the answer, cache or not
        assert _metric(c, "xaas_cache_hits_total") == 0.0 and _metric(c, "xaas_cache_bytes") == 0.0


# ---------------------------------------------------------------------------------------------------- ETag / 304


def test_the_etag_is_stable_and_changes_with_the_representation(app):
    image = demo_png(9300)
    tags = {}
    for name, options in {
        "base": {"target": "circle"},
        "again": {"target": "circle"},
        "colormap ignored without an overlay": {"target": "circle", "colormap": "turbo"},
        "outputs order": {"target": "circle", "outputs": "overlay,heatmap"},
        "outputs": {"target": "circle", "outputs": "heatmap,overlay"},
        "colormap": {"target": "circle", "outputs": "heatmap,overlay", "colormap": "turbo"},
        "alpha": {"target": "circle", "outputs": "heatmap,overlay", "alpha": "0.25"},
        "raw": {"target": "circle", "outputs": "raw"},
        "target": {"target": "star"},
    }.items():
        r = _explain(app, image, **options)
        assert r.status_code == 200, r.text
        tags[name] = r.headers["etag"]
    assert re.fullmatch(r'W/"[0-9a-f]{32}"', tags["base"])
    assert tags["again"] == tags["base"] == tags["colormap ignored without an overlay"]
    assert tags["outputs order"] == tags["outputs"]
    distinct = ["base", "outputs", "colormap", "alpha", "raw", "target"]
    assert len({tags[n] for n in distinct}) == len(distinct)
    localize = [_post(app, "/localize", image, method="gradcam", target="circle", **extra).headers["etag"]
                for extra in ({}, {}, {"threshold": "0.3"}, {"all_components": "true"})]
    assert localize[0] == localize[1] and len(set(localize)) == 3 and tags["base"] not in localize


def test_if_none_match_answers_304_without_a_body_or_model_work(app):
    image = demo_png(9301)
    first = _explain(app, image, target="circle", outputs="heatmap,overlay")
    etag = first.headers["etag"]
    batches = _batches(app)
    for held in (etag, etag.removeprefix("W/"), f'"nope", {etag}', "*", f'W/"0000",{etag} , "x"'):
        r = _explain(app, image, headers={"If-None-Match": held}, target="circle", outputs="heatmap,overlay")
        assert r.status_code == 304, held
        assert r.content == b"" and r.headers["etag"] == etag and "x-cache" not in r.headers
        assert "x-request-id" in r.headers
    lines = _explain(app, image, headers=[("If-None-Match", '"a"'), ("If-None-Match", etag)], target="circle",
                     outputs="heatmap,overlay")
    assert lines.status_code == 304  # a tag on a second header line counts too
    assert _batches(app) == batches
    for held in ('W/"0000"', "garbage", f"{etag} {etag}", etag.lower().replace("w/", "w/")):
        r = _explain(app, image, headers={"If-None-Match": held}, target="circle", outputs="heatmap")
        assert r.status_code == 200 and r.headers["x-cache"] == "hit", held
    other = _explain(app, image, headers={"If-None-Match": etag}, target="circle", outputs="heatmap,overlay",
                     colormap="turbo")
    assert other.status_code == 200 and other.headers["etag"] != etag


def test_a_matching_etag_answers_304_even_when_the_maps_were_evicted():
    """The tag is a digest of every input of a deterministic computation: a match means the client holds the answer,
    whether or not the server still holds the maps (weak tag: equivalent content). Nothing is computed or decoded."""
    with make_client(cache_bytes=0) as c:
        wait_ready(c)
        image = demo_png(9302)
        etag = _explain(c, image, target="circle").headers["etag"]
        batches = _batches(c)
        with _forwards(c) as calls:
            r = _explain(c, image, headers={"If-None-Match": etag}, target="circle")
        assert r.status_code == 304 and r.headers["etag"] == etag and calls == [] and _batches(c) == batches


def test_a_conditional_request_is_still_validated(app):
    image = demo_png(9303)
    star = {"If-None-Match": "*"}
    assert _explain(app, image, headers=star, target="hexagon").status_code == 422
    assert _explain(app, image, headers=star, windw="3").status_code == 400
    assert _post(app, "/localize", image, headers=star, threshold="2").status_code == 422
    assert _explain(app, b"not an image", headers=star).status_code == 422  # no answer exists, so "*" holds none


def test_star_means_any_answer_so_it_is_checked_after_the_work(app):
    """``*`` names no tag: whether an answer exists is known only once the image decoded and the maps exist."""
    image = demo_png(9305)
    batches = _batches(app)
    fresh = _explain(app, image, headers={"If-None-Match": "*"}, target="cross")
    assert fresh.status_code == 304 and fresh.content == b"" and _batches(app) == batches + 1
    assert _explain(app, image, target="cross").headers["x-cache"] == "hit"  # the work was kept
    assert fresh.headers["etag"] == _explain(app, image, target="cross").headers["etag"]


def test_localize_answers_304_too(app):
    image = demo_png(9304)
    first = _post(app, "/localize", image, method="gradcam", threshold="0.4")
    assert first.status_code == 200 and first.headers["x-cache"] == "miss"
    r = _post(app, "/localize", image, headers={"If-None-Match": first.headers["etag"]}, method="gradcam",
              threshold="0.4")
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == first.headers["etag"]


# ---------------------------------------------------------------------------------------------------- /localize


def test_localize_uses_the_maps_explain_computed(app):
    image = demo_png(9400)
    explained = _explain(app, image, target=["circle", "star"])
    assert explained.headers["x-cache"] == "miss"
    batches = _batches(app)
    with _forwards(app) as calls:
        boxes = [_post(app, "/localize", image, method="gradcam", target=["circle", "star"], **extra)
                 for extra in ({}, {"threshold": "0.6"}, {"all_components": "true", "min_area": "5"})]
    assert calls == [] and _batches(app) == batches
    assert [r.headers["x-cache"] for r in boxes] == ["hit"] * 3
    assert [b["index"] for b in boxes[0].json()["boxes"]] == [0, 5]
    assert boxes[0].json()["image"] == explained.json()["image"]
    assert _explain(app, image, method="guided-gradcam", target=["circle", "star"]).headers["x-cache"] == "miss"
    default = _post(app, "/localize", image, target=["circle", "star"])  # the demo's calibrated guided-gradcam
    assert default.json()["method"] == "guided-gradcam" and default.headers["x-cache"] == "hit"


def test_explain_uses_the_maps_localize_computed(app):
    image = demo_png(9401)
    assert _post(app, "/localize", image, method="layercam", target="ring").headers["x-cache"] == "miss"
    assert _explain(app, image, method="layercam", target="ring").headers["x-cache"] == "hit"
    # without targets the selections differ (every likely class vs the top one): separate entries
    assert _post(app, "/localize", image, method="layercam").headers["x-cache"] == "miss"
    assert _explain(app, image, method="layercam").headers["x-cache"] == "miss"


# ---------------------------------------------------------------------------------------------------- concurrency


def test_concurrent_identical_requests_are_each_answered_correctly():
    with make_client(max_batch_delay_ms=20) as c:
        wait_ready(c)
        image = demo_png(9500)
        options = [{"target": "circle", "outputs": "heatmap,raw"},
                   {"target": "circle", "outputs": "heatmap,overlay", "colormap": "magma"}]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: _explain(c, image, **options[i % 2]), range(16)))
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
        assert {r.headers["x-cache"] for r in answers} <= {"hit", "miss"}
        for i, r in enumerate(answers):
            again = _explain(c, image, **options[i % 2])
            assert again.headers["x-cache"] == "hit" and again.content == r.content  # no torn or mixed entries
        assert len(c.app.state.runtime.cache) == 1


# ---------------------------------------------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def two_weights(tmp_path_factory):
    """demo and demo-b differ in one weight; demo-twin has demo's weights under another name."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("weights")
    state = load_file(str(WEIGHTS))
    name = next(k for k in state if k.endswith("weight") and state[k].ndim == 2)
    state[name] = state[name].clone()
    state[name][0, 0] += 0.5
    save_file(state, str(folder / "b.safetensors"))
    entry = textwrap.dedent("""
      - name: {name}
        source: python:service.demo.model:create_demo_model
        weights: {weights}
        labels: [circle, square, triangle, cross, ring, star]
        task: multilabel
        input_size: [128, 128]
        mean: [0.497, 0.497, 0.499]
        std: [0.232, 0.240, 0.231]
    """)
    (folder / "models.yaml").write_text("models:" + "".join(
        entry.format(name=n, weights=w) for n, w in (("demo", WEIGHTS), ("demo-b", folder / "b.safetensors"),
                                                     ("demo-twin", WEIGHTS))))
    return folder / "models.yaml"


def test_models_with_other_weights_have_other_digests_and_never_share_entries(two_weights):
    with make_client(models=two_weights) as c:
        wait_ready(c)
        registry = c.app.state.runtime.registry
        digests = {m: registry.get(m).weights_digest for m in ("demo", "demo-b", "demo-twin")}
        assert digests["demo"] != digests["demo-b"] and digests["demo"] == digests["demo-twin"]
        image = demo_png(9600)
        answers = {m: _explain(c, image, model=m, target="circle", outputs="raw") for m in digests}
        assert [r.headers["x-cache"] for r in answers.values()] == ["miss"] * 3
        assert len({r.headers["etag"] for r in answers.values()}) == 3
        assert len(c.app.state.runtime.cache) == 3
        assert answers["demo"].json()["explanations"] != answers["demo-b"].json()["explanations"]
        for m in digests:
            assert _explain(c, image, model=m, target="circle", outputs="raw").headers["x-cache"] == "hit"


def test_an_etag_survives_a_restart_with_the_same_weights_not_with_new_ones(two_weights, tmp_path):
    """ETags are digests, not process state: another server with the same weights answers 304 to them; a server
    whose weights changed under the same model name does not."""
    image = demo_png(9601)
    with make_client(models=two_weights) as c:
        wait_ready(c)
        etag = _explain(c, image, model="demo", target="circle").headers["etag"]
    text = two_weights.read_text()
    swapped = tmp_path / "models.yaml"
    swapped.write_text(text.replace("name: demo-b", "name: demo-old").replace("name: demo\n", "name: demo-a\n")
                       .replace("name: demo-old", "name: demo"))  # "demo" now has the changed weights
    for models, status in ((two_weights, 304), (swapped, 200)):
        with make_client(models=models) as c:
            wait_ready(c)
            r = _explain(c, image, headers={"If-None-Match": etag}, model="demo", target="circle")
            assert r.status_code == status, models
