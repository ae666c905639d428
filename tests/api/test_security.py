"""API keys and CORS."""

from __future__ import annotations

import pytest

from tests.support import make_client, wait_ready


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text("# one per line\nfile-key-123\n")
    with make_client(api_keys="env-key-456", api_keys_file=keys, metrics_public=False,
                     cors_origins="https://review.example") as c:
        wait_ready(c)
        yield c


def test_health_is_exempt_everything_else_needs_a_key(secured, demo_sample):
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/readyz").status_code == 200
    for path in ("/models", "/methods", "/metrics"):
        r = secured.get(path)
        assert r.status_code == 401, path
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["x-request-id"]
    r = secured.post("/predict", files={"image": ("x.png", demo_sample[0])})
    assert r.status_code == 401


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer env-key-456"}, {"X-API-Key": "file-key-123"},
                                     {"authorization": "bearer file-key-123"}])
def test_valid_keys_are_accepted(secured, demo_sample, headers):
    assert secured.get("/models", headers=headers).status_code == 200
    assert secured.post("/predict", files={"image": ("x.png", demo_sample[0])}, headers=headers).status_code == 200


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer env-key-45"}, {"Authorization": "Bearer "},
                                     {"X-API-Key": ""}, {"Authorization": "Basic ZW52LWtleS00NTY="},
                                     {"X-API-Key": "env-key-456x"}])
def test_wrong_keys_are_refused(secured, headers):
    assert secured.get("/models", headers=headers).status_code == 401


def test_cors_preflight_and_exposed_headers(secured):
    pre = secured.options("/predict", headers={"Origin": "https://review.example",
                                               "Access-Control-Request-Method": "POST",
                                               "Access-Control-Request-Headers": "authorization"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://review.example"
    r = secured.get("/healthz", headers={"Origin": "https://review.example"})
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    evil = secured.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in evil.headers


def test_no_keys_configured_means_open(client):
    assert client.get("/models").status_code == 200
