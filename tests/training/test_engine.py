"""The training engine: the loss normalization contract and its two backends (no Ray).

The contract (training/loss.py): each term is the token mean over the whole optimizer step, all
micro-batches and all ranks, so a step's loss and gradient equal those of one unsharded batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prime_ray.models.loading import load_model
from prime_ray.spec import TrainSpec
from prime_ray.training.collate import collate_rows
from prime_ray.training.deepspeed_config import warmup_steps
from prime_ray.training.engine import EngineConfig, TorchEngine, create_train_engine
from prime_ray.training.loss import prime_loss

sys.path.insert(0, str(Path(__file__).parent))
from engine_ranks import SEQUENCES, THINK_WEIGHT, TINY, TRAIN, micro_batches  # noqa: E402

sys.path.remove(str(Path(__file__).parent))


class GradientKeeping(TorchEngine):
    """The torch backend, keeping a copy of the summed gradient before each optimizer step."""

    def _optimizer_step(self) -> float:
        self.gradients = {n: p.grad.detach().clone() for n, p in self.module.named_parameters() if p.requires_grad}
        return super()._optimizer_step()


def _unsharded_reference():
    """Loss, gradients and grad norm of every sequence in one padded batch (each term's own token mean)."""
    torch.manual_seed(TRAIN.seed)
    from prime_ray.training.lora import attach_lora

    base, _ = load_model(TINY, dtype="float32")
    model = attach_lora(base, TRAIN.lora)
    batch = collate_rows(SEQUENCES, [[i] for i in range(len(SEQUENCES))], pad_id=0, packed=False)
    terms = prime_loss(model(**batch.model_inputs(), use_cache=False).logits, batch.labels, batch.terms, THINK_WEIGHT)
    terms.total.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()])).item()
    return terms, grads, norm


@pytest.fixture(scope="module")
def reference():
    return _unsharded_reference()


def test_step_loss_and_gradient_are_those_of_the_unsharded_batch(reference):
    terms, grads, norm = reference
    engine = GradientKeeping(EngineConfig(model=TINY, train=TRAIN, total_steps=10, think_weight=THINK_WEIGHT,
                                          backend="torch"))
    batches = micro_batches()
    stats = engine.train_step(batches)

    assert stats.direct_tokens == terms.tokens.direct and stats.think_tokens == terms.tokens.think
    assert stats.direct == pytest.approx(terms.direct, rel=1e-5)
    assert stats.think == pytest.approx(terms.think, rel=1e-5)
    assert stats.loss == pytest.approx(terms.total.item(), rel=1e-5)  # the logged loss is the optimized one
    assert stats.grad_norm == pytest.approx(norm, rel=1e-4)
    for name, expected in grads.items():  # float32 sums in another order: equal as whole tensors
        assert (engine.gradients[name] - expected).norm() <= 1e-4 * expected.norm() + 1e-9, name

    # The data makes the choice matter: averaging per-micro-batch token means would not give this loss.
    per_batch = []
    with torch.no_grad():
        for batch in batches:
            logits = engine.module(**batch.model_inputs(), use_cache=False).logits
            per_batch.append(prime_loss(logits, batch.labels, batch.terms, THINK_WEIGHT))
    assert abs(sum(t.direct for t in per_batch) / 4 - terms.direct) > 0.01 * terms.direct


def test_step_without_think_tokens_reports_none_and_optimizes_the_direct_term():
    direct_only = [i for i, s in enumerate(SEQUENCES) if s.term == "direct"]
    engine = create_train_engine(EngineConfig(model=TINY, train=TRAIN, total_steps=10, think_weight=2.0,
                                              backend="torch"))
    stats = engine.train_step([collate_rows(SEQUENCES, [[i] for i in direct_only], pad_id=0, packed=False)])
    assert stats.think is None and stats.think_tokens == 0 and stats.loss == stats.direct
    # The first step of the linear warmup (at least 2 steps) uses 1/(W+1) of the peak rate.
    assert stats.learning_rate == pytest.approx(TRAIN.learning_rate / (warmup_steps(TRAIN, 10) + 1))
    assert stats.grad_norm > 0


def test_torch_backend_checkpoint_round_trip_continues_identically(tmp_path):
    config = EngineConfig(model=TINY, train=TRAIN, total_steps=10, think_weight=THINK_WEIGHT, backend="torch")
    batches = micro_batches()
    first = create_train_engine(config)
    first.train_step(batches[:2])
    first.save_checkpoint(tmp_path, "step-1")
    expected = first.train_step(batches[2:])
    resumed = create_train_engine(config)
    resumed.load_checkpoint(tmp_path, "step-1")
    again = resumed.train_step(batches[2:])
    assert again.loss == pytest.approx(expected.loss, rel=1e-6)
    assert again.learning_rate == expected.learning_rate
    first.export_adapter(tmp_path / "a")
    resumed.export_adapter(tmp_path / "b")
    a, b = load_file(tmp_path / "a" / "adapter_model.safetensors"), load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown training backend 'jax'"):
        create_train_engine(EngineConfig(model=TINY, train=TrainSpec(), total_steps=1, think_weight=1.0,
                                         backend="jax"))  # type: ignore[arg-type]


@pytest.mark.slow
def test_both_backends_on_two_ranks_match_the_unsharded_step(reference, tmp_path):
    """torch and DeepSpeed ZeRO-2, 2 ranks × 2 micro-batches of unequal size: the same loss, gradient
    norm and weights as one unsharded batch."""
    terms, _, norm = reference
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    script = Path(__file__).parent / "engine_ranks.py"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    stats = json.loads((tmp_path / "stats.json").read_text())

    single = create_train_engine(EngineConfig(model=TINY, train=TRAIN, total_steps=10, think_weight=THINK_WEIGHT,
                                              backend="torch"))
    single.train_step(micro_batches())
    single.export_adapter(tmp_path / "single")
    expected = load_file(tmp_path / "single" / "adapter_model.safetensors")
    for backend in ("torch", "deepspeed"):
        assert stats[backend]["loss"] == pytest.approx(terms.total.item(), rel=1e-5), backend
        assert stats[backend]["direct_tokens"] == terms.tokens.direct, backend
        assert stats[backend]["grad_norm"] == pytest.approx(norm, rel=1e-3), backend
        saved = load_file(tmp_path / backend / "adapter_model.safetensors")
        assert saved.keys() == expected.keys()
        for key, value in expected.items():  # Adam magnifies rounding on near-zero gradients: compare as a whole
            assert (saved[key] - value).norm() <= 1e-3 * value.norm() + 1e-6, (backend, key)
