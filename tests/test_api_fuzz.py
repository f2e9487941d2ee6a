"""Fuzz the live server's own OpenAPI description with schemathesis: whatever a client sends, the
answer is never a 5xx, and errors keep the one error shape. Bounded (a few hundred requests) so
it stays well under a minute; no worker runs, so valid submissions just queue (or get a 429)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import schemathesis
from api_support import LiveApi
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from wanserve.settings import load_settings

EXAMPLES_PER_OPERATION = 30  # per operation and per mode (valid / invalid data)


@pytest.fixture(scope="module")
def live_api(tmp_path_factory):
    data = tmp_path_factory.mktemp("api-fuzz")
    # Image URLs that happen to be valid fail fast: nothing here is reachable or allowed.
    server = LiveApi(load_settings(data_dir=data, max_concurrent_tasks=40, fetch_timeout=2,
                                   max_upload_bytes=200_000)).start()
    yield server
    server.stop()


def test_no_input_produces_a_server_error(live_api):
    # Hypothesis driven directly: schemathesis's pytest plugin does not support this pytest.
    schema = schemathesis.openapi.from_url(f"{live_api.url}/openapi.json")
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation, mode in itertools.product(operations, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def call(case) -> None:
            response = case.call(base_url=live_api.url, timeout=10)
            statuses[response.status_code] += 1
            if operation.path == "/health":  # 503 "unhealthy" is its documented answer with no worker
                assert response.status_code == 503 and response.json()["status"] == "unhealthy"
                return
            case.validate_response(response, checks=[not_a_server_error])
            if response.status_code >= 400:
                body = response.json()
                assert set(body) == {"error"} and {"code", "message", "field"} <= set(body["error"]), body

        try:
            call()
        except Unsatisfiable:  # nothing invalid to send (no parameters, no body)
            assert mode is GenerationMode.NEGATIVE
    print(f"\nfuzzed {sum(statuses.values())} requests over {len(operations)} operations: {dict(statuses)}")
    assert sum(statuses.values()) >= len(operations) * 10
