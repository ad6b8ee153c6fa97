"""Property-based tests of the app against its own OpenAPI document (schemathesis):
no server errors and every response conforms to the documented schema, for
generated requests (valid and invalid) and for the real ids of a checkpointed task."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from .conftest import API_TOKEN, write_checkpoints

if TYPE_CHECKING:
    from checkpoint import CheckpointManager

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
EXAMPLES = 25  # per operation and mode: the whole module runs in well under a minute


@pytest.fixture
def api_schema(app: FastAPI, manager: CheckpointManager) -> Any:
    write_checkpoints(manager, "fuzz-job", 0, [10.0, 20.0])
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests(api_schema: Any, mode: GenerationMode) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 6
    if mode == GenerationMode.NEGATIVE:  # /healthz has no input to get wrong
        operations = [op for op in operations if op.path != "/healthz"]
    for operation in operations:

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            for headers in (AUTH, {}):
                case.call_and_validate(headers=headers, checks=CHECKS)

        run()


def test_real_ids_conform(api_schema: Any) -> None:
    real = {
        ("GET", "/api/checkpoints/jobs/{job_id}"): {"job_id": "fuzz-job"},
        ("GET", "/api/checkpoints/tasks/{task_id}"): {"task_id": "fuzz-job:0"},
        ("GET", "/api/checkpoints/storage-info/{task_id}"): {"task_id": "fuzz-job:0"},
        ("POST", "/api/checkpoints/tasks/{task_id}/force-checkpoint"): {"task_id": "fuzz-job:0"},
    }
    for (method, path), params in real.items():
        case = api_schema[path][method].Case(path_parameters=params)
        for headers in (AUTH, {}):
            response = case.call_and_validate(headers=headers, checks=CHECKS)
            expected = {"GET": 200, "POST": 202 if headers else 401}[method]
            assert response.status_code == expected, (method, path, response.text)
