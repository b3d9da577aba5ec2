"""Schemathesis over the gateway with the unusual inputs allowed: strings of any code point (not only what
UTF-8 encodes), NUL bytes, out-of-schema values (negative mode), and spec bodies carrying NaN, infinities,
integers past 64 bits and lone surrogates. No server error, every answer as documented, and nothing
unhandled in the gateway's log (conftest.py)."""

from __future__ import annotations

import json
import math

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks
from starlette.testclient import TestClient

from prime_ray.service.app import create_app
from prime_ray.service.keys import create_key
from prime_ray.service.local import free_port
from prime_ray.service.settings import GatewaySettings

CHECKS = [checks.not_a_server_error, checks.response_schema_conformance, checks.status_code_conformance,
          checks.content_type_conformance]
EXAMPLE = {"name": "movielens-rating", "model": {"name_or_path": "tiny-test"}, "stages": ["ingest"],
           "data": {"source": {"format": "movielens-100k", "task": "rating"}, "task": {"kind": "rating", "min": 1, "max": 5}},
           "traces": {"temperature": 0.8}, "train": {"learning_rate": 0.0002, "max_steps": 3}, "seed": 0}
ODD_VALUES = st.sampled_from([math.nan, math.inf, -math.inf, 10**30, -(10**30), 2**63, "\ud800", "a\udfffb", "\x00",
                              "\U0010ffff", "e\u0301", "\u202e", 1e308, -0.0])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("schema-input")
    app = create_app(GatewaySettings(db_url=f"sqlite:///{root / 'gateway.db'}", artifact_root=str(root / "artifacts"),
                                     ray_address=f"http://127.0.0.1:{free_port()}"))
    _, key = create_key(app.state.store.sessions, "schemathesis")
    api = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Authorization": f"Bearer {key}"})
    api.config.generation.codec = None  # any code point, beyond what UTF-8 encodes
    api.config.generation.update(allow_x00=True)
    return app, api, {"Authorization": f"Bearer {key}"}


def _leaf_paths(document, prefix=()):
    if isinstance(document, dict):
        for key, value in document.items():
            yield from _leaf_paths(value, (*prefix, key))
    else:
        yield prefix


def _replaced(document, path, value):
    document = json.loads(json.dumps(document))
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return document


@pytest.mark.timeout(600)
def test_every_operation_with_any_unicode_and_negative_values(gateway):
    app, api, headers = gateway
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == sum(len(ops) for ops in app.openapi()["paths"].values())  # every operation
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case):
            if case.operation.label == "GET /readyz":  # not ready without Ray: a documented 503
                assert case.call_and_validate(headers=headers, checks=CHECKS[1:]).status_code == 503
            else:
                case.call_and_validate(headers=headers, checks=CHECKS)

        check()


@pytest.mark.timeout(600)
def test_specs_with_non_finite_numbers_huge_integers_and_lone_surrogates_are_refused(gateway):
    app, api, headers = gateway
    create = next(op for op in (r.ok() for r in api.get_all_operations()) if op.label == "POST /v1/jobs")
    paths = list(_leaf_paths(EXAMPLE))
    stored_before = sum(app.state.store.counts_by_state().values())
    accepted, messages = [], set()

    @given(changes=st.lists(st.tuples(st.sampled_from(paths), ODD_VALUES), min_size=1, max_size=3))
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def check(changes):
        body = EXAMPLE
        for path, value in changes:
            body = _replaced(body, path, value)
        raw = json.dumps(body).encode()  # NaN, Infinity and \\ud800 written as Python writes them
        response = create.Case(body=raw, media_type="application/json").call_and_validate(headers=headers,
                                                                                         checks=CHECKS)
        assert response.status_code in (201, 422), response.text
        if response.status_code == 201:
            accepted.append(response.json()["id"])
            response.content.decode("utf-8")  # what was stored can be answered
        else:
            messages.update(p["message"] for p in response.json()["problems"])

    check()
    assert {"must be a finite number", "out of range (integers must fit in 64 bits)",
            "not valid Unicode text (a lone surrogate)"} <= messages  # the odd values did reach the gateway
    # Only what is valid was stored (e.g. a name of odd but encodable characters is refused by its pattern,
    # a huge float such as 1e308 is a finite number), and every stored job reads back.
    assert sum(app.state.store.counts_by_state().values()) == stored_before + len(accepted)
    client = TestClient(app)  # no lifespan: the follower stays off
    for job_id in accepted:
        assert client.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 200
    assert client.get("/v1/jobs", params={"limit": 500}, headers=headers).status_code == 200
