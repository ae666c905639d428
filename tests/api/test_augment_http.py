"""``augment`` over HTTP: a form option like any method parameter (validated before model work, part of the cache
key), the served map equal to the engine's augmented map, and refused for methods without it."""

from __future__ import annotations

import numpy as np
import torch
from support import decode_raw

from service.engine import METHODS


def _post(client, method, data, **options):
    return client.post(f"/explain/{method}", files={"image": ("x.png", data)}, data=options)


def test_augmented_gradcam_is_served_and_differs_from_the_plain_map(client, demo_sample):
    data, _ = demo_sample
    plain = _post(client, "gradcam", data, target="0", outputs="raw")
    aug = _post(client, "gradcam", data, target="0", outputs="raw", augment="true")
    assert plain.status_code == aug.status_code == 200, aug.text
    assert aug.headers["etag"] != plain.headers["etag"]      # a different computation, a different cache entry
    m_plain = decode_raw(plain.json()["explanations"][0]["raw"])
    m_aug = decode_raw(aug.json()["explanations"][0]["raw"])
    assert m_aug.shape == m_plain.shape and not np.allclose(m_aug, m_plain)
    # the engine on the same tensor gives the served map
    runtime = client.app.state.runtime
    model = runtime.model("demo")
    from service.imaging import decode_image, to_model_input

    spec = model.spec
    x = to_model_input(decode_image(data), input_size=spec.input_size, channels=spec.channels, mean=spec.mean,
                       std=spec.std)
    x = torch.as_tensor(x)
    x = x[None] if x.dim() == 3 else x
    want = METHODS["gradcam"].explain(model.module, x, torch.tensor([0]), task=model.task, augment=True)
    np.testing.assert_allclose(m_aug, want[0].numpy(), rtol=1e-4, atol=1e-6)


def test_augment_options_are_validated_before_model_work(client, demo_sample):
    data, _ = demo_sample
    before = client.app.state.runtime.batchers["demo"].stats.items_run
    for method, options, status in [("gradcam", {"augment": "maybe"}, 400),
                                    ("saliency", {"augment": "true", "augment_shift": "0.9"}, 422),
                                    ("occlusion", {"augment": "true"}, 400)]:
        r = _post(client, method, data, **options)
        assert r.status_code == status, (method, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "augment" in r.json()["detail"]
    assert client.app.state.runtime.batchers["demo"].stats.items_run == before


def test_catalogue_lists_augment_for_cam_and_gradient_methods(client):
    methods = {m["name"]: m for m in client.get("/methods").json()["methods"]}
    assert methods["gradcam"]["params"]["augment"]["type"] == "boolean"
    assert methods["integrated-gradients"]["params"]["augment_shift"]["maximum"] == 0.25
    assert "augment" not in methods["occlusion"]["params"]
