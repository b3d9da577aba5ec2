"""The two-term loss, the plain-PyTorch engine step and the DeepSpeed config (no Ray)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prime_ray.models.loading import load_model
from prime_ray.spec import LoraSpec, ModelSpec, TrainSpec
from prime_ray.training.collate import Batch, collate_rows
from prime_ray.training.deepspeed_config import deepspeed_config
from prime_ray.training.engine import EngineConfig, create_train_engine
from prime_ray.training.lora import attach_lora
from prime_ray.training.loss import LossTerms, TokenCounts, prime_loss, token_counts
from prime_ray.training.sequences import IGNORE_INDEX, TrainSequence


def _seq(i: int, term: str, prompt: int, completion: int) -> TrainSequence:
    ids = [(7 * i + k) % 500 + 10 for k in range(prompt + completion)]
    return TrainSequence(f"u/{i}", term, tuple(ids), tuple([IGNORE_INDEX] * prompt + ids[prompt:]))


SEQS = [_seq(0, "direct", 12, 4), _seq(1, "think", 9, 15), _seq(2, "direct", 20, 3), _seq(3, "think", 6, 11)]


def forward_terms(model, batch: Batch, think_weight: float) -> LossTerms:
    return prime_loss(model(**batch.model_inputs(), use_cache=False).logits, batch.labels, batch.terms, think_weight)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    base, _ = load_model(ModelSpec(name_or_path="tiny-test"), dtype="float32")  # as training loads it
    return attach_lora(base, LoraSpec(r=4, alpha=8))


def _mean_completion_ce(model, seqs: list[TrainSequence]) -> float:
    """Reference: each sequence alone, token CE summed over its completion, divided by all those tokens."""
    total, count = 0.0, 0
    with torch.no_grad():
        for s in seqs:
            logits = model(input_ids=torch.tensor([s.input_ids]), use_cache=False).logits[0, :-1]
            targets = torch.tensor(s.labels[1:])
            keep = targets != IGNORE_INDEX
            total += F.cross_entropy(logits[keep], targets[keep], reduction="sum").item()
            count += int(keep.sum())
    return total / count


@pytest.mark.parametrize("packed", [False, True])
def test_terms_are_the_mean_token_ce_of_their_own_sequences(model, packed):
    rows = [[0, 1, 2, 3]] if packed else [[0], [1], [2], [3]]
    batch = collate_rows(SEQS, rows, pad_id=0, packed=packed)
    with torch.no_grad():
        terms = forward_terms(model, batch, think_weight=1.0)
    assert terms.tokens == TokenCounts(direct=7, think=26)  # completion tokens after the first
    assert token_counts(batch.labels, batch.terms) == terms.tokens  # counted without a forward
    assert terms.direct == pytest.approx(_mean_completion_ce(model, [SEQS[0], SEQS[2]]), rel=1e-4)
    assert terms.think == pytest.approx(_mean_completion_ce(model, [SEQS[1], SEQS[3]]), rel=1e-4)


def test_lambda_changes_the_total_by_exactly_lambda_times_the_think_term(model):
    batch = collate_rows(SEQS, [[0], [1], [2], [3]], pad_id=0, packed=False)
    with torch.no_grad():
        logits = model(**batch.model_inputs(), use_cache=False).logits
    fast = prime_loss(logits, batch.labels, batch.terms, think_weight=0.0)
    for lam in (0.5, 1.0, 3.0):
        prime = prime_loss(logits, batch.labels, batch.terms, think_weight=lam)
        assert prime.direct == fast.direct and prime.think == fast.think
        assert (prime.total - fast.total).item() == pytest.approx(lam * prime.think, rel=1e-6)
    assert fast.total.item() == pytest.approx(fast.direct)


def test_a_normalizer_divides_each_sum_by_the_given_token_counts(model):
    """What the engine passes: the step's counts, so micro-batch shares add up to the step's token mean."""
    batch = collate_rows(SEQS, [[0], [1]], pad_id=0, packed=False)
    with torch.no_grad():
        logits = model(**batch.model_inputs(), use_cache=False).logits
    step = TokenCounts(direct=40, think=100)
    share = prime_loss(logits, batch.labels, batch.terms, 0.5, step)
    assert share.tokens == TokenCounts(direct=4, think=15)  # its own counts are still reported
    expected = share.direct_sum.item() / 40 + 0.5 * share.think_sum.item() / 100
    assert share.total.item() == pytest.approx(expected, rel=1e-6)


def test_no_loss_on_prompt_tokens(model):
    """Changing only prompt targets (not inputs) leaves the loss alone; labels are what is scored."""
    batch = collate_rows(SEQS, [[0], [1]], pad_id=0, packed=False)
    with torch.no_grad():
        logits = model(**batch.model_inputs(), use_cache=False).logits
    base = prime_loss(logits, batch.labels, batch.terms, 1.0)
    relabelled = batch.labels.clone()
    relabelled[0, 1:12] = 5  # the prompt span of sequence 0 made into targets
    scored = prime_loss(logits, relabelled, batch.terms, 1.0)
    assert scored.tokens.direct == base.tokens.direct + 11 and scored.direct != base.direct


def test_a_batch_without_think_sequences_has_a_zero_think_term(model):
    batch = collate_rows(SEQS, [[0], [2]], pad_id=0, packed=False)
    with torch.no_grad():
        terms = forward_terms(model, batch, think_weight=2.0)
    assert terms.tokens.think == 0 and terms.think == 0.0
    assert terms.total.item() == pytest.approx(terms.direct)


def test_plain_step_trains_only_the_adapter_and_lowers_the_loss():
    train = TrainSpec(lora=LoraSpec(r=4, alpha=8), learning_rate=2e-2, max_grad_norm=1.0, warmup_ratio=0.0)
    engine = create_train_engine(EngineConfig(model=ModelSpec(name_or_path="tiny-test"), train=train,
                                              total_steps=100, think_weight=1.0, backend="torch"))
    frozen = {n: p.detach().clone() for n, p in engine.module.named_parameters() if not p.requires_grad}
    batches = [collate_rows(SEQS, [[0, 1]], pad_id=0, packed=True), collate_rows(SEQS, [[2], [3]], pad_id=0, packed=False)]
    stats = [engine.train_step(batches) for _ in range(8)]
    assert stats[-1].loss < stats[0].loss - 1.0
    assert stats[0].grad_norm > 0 and stats[0].tokens == sum(len(s) for s in SEQS)
    assert all(torch.equal(p, frozen[n]) for n, p in engine.module.named_parameters() if not p.requires_grad)


def test_deepspeed_config_follows_the_train_spec():
    spec = TrainSpec(zero_stage=3, offload_optimizer=True, offload_params=True, gradient_accumulation_steps=4,
                     micro_batch_size=2, max_grad_norm=0.5, warmup_ratio=0.1, zero3_param_persistence_threshold=0)
    cfg = deepspeed_config(spec, total_steps=100, bf16=False)
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 0
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert cfg["zero_force_ds_cpu_optimizer"] is False
    assert cfg["gradient_accumulation_steps"] == 4 and cfg["train_micro_batch_size_per_gpu"] == 2
    assert cfg["gradient_clipping"] == 0.5 and cfg["bf16"]["enabled"] is False
    sched = cfg["scheduler"]
    assert sched["type"] == "WarmupCosineLR"
    assert sched["params"]["total_num_steps"] == 100 and sched["params"]["warmup_num_steps"] == 10

    plain = deepspeed_config(TrainSpec(zero_stage=2), total_steps=10, bf16=True)
    assert plain["bf16"]["enabled"] is True and "offload_optimizer" not in plain["zero_optimization"]
    assert "stage3_param_persistence_threshold" not in plain["zero_optimization"]
    with pytest.raises(ValueError, match="offload_params needs train.zero_stage 3"):
        deepspeed_config(TrainSpec(zero_stage=2, offload_params=True), total_steps=10, bf16=False)
    with pytest.raises(ValueError, match="offload_optimizer needs"):
        deepspeed_config(TrainSpec(zero_stage=0, offload_optimizer=True), total_steps=10, bf16=False)


def test_the_schedule_warms_up_from_the_first_step_and_decays_to_the_floor():
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    from prime_ray.training.deepspeed_config import COSINE_MIN_RATIO, start_schedule

    total, peak = 20, 1e-3
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    params = deepspeed_config(TrainSpec(warmup_ratio=0.2, learning_rate=peak), total_steps=total, bf16=False)["scheduler"]["params"]
    scheduler = WarmupCosineLR(optimizer, **params)
    start_schedule(scheduler)
    used = []
    for _ in range(total):  # the rate each optimizer step uses; the engine steps the schedule after it
        used.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert used[0] == pytest.approx(peak / 5) and used[:4] == sorted(used[:4])  # 4 warmup steps, then the peak
    assert max(used) == pytest.approx(peak, rel=0.02) and used.index(max(used)) == 4  # cosine starts one step in
    assert used[4:] == sorted(used[4:], reverse=True) and used[-1] >= COSINE_MIN_RATIO * peak
