"""The generalist's Serve config, and the deployment on a local Ray with the tiny model."""

import time
from pathlib import Path

import pydantic
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from prime_ray.distributed.serve import GeneralistAppArgs, GeneralistHandle, GenerateRequest, app_builder
from prime_ray.engine.base import Generation, SamplingParams, create_engine
from prime_ray.spec import ModelSpec, parse_spec

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

    def remote(self, request: GenerateRequest):
        self.events.append(("sent", request.prompts, request.adapter))
        return _Response(self, request)


class _Response:
    def __init__(self, handle, request: GenerateRequest):
        self.handle, self.request = handle, request

    def result(self):
        self.handle.events.append(("read", self.request.prompts))
        return [Generation(p.upper(), 1, self.request.params.max_new_tokens, "length") for p in self.request.prompts]


def test_generate_groups_has_every_request_in_flight_before_reading_any():
    handle = _RecordingHandle()
    g = GeneralistHandle(handle, "app")
    short, long = SamplingParams(max_new_tokens=2), SamplingParams(max_new_tokens=9)
    out = g.generate_groups([(["x", "y"], short, None), (["z"], long, "prime")])
    assert [[(o.text, o.completion_tokens) for o in group] for group in out] == [[("X", 2), ("Y", 2)], [("Z", 9)]]
    # a group is one request; the second does not wait for the first one's results: they can share the
    # replica's batches
    assert handle.events == [("sent", ("x", "y"), None), ("sent", ("z",), "prime"), ("read", ("x", "y")), ("read", ("z",))]
    assert [o.text for o in g.generate(["w"], short)] == ["W"]


def _lora_adapter(path: Path) -> str:
    """A LoRA adapter with random (non-zero) weights on the tiny model: it changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model

    from prime_ray.models.loading import load_model

    model, _ = load_model(ModelSpec(name_or_path="tiny-test"), dtype="float32")
    torch.manual_seed(0)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).save_pretrained(path)
    return str(path)


def _spec(tmp_path, **generalist):
    return parse_spec({
        "name": "serve-test",
        "model": {"name_or_path": "tiny-test", "dtype": "float32"},  # the same texts as an engine here
        "data": {"source": {"format": "jsonl", "path": "x"}, "task": {"kind": "rating"}},
        "generalist": {"max_batch_size": 8, "batch_wait_timeout_s": 0.2, **generalist},
        "artifact_root": str(tmp_path),
    })


@pytest.mark.ray
def test_deployment_batches_requests_scores_and_frees_its_cpus(ray_local, tmp_path):
    from ray import serve

    from prime_ray.distributed.serve import generalist

    spec = _spec(tmp_path)
    adapter = _lora_adapter(tmp_path / "student")
    prompts = [f"<|im_start|>user\nRate movie number {i}.<|im_end|>\n<|im_start|>assistant\n" for i in range(6)]
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    sampled = SamplingParams(max_new_tokens=6, temperature=0.9, seed=1)
    with generalist(spec, app_name="serve-test", adapters={"student": adapter}) as g:
        # two params sets and two models in flight at once: they share a Serve batch, and are split into
        # one engine call per (params, adapter)
        handle = serve.get_deployment_handle("Generalist", app_name="serve-test")
        requests = [GenerateRequest((p,), greedy if i % 2 else sampled, "student" if i % 3 else None)
                    for i, p in enumerate(prompts)]
        mixed = [r.result()[0] for r in [handle.generate.remote(request) for request in requests]]
        texts = g.generate(prompts, greedy)
        student_texts = g.generate(prompts, greedy, adapter="student")
        scores = g.score([prompts[0], prompts[1], prompts[0]], [" 4", " 5", " 4"])
        student_scores = g.score(prompts[:2], [" 4", " 5"], adapter="student")
        batch_sizes = g.served_batch_sizes()
        # the replica's prefix cache: a prompt that starts as an earlier sequence reads its KV
        long_prompt = prompts[0] + "Past items: " + ", ".join(f"movie {i} -> 4" for i in range(12))
        g.generate([long_prompt], greedy)
        g.generate([long_prompt + " and more"], greedy)
        cache_stats = g.prefix_cache_stats()
        g.reset_prefix_cache()
        emptied = g.prefix_cache_stats()

    merged = create_engine(spec.model, device="cpu", adapter_path=adapter)  # the student on its own
    assert [t.text for t in student_texts] == [t.text for t in merged.generate(prompts, greedy)]
    assert student_texts != texts
    assert student_scores == pytest.approx(merged.score(prompts[:2], [" 4", " 5"]), abs=1e-4)
    assert len(mixed) == 6 and all(0 < m.completion_tokens <= 6 for m in mixed)
    for i in (1, 3, 5):  # greedy is greedy, in any batch, with the request's own model
        assert mixed[i].text == (student_texts if i % 3 else texts)[i].text
    assert len(texts) == 6 and all(t.prompt_tokens > 0 for t in texts)
    assert max(batch_sizes) > 1  # requests were batched
    assert all(s < 0 for s in scores) and scores[0] == pytest.approx(scores[2], abs=1e-3)
    assert cache_stats["hit_tokens"] >= 32 and cache_stats["bytes"] > 0
    assert emptied["bytes"] == 0

    deadline = time.time() + 30  # the app is gone and its replica's CPU is free for the next stage
    while ray_local.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert ray_local.available_resources().get("CPU", 0) == 2


def test_the_engines_thread_gets_the_replicas_torch_threads(monkeypatch):
    """Under OpenMP torch's thread count is per thread and Ray starts a 1-CPU actor's threads at 1: the
    count is set in the thread that runs the engine, not only where the replica was built."""
    import asyncio
    import threading

    import torch

    from prime_ray.distributed.serve import in_thread

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append((n, threading.get_ident())))
    ran_in = asyncio.run(in_thread(2, lambda x: (x, threading.get_ident()), "engine"))
    assert ran_in[0] == "engine" and calls == [(2, ran_in[1])] and ran_in[1] != threading.get_ident()
    asyncio.run(in_thread(None, lambda: None))  # no count given: torch's own is kept
    assert len(calls) == 1
