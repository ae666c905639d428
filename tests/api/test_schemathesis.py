"""Property-based fuzzing of the live app from its own OpenAPI document (bounded examples): no 5xx, no response
that violates the documented schemas, status codes or content types."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from schemathesis.specs.openapi.checks import positive_data_acceptance

from bench._server import running_server

MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def operations():
    """A real `xaas serve` on 127.0.0.1 (its own process, so fuzzing cannot disturb the shared test app)."""
    with running_server(env={"XAAS_DEVICE": "cpu", "XAAS_REQUEST_TIMEOUT": "20"}) as server:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        yield {result.ok().label: result.ok() for result in schema.get_all_operations()}


def test_every_operation_is_fuzzed(operations):
    labels = set(operations)
    assert {"POST /predict", "POST /explain/{method}", "POST /localize", "GET /models/{name}"} <= labels


@pytest.mark.parametrize("label", ["GET /healthz", "GET /readyz", "GET /models", "GET /models/{name}", "GET /methods",
                                   "GET /metrics", "POST /predict", "POST /explain/{method}", "POST /localize"])
def test_operation_conforms_to_the_openapi_document(operations, label):
    operation = operations[label]

    @given(case=operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)
    def check(case):
        # Every check but "schema-valid data must be accepted": no schema can say which base64 strings are decodable
        # images, so random `image` members are rightly refused with a 422 problem.
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    check()
