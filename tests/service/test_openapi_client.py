"""A client generated from the gateway's OpenAPI document by a standard generator works against it.

`datamodel-code-generator` turns the document into pydantic models; the calls are found by their
`operationId`, as any generated client finds them. The document itself is public: it holds no secrets.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from prime_ray.service.app import create_app
from prime_ray.service.keys import create_key
from prime_ray.service.local import free_port
from prime_ray.service.server import BackgroundServer
from prime_ray.service.settings import GatewaySettings

OPERATIONS = {"createJob", "listJobs", "getJob", "cancelJob", "listArtifacts", "downloadArtifact", "jobEvents",
              "jobLogs"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, module_db_url):
    root = tmp_path_factory.mktemp("generated")
    settings = GatewaySettings(db_url=module_db_url, artifact_root=str(root / "artifacts"),
                               ray_address=f"http://127.0.0.1:{free_port()}")
    app = create_app(settings)
    _, key = create_key(app.state.store.sessions, "generated")
    with BackgroundServer(app, free_port()) as url:
        yield url, key


def _generate(document: Path, out: Path):
    subprocess.run([sys.executable, "-m", "datamodel_code_generator", "--input", str(document),
                    "--input-file-type", "openapi", "--output", str(out),
                    "--output-model-type", "pydantic_v2.BaseModel"], check=True, capture_output=True)
    spec = importlib.util.spec_from_file_location("generated_models", out)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' postponed annotations through it
    spec.loader.exec_module(module)
    return module


def test_the_document_is_public_and_every_operation_has_a_short_id(gateway):
    url, _ = gateway
    document = httpx.get(f"{url}/openapi.json", timeout=10).json()
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)) and OPERATIONS <= set(ids)
    assert all("_" not in op_id and len(op_id) <= 24 for op_id in ids), ids
    docs = httpx.get(f"{url}/docs", timeout=10)
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()


def test_a_generated_client_lists_and_creates_jobs(gateway, tmp_path):
    url, key = gateway
    document = tmp_path / "openapi.json"
    document.write_text(httpx.get(f"{url}/openapi.json", timeout=10).text)
    models = _generate(document, tmp_path / "models.py")
    operations = {op["operationId"]: (method.upper(), path) for path, ops in httpx.get(
        f"{url}/openapi.json", timeout=10).json()["paths"].items() for method, op in ops.items()}

    def call(operation: str, body=None, **params):
        method, path = operations[operation]
        return httpx.request(method, url + path.format(**params), timeout=10,
                             headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                             content=body.model_dump_json(by_alias=True, exclude_none=True) if body else None)

    spec = models.JobSpec.model_validate({
        "name": "generated", "model": {"name_or_path": "tiny-test"}, "stages": ["ingest"],
        "data": {"source": {"format": "jsonl", "path": "users.jsonl"}, "task": {"kind": "rating"}}})
    created = call("createJob", spec)
    assert created.status_code == 201, created.text
    job = models.JobOut.model_validate_json(created.text)
    assert job.name == "generated" and job.state.value == "queued"

    listed = models.JobList.model_validate_json(call("listJobs").text)
    assert [j.id for j in listed.jobs] == [job.id]
    fetched = models.JobOut.model_validate_json(call("getJob", job_id=job.id).text)
    assert fetched.id == job.id and fetched.spec.model.name_or_path == "tiny-test"
