"""A trained student served through the gateway, on a real Ray started by `prime-ray up`.

One tiny job (the tiny model, every stage, both students) runs through the gateway; its student is
then deployed on the same Ray (Serve's HTTP proxy on a free port), asked through the SDK, over REST and
with the official `openai` client, its memory grown, every bad input checked, and removed again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import psutil
import pytest

from prime_ray.client import Conflict, NotFound, PrimeClient, SpecError
from prime_ray.service.local import free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1800)]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "e2e" / "users.jsonl"


def _cli(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prime_ray", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def gateway():
    """(url, key) of `prime-ray up` with Serve's proxy port chosen free; `prime-ray down` afterwards."""
    home = Path(tempfile.mkdtemp(prefix="prs-", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {**os.environ, "PRIME_RAY_CACHE_DIR": str(home), "PRIME_RAY_POLL_INTERVAL_S": "0.3",
           "PRIME_RAY_SERVE_PORT": str(free_port())}
    for name in ("PRIME_RAY_DB_URL", "PRIME_RAY_ARTIFACT_ROOT", "PRIME_RAY_PORT", "RAY_ADDRESS"):
        env.pop(name, None)
    started = _cli(["up", "--port", "0"], env, timeout=300)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        export = next(line for line in started.stdout.splitlines() if line.startswith("export "))
        values = dict(part.split("=", 1) for part in export.split()[1:])
        yield values["PRIME_RAY_URL"], values["PRIME_RAY_API_KEY"]
    finally:
        stopped = _cli(["down"], env, timeout=180)
        leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if str(home) in " ".join(p.info["cmdline"] or ())]
        shutil.rmtree(home, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert leftovers == []


def _spec(data: Path) -> dict:
    """Every stage, small: both students, a large learning rate so that two steps move the adapters."""
    return {
        "name": "served", "model": {"name_or_path": "tiny-test"},
        "data": {"source": {"format": "jsonl", "path": str(data)}, "task": {"kind": "rating", "min": 1, "max": 5},
                 "split": {"held_out_users": 0.25}, "max_history": 5, "max_train_examples_per_user": 2},
        "memory": {"top_k": 2, "profile_max_new_tokens": 8},
        "generalist": {"max_batch_size": 16, "max_concurrency": 1, "num_cpus_per_replica": 1},
        "traces": {"samples_per_example": 1, "max_new_tokens": 16},
        "train": {"zero_stage": 2, "num_workers": 2, "num_cpus_per_worker": 1, "max_steps": 2, "lr": 0.05,
                  "micro_batch_size": 2, "max_length": 256, "fast_thinking_baseline": True,
                  "log_every_steps": 1, "checkpoint_every_steps": 2},
        "eval": {"modes": ["prime-direct"], "max_new_tokens": 4, "max_examples": 1, "bootstrap_samples": 0,
                 "sample_traces_per_mode": 0},
    }


QUERY = "Heat (1995) | Action|Crime|Thriller"


def test_a_trained_student_is_deployed_asked_grown_and_removed(gateway, tmp_path):
    url, key = gateway
    data = tmp_path / "users.jsonl"
    shutil.copy(FIXTURE, data)
    headers = {"Authorization": f"Bearer {key}"}
    with PrimeClient(url, key, timeout=300) as client:
        job = client.submit(_spec(data))
        with pytest.raises(Conflict, match=f"job {job.id} is (queued|running): only a succeeded job"):
            client.predict(job.id, "u0", QUERY)
        with pytest.raises(Conflict, match="only a succeeded job"):
            client.deploy(job.id)
        job.wait(timeout=1200, progress=False)
        with pytest.raises(Conflict, match="not deployed"):
            client.predict(job.id, "u0", QUERY)

        deployment = client.deploy(job.id, timeout=600)
        assert deployment.state == "ready", deployment
        assert deployment.models == [f"{job.id}/prime", f"{job.id}/fast", f"{job.id}/generalist"]
        assert client.get(job.id).data["deployment"]["state"] == "ready"  # in the job record
        assert client.deploy(job.id).state == "ready"  # deploying again keeps the one there is

        # A known user: the PRIME student's personal-think answer, with the memory it used.
        prime = client.predict(job.id, "u0", QUERY)
        assert prime.adapter == "prime" and prime.mode == "personal-think" and prime.user_id == "u0"
        assert prime.episodes and prime.episodes[0].input == QUERY  # u0 rated Heat: BM25 finds it first
        assert prime.profile is not None and prime.prompt_tokens > 0 and prime.completion_tokens > 0
        assert (prime.answer is None) == (prime.parse_error is not None)

        # The trained adapters change what the base model says on the same prompts.
        users = ["u0", "u1", "u2", "u3"]
        by_adapter = {a: [client.predict(job.id, u, QUERY, adapter=a, mode="personal-think").text for u in users]
                      for a in ("prime", "generalist")}
        assert by_adapter["prime"] != by_adapter["generalist"]
        assert by_adapter["prime"][0] == prime.text  # greedy: the same request, the same text

        # A user not seen in training brings their history.
        new = client.predict(job.id, "newcomer", "Alien (1979) | Horror",
                             history=[{"input": "Aliens (1986) | Horror", "output": "5"},
                                      {"input": "Babe (1995) | Family", "output": "1"}])
        assert [e.input for e in new.episodes][0] == "Aliens (1986) | Horror" and new.profile is None

        # Appended history is what the next prediction retrieves.
        assert "Zardoz" not in {e.input for e in client.predict(job.id, "u1", "Zardoz (1974) | Oddity").episodes}
        grown = client.append_history(job.id, "u1", [{"id": "z1", "input": "Zardoz (1974) | Oddity", "output": "1"}])
        assert grown.added == ["z1"]
        after = client.predict(job.id, "u1", "Zardoz (1974) | Oddity")
        assert after.episodes[0].id == "z1"

        # The official OpenAI client, against the same gateway.
        from openai import NotFoundError as OpenAINotFound
        from openai import OpenAI

        openai = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=300)
        assert {m.id for m in openai.models.list()} == set(deployment.models)
        completion = openai.chat.completions.create(
            model=f"{job.id}/prime", user="u0", messages=[{"role": "user", "content": QUERY}])
        assert completion.choices[0].message.content == prime.text
        assert completion.usage.completion_tokens == prime.completion_tokens
        with pytest.raises(OpenAINotFound, match="known: prime, fast, generalist"):
            openai.chat.completions.create(model=f"{job.id}/slow", user="u0", messages=[{"role": "user", "content": "x"}])

        # Bad input, each answered with what is wrong.
        with pytest.raises(NotFound, match="no job 'job-nope'"):
            client.predict("job-nope", "u0", QUERY)
        with pytest.raises(NotFound, match="no user 'nobody'"):
            client.predict(job.id, "nobody", QUERY)
        with pytest.raises(NotFound, match="no adapter 'slow'; known: prime, fast, generalist"):
            client.predict(job.id, "u0", QUERY, adapter="slow")
        with pytest.raises(SpecError, match="context of 2048 tokens") as long_input:
            client.predict(job.id, "u0", "word " * 5000)
        assert long_input.value.problems[0].path == "input"
        refused = httpx.post(f"{url}/v1/jobs/{job.id}/predict", headers=headers, json={"user_id": "u0"})
        assert refused.status_code == 422 and refused.json()["problems"][0]["path"] == "body.input"

        client.undeploy(job.id, timeout=300)
        with pytest.raises(NotFound, match="has no deployment"):
            client.deployment(job.id)
        with pytest.raises(Conflict, match="not deployed"):
            client.predict(job.id, "u0", QUERY)
        assert openai.models.list().data == []
