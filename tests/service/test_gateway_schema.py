"""Property-based run of the gateway's own OpenAPI document (schemathesis, in-process ASGI).

Requests generated from the document, with a valid key, must never get a 5xx and every answer must
match the document (status code, content type, body schema). Ray is out of reach, so created jobs
stay queued; bounded to a few examples per operation.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from prime_ray.service.app import create_app
from prime_ray.service.keys import create_key
from prime_ray.service.local import free_port
from prime_ray.service.settings import GatewaySettings

CHECKS = [checks.not_a_server_error, checks.response_schema_conformance, checks.status_code_conformance,
          checks.content_type_conformance]


@pytest.fixture(scope="module")
def auth(tmp_path_factory, module_db_url):
    root = tmp_path_factory.mktemp("schema")
    app = create_app(GatewaySettings(db_url=module_db_url, artifact_root=str(root / "artifacts"),
                                     ray_address=f"http://127.0.0.1:{free_port()}"))
    _, key = create_key(app.state.store.sessions, "schemathesis")
    return app, {"Authorization": f"Bearer {key}"}


@pytest.mark.timeout(240)
def test_no_server_errors_and_answers_match_the_document(auth):
    app, headers = auth
    api = schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers)
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == 18

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case):
            if case.operation.label == "GET /readyz":
                # Not ready is the right answer without Ray: a documented 503, whose body must still conform.
                response = case.call_and_validate(headers=headers, checks=CHECKS[1:])
                assert response.status_code == 503
            else:
                case.call_and_validate(headers=headers, checks=CHECKS)

        check()

    # The documented example is a valid spec: it is accepted, and the answer conforms too.
    create = next(op for op in operations if op.label == "POST /v1/jobs")
    example = api.raw_schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["example"]
    response = create.Case(body=example, media_type="application/json").call_and_validate(headers=headers, checks=CHECKS)
    assert response.status_code == 201 and response.json()["name"] == example["name"]
