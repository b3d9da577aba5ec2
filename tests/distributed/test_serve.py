"""The generalist's Serve config, and the deployment on a local Ray with the tiny model."""

import time
from pathlib import Path

import pydantic
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from prime_ray.distributed.serve import GeneralistAppArgs, GeneralistHandle, app_builder
from prime_ray.engine.base import Generation, SamplingParams
from prime_ray.spec import parse_spec

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "serve" / "generalist.yaml"


def test_serve_config_is_valid_for_ray_serve_and_for_the_app():
    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    [app] = config.applications
    assert app.import_path == "prime_ray.distributed.serve:app_builder"
    args = GeneralistAppArgs.model_validate(app.args)
    assert args.model.name_or_path == "smollm2-135m-instruct"
    deployment = app_builder(app.args)._bound_deployment
    assert deployment.num_replicas == args.generalist.replicas
    assert deployment.ray_actor_options["num_cpus"] == args.generalist.num_cpus_per_replica


def test_app_builder_rejects_unknown_args():
    with pytest.raises(pydantic.ValidationError, match="replicaz"):
        app_builder({"generalist": {"replicaz": 2}})


class _RecordingHandle:
    """Stands in for Serve's DeploymentHandle (no cluster): records when requests are sent and read."""

    def __init__(self):
        self.generate, self.events = self, []

    def remote(self, prompt, params):
        self.events.append(("sent", prompt))
        return _Response(self, prompt, params)


class _Response:
    def __init__(self, handle, prompt, params):
        self.handle, self.prompt, self.params = handle, prompt, params

    def result(self):
        self.handle.events.append(("read", self.prompt))
        return Generation(self.prompt.upper(), 1, self.params.max_new_tokens, "length")


def test_generate_groups_has_every_request_in_flight_before_reading_any():
    handle = _RecordingHandle()
    g = GeneralistHandle(handle, "app")
    short, long = SamplingParams(max_new_tokens=2), SamplingParams(max_new_tokens=9)
    out = g.generate_groups([(["x", "y"], short), (["z"], long)])
    assert [[(o.text, o.completion_tokens) for o in group] for group in out] == [[("X", 2), ("Y", 2)], [("Z", 9)]]
    # the second group does not wait for the first one's results: they can share the replica's batches
    assert handle.events == [("sent", "x"), ("sent", "y"), ("sent", "z"), ("read", "x"), ("read", "y"), ("read", "z")]
    assert [o.text for o in g.generate(["w"], short)] == ["W"]


def _spec(tmp_path, **generalist):
    return parse_spec({
        "name": "serve-test",
        "model": {"name_or_path": "tiny-test"},
        "data": {"source": {"format": "jsonl", "path": "x"}, "task": {"kind": "rating"}},
        "generalist": {"max_batch_size": 8, "batch_wait_timeout_s": 0.2, **generalist},
        "artifact_root": str(tmp_path),
    })


@pytest.mark.ray
def test_deployment_batches_requests_scores_and_frees_its_cpus(ray_local, tmp_path):
    from ray import serve

    from prime_ray.distributed.serve import generalist

    spec = _spec(tmp_path)
    prompts = [f"<|im_start|>user\nRate movie number {i}.<|im_end|>\n<|im_start|>assistant\n" for i in range(6)]
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    sampled = SamplingParams(max_new_tokens=6, temperature=0.9, seed=1)
    with generalist(spec, app_name="serve-test") as g:
        # two params sets in flight at once: they share a Serve batch, and are split into one engine call each
        handle = serve.get_deployment_handle("Generalist", app_name="serve-test")
        responses = [handle.generate.remote(p, greedy if i % 2 else sampled) for i, p in enumerate(prompts)]
        mixed = [r.result() for r in responses]
        texts = g.generate(prompts, greedy)
        scores = g.score([prompts[0], prompts[1], prompts[0]], [" 4", " 5", " 4"])
        batch_sizes = g.served_batch_sizes()

    assert len(mixed) == 6 and all(0 < m.completion_tokens <= 6 for m in mixed)
    assert [m.text for m in mixed[1::2]] == [t.text for t in texts[1::2]]  # greedy is greedy, in any batch
    assert len(texts) == 6 and all(t.prompt_tokens > 0 for t in texts)
    assert max(batch_sizes) > 1  # requests were batched
    assert all(s < 0 for s in scores) and scores[0] == pytest.approx(scores[2], abs=1e-3)

    deadline = time.time() + 30  # the app is gone and its replica's CPU is free for the next stage
    while ray_local.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert ray_local.available_resources().get("CPU", 0) == 2
