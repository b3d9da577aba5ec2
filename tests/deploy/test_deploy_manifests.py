"""The deploy files, checked without a Kubernetes cluster or a Docker engine.

- every YAML under cluster/ and deploy/ loads (all documents);
- KubeRay resources validate against the OpenAPI schemas of KubeRay's CRDs (shared/kuberay-crds beside
  the checkout), with unknown fields rejected as the API server's structural pruning would drop them;
- core Kubernetes objects have their required fields and refer to objects that exist;
- the Serve config validates against Ray Serve's schema, and the RayService carries the same config;
- every `prime-ray` verb, `python -m` module and Serve import path named by a deploy file exists;
- the Dockerfile parses, pins its base image, copies files that exist, and runs as a non-root user.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import tomllib
import yaml

from prime_ray.service.settings import GatewaySettings
from prime_ray.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
SERVE_CONFIG = DEPLOY / "serve" / "generalist.yaml"
CRDS = Path(__file__).resolve().parents[3] / "shared" / "kuberay-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
CORE_KINDS = {"Deployment": "apps/v1", "Service": "v1", "PersistentVolumeClaim": "v1", "ConfigMap": "v1",
              "Secret": "v1"}
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD files are megabytes


def _yaml_files() -> list[Path]:
    return sorted([*ROOT.joinpath("cluster").rglob("*.yaml"), *DEPLOY.rglob("*.yaml")])


def _documents(path: Path) -> list[Any]:
    return [d for d in yaml.load_all(path.read_text(), Loader=Loader) if d is not None]


def _manifests() -> list[dict]:
    """Every Kubernetes object in deploy/kuberay (the kustomization itself excluded)."""
    return [d for p in sorted(KUBERAY.glob("*.yaml")) if p.name != "kustomization.yaml" for d in _documents(p)]


def _of_kind(kind: str) -> list[dict]:
    return [m for m in _manifests() if m["kind"] == kind]


def _pod_specs() -> Iterator[tuple[str, dict]]:
    """(where, pod spec) of every pod template: Deployments and every Ray node group."""
    for m in _manifests():
        name = f"{m['kind']}/{m['metadata']['name']}"
        if m["kind"] == "Deployment":
            yield name, m["spec"]["template"]["spec"]
        cluster = _ray_cluster_spec(m)
        if cluster is not None:
            yield f"{name} head", cluster["headGroupSpec"]["template"]["spec"]
            for group in cluster.get("workerGroupSpecs", []):
                yield f"{name} {group['groupName']}", group["template"]["spec"]


CLUSTER_SPEC_FIELD = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}


def _ray_cluster_spec(manifest: dict) -> dict | None:
    """The RayCluster spec a KubeRay resource carries (None for other kinds)."""
    if manifest["kind"] not in CLUSTER_SPEC_FIELD:
        return None
    field = CLUSTER_SPEC_FIELD[manifest["kind"]]
    return manifest["spec"][field] if field else manifest["spec"]


# ----------------------------------------------------------------------------------- all YAML


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_document_loads_as_a_mapping(path):
    documents = _documents(path)
    assert documents, f"{path} holds no document"
    assert all(isinstance(d, dict) for d in documents)


# ------------------------------------------------------------------------- KubeRay CRD schemas


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 CRD schema as a JSON schema that rejects what the API server would prune."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@cache
def _crd_validator(kind: str) -> jsonschema.Draft7Validator:
    (crd,) = _documents(CRDS / CRD_FILES[kind])
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def _crd_errors(manifest: dict) -> list[str]:
    errors = _crd_validator(manifest["kind"]).iter_errors(manifest)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


needs_crds = pytest.mark.skipif(not CRDS.is_dir(), reason=f"KubeRay CRDs not found at {CRDS}")


@needs_crds
@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_kuberay_resources_validate_against_the_crd_schemas(kind):
    manifests = _of_kind(kind)
    assert manifests, f"no {kind} in deploy/kuberay"
    for manifest in manifests:
        assert manifest["apiVersion"] == "ray.io/v1"
        assert manifest["metadata"]["name"]
        assert _crd_errors(manifest) == []


@needs_crds
def test_crd_validation_rejects_unknown_fields_and_wrong_types():
    (cluster,) = _of_kind("RayCluster")
    typo = copy.deepcopy(cluster)
    typo["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    assert any("imagee" in e for e in _crd_errors(typo))
    wrong = copy.deepcopy(cluster)
    wrong["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    assert any("maxReplicas" in e for e in _crd_errors(wrong))
    quantity = copy.deepcopy(cluster)  # int-or-string quantities take both forms
    quantity["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 8
    assert _crd_errors(quantity) == []


def test_ray_clusters_share_version_image_and_token():
    lock = (ROOT / "requirements.lock").read_text()
    (ray_version,) = re.findall(r"^ray==([\w.]+)$", lock, re.M)
    specs = [s for s in map(_ray_cluster_spec, _manifests()) if s is not None]
    assert len(specs) == 3
    for spec in specs:
        assert spec["rayVersion"] == ray_version
        assert spec["authOptions"] == {"mode": "token", "secretName": "prime-ray-ray-token"}
        assert spec["enableInTreeAutoscaling"] is True
        for group in spec["workerGroupSpecs"]:
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
            (container,) = group["template"]["spec"]["containers"]
            assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert "nvidia.com/gpu" not in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]


# ------------------------------------------------------------------------ core Kubernetes objects


def test_core_objects_have_their_required_fields():
    for m in _manifests():
        if m["kind"] not in CORE_KINDS:
            assert m["kind"] in CRD_FILES, f"unexpected kind {m['kind']}"
            continue
        assert m["apiVersion"] == CORE_KINDS[m["kind"]], m["kind"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", m["metadata"]["name"])
        spec = m.get("spec", {})
        if m["kind"] == "Deployment":
            labels = spec["template"]["metadata"]["labels"]
            assert spec["selector"]["matchLabels"].items() <= labels.items()
            assert all(c["name"] and c["image"] for c in spec["template"]["spec"]["containers"])
        elif m["kind"] == "Service":
            assert spec["ports"] and all("port" in p for p in spec["ports"])
            pods = [d["spec"]["template"]["metadata"]["labels"] for d in _of_kind("Deployment")]
            assert any(spec["selector"].items() <= labels.items() for labels in pods), "Service selects no pod"
        elif m["kind"] == "PersistentVolumeClaim":
            assert spec["accessModes"] and spec["resources"]["requests"]["storage"]
        elif m["kind"] in ("ConfigMap", "Secret"):
            assert all(isinstance(v, str) for v in (m.get("data") or m.get("stringData") or {}).values())


def test_pods_refer_to_volumes_claims_and_config_maps_that_exist():
    claims = {m["metadata"]["name"] for m in _of_kind("PersistentVolumeClaim")}
    config_maps = {m["metadata"]["name"] for m in _of_kind("ConfigMap")}
    for where, pod in _pod_specs():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}: mount of unknown volume {mount['name']}"
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, where
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, where


def test_artifacts_are_shared_by_the_gateway_and_every_ray_node_that_runs_jobs():
    (artifacts,) = [m for m in _of_kind("PersistentVolumeClaim") if m["metadata"]["name"] == "prime-ray-artifacts"]
    assert artifacts["spec"]["accessModes"] == ["ReadWriteMany"]
    for where, pod in _pod_specs():
        if where.startswith("RayService"):
            continue  # serving writes no artifacts
        mounts = {(m["name"], m["mountPath"]) for c in pod["containers"] for m in c.get("volumeMounts", [])}
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        assert any(claims.get(name) == "prime-ray-artifacts" and path == "/artifacts" for name, path in mounts), where


def test_gateway_reaches_the_head_jobs_api_with_the_ray_token():
    (cluster,) = _of_kind("RayCluster")
    (deployment,) = _of_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    fields = {f"PRIME_RAY_{name.upper()}" for name in GatewaySettings.model_fields}
    assert set(env) <= fields, f"not gateway settings: {set(env) - fields}"
    assert env["PRIME_RAY_RAY_ADDRESS"]["value"] == f"http://{cluster['metadata']['name']}-head-svc:8265"
    assert env["PRIME_RAY_ARTIFACT_ROOT"]["value"] == "/artifacts"
    assert env["PRIME_RAY_DB_URL"]["valueFrom"]["secretKeyRef"] == {"name": "prime-ray-gateway", "key": "db-url"}
    token_file = Path(env["PRIME_RAY_RAY_TOKEN_FILE"]["value"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"]
               if "secret" in v}
    (volume,) = [name for name, path in mounts.items() if path == str(token_file.parent)]
    assert secrets[volume] == cluster["spec"]["authOptions"]["secretName"] and token_file.name == "auth_token"
    assert any(p["containerPort"] == 8265 for p in
               cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"])


def test_secrets_the_manifests_need_are_created_by_the_documented_commands():
    """Secrets are not shipped (an apply would overwrite real values): docs/deploy.md creates each one."""
    docs = (ROOT / "docs" / "deploy.md").read_text()
    needed = set()
    for m in _manifests():
        text = json.dumps(m)
        needed |= set(re.findall(r'"secretName": "([^"]+)"', text))
        needed |= set(re.findall(r'"secretKeyRef": \{"name": "([^"]+)"', text))
    assert needed == {"prime-ray-ray-token", "prime-ray-gateway"}
    for name in needed:
        assert f"kubectl create secret generic {name}" in docs


def test_one_image_for_every_container_set_in_the_kustomization():
    (kustomization,) = _documents(KUBERAY / "kustomization.yaml")
    listed = {p.name for p in KUBERAY.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(listed)
    images = {c["image"] for _, pod in _pod_specs() for c in pod["containers"]}
    assert len(images) == 1
    (image,) = images
    assert [i["name"] for i in kustomization["images"]] == [image.split(":")[0]]
    components = {m["metadata"]["labels"]["app.kubernetes.io/component"] for m in _manifests()}
    assert components == {"storage", "service", "job", "serving"}  # the label selectors docs/deploy.md uses


def test_rayjob_runs_the_spec_from_its_config_map():
    (job,) = _of_kind("RayJob")
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:4] == ["python", "-m", "prime_ray", "run"]
    spec_path = Path(words[4])
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (mount,) = [m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] == str(spec_path.parent)]
    (volume,) = [v for v in head["volumes"] if v["name"] == mount["name"]]
    (config_map,) = [c for c in _of_kind("ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"]]
    spec = parse_spec(yaml.safe_load(config_map["data"][spec_path.name]), source="rayjob.yaml ConfigMap")
    assert spec.artifact_root == "/artifacts" and spec.train.use_gpu
    assert spec.generalist.num_gpus_per_replica >= 1
    assert job["spec"]["shutdownAfterJobFinishes"] is True


# ------------------------------------------------------------------------------------- Serve


def _serve_configs() -> list[tuple[str, dict]]:
    (service,) = _of_kind("RayService")
    return [("deploy/serve/generalist.yaml", yaml.safe_load(SERVE_CONFIG.read_text())),
            ("RayService serveConfigV2", yaml.safe_load(service["spec"]["serveConfigV2"]))]


def test_serve_config_exists():
    assert SERVE_CONFIG.is_file(), f"{SERVE_CONFIG.relative_to(ROOT)} is missing"


@pytest.mark.skipif(not SERVE_CONFIG.is_file(), reason="deploy/serve/generalist.yaml is missing")
def test_serve_configs_validate_and_agree():
    from ray.serve.schema import ServeDeploySchema

    (_, file_config), (_, service_config) = configs = _serve_configs()
    for _where, config in configs:
        ServeDeploySchema.model_validate(config)
    assert service_config == file_config, "RayService serveConfigV2 differs from deploy/serve/generalist.yaml"


@pytest.mark.skipif(not SERVE_CONFIG.is_file(), reason="deploy/serve/generalist.yaml is missing")
def test_serve_import_paths_build_the_application():
    from ray.serve import Application

    for where, config in _serve_configs():
        for app in config["applications"]:
            module, attribute = app["import_path"].split(":")
            builder = getattr(importlib.import_module(module), attribute)
            assert isinstance(builder(app.get("args", {})), Application), where


# ---------------------------------------------------------------------- commands and modules


def _container_commands() -> Iterator[tuple[str, list[str]]]:
    for where, pod in _pod_specs():
        for container in pod["containers"]:
            words = [*container.get("command", []), *container.get("args", [])]
            if words:
                yield where, words
    for job in _of_kind("RayJob"):
        yield "RayJob entrypoint", shlex.split(job["spec"]["entrypoint"])
    instructions = dict(_dockerfile_instructions())
    yield "Dockerfile CMD", json.loads(instructions["CMD"])


def test_prime_ray_verbs_and_python_modules_named_by_deploy_files_exist():
    import typer.main

    from prime_ray.cli import app

    verbs = set(typer.main.get_command(app).commands)
    seen = set()
    for where, words in _container_commands():
        for i, word in enumerate(words[:-1]):
            if word == "prime-ray":
                assert words[i + 1] in verbs, f"{where}: `prime-ray {words[i + 1]}` is not a command"
                seen.add(words[i + 1])
            if word == "-m" and words[i - 1].startswith("python"):
                module = words[i + 1]
                assert importlib.util.find_spec(module), f"{where}: no module {module}"
                assert importlib.util.find_spec(f"{module}.__main__"), f"{where}: {module} is not runnable"
                if module == "prime_ray":
                    assert words[i + 2] in verbs, f"{where}: `prime-ray {words[i + 2]}` is not a command"
                    seen.add(words[i + 2])
    assert {"gateway", "run"} <= seen


# ------------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        lines.append(current)
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    out = []
    for line in lines:
        instruction, _, arguments = line.strip().partition(" ")
        out.append((instruction.upper(), " ".join(arguments.split())))
    return out


def test_dockerfile_parses_and_pins_its_base_image():
    instructions = _dockerfile_instructions()
    known = {"ARG", "FROM", "RUN", "COPY", "ENV", "USER", "WORKDIR", "EXPOSE", "CMD", "ENTRYPOINT", "LABEL"}
    assert {i for i, _ in instructions} <= known
    kinds = [i for i, _ in instructions]
    assert kinds.count("FROM") == 1 and {"RUN", "COPY", "CMD"} <= set(kinds)
    assert all(i == "ARG" for i in kinds[: kinds.index("FROM")])
    args = dict(a.split("=", 1) for i, a in instructions if i == "ARG" and "=" in a)
    (base,) = [a for i, a in instructions if i == "FROM"]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    name, _, tag = base.partition(":")
    assert name.startswith("nvidia/cuda") and re.match(r"\d+\.\d+\.\d+-", tag), base


def test_dockerfile_copies_files_that_exist_and_installs_with_the_shared_script():
    instructions = _dockerfile_instructions()
    copies = [a.split() for i, a in instructions if i == "COPY"]
    assert copies
    for *sources, _ in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    copied = {source for *sources, _ in copies for source in sources}
    # README.md: pyproject's readme, which the package build reads
    assert {"pyproject.toml", "requirements.lock", "README.md", "prime_ray", "cluster/install.sh"} <= copied
    runs = " ".join(a for i, a in instructions if i == "RUN")
    assert "cluster/install.sh" in runs and "pip install" not in runs  # one install recipe, pinned there
    assert "==" in runs  # the extras it adds are pinned too
    (user,) = [a for i, a in instructions if i == "USER"]
    assert user not in ("root", "0")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"-t prime-ray:{version}" in (DEPLOY / "Dockerfile").read_text()
