"""``Runtime.health``: what a supervisor (Ray Serve's ``check_health``) is told about a process that cannot serve."""

from __future__ import annotations

from tests.support import make_client, wait_ready


def test_health_names_a_dead_worker_thread_and_a_failed_registry(tmp_path):
    with make_client() as client:
        wait_ready(client)
        runtime = client.app.state.runtime
        assert runtime.health() == []
        runtime.batchers["demo"].stop(0)   # the worker thread ends, as if it had died
        assert runtime.health() == ["the worker thread of model 'demo' died"]
        runtime.shutting_down = True       # draining is not a fault: nobody should restart a replica being stopped
        assert runtime.health() == []
    broken = tmp_path / "models.yaml"
    broken.write_text("models:\n  - name: x\n    source: python:nowhere:nothing\n    labels: [a, b]\n"
                      "    input_size: [8, 8]\n")
    with make_client(models=broken) as client:
        runtime = client.app.state.runtime
        runtime.wait_loaded(30)
        problems = runtime.health()
        assert problems[0].startswith("the model registry failed to load") and "model 'x' is not loaded" in problems
