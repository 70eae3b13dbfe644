"""The LT-SFT / DeFT-X training engine: the two-phase procedure, the sparse phase, the MLM loss, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import TrainerCallback

from sftkit.compose import composed
from sftkit.errors import ConfigError
from sftkit.metadata import SFTMetadata
from sftkit.naming import canonical_parameters, canonical_state_dict
from sftkit.testing import tiny_classifier, tiny_masked_lm
from sftkit.training.config import SFTTrainingConfig
from sftkit.training.procedure import train_sft
from sftkit.training.sparse import eligible_parameters
from sftkit.training.trainer import SFTModule, _LossCore

VOCAB = 120
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def mlm_dataset(n: int = 24, length: int = 10, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Random token sequences with 3 labelled (masked) positions each: deterministic, no collator RNG."""
    gen = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        ids = torch.randint(5, VOCAB, (length,), generator=gen)
        labels = torch.full((length,), -100)
        positions = torch.randperm(length, generator=gen)[:3]
        labels[positions] = ids[positions]
        inputs = ids.clone()
        inputs[positions] = 4
        items.append({"input_ids": inputs, "attention_mask": torch.ones(length, dtype=torch.long), "labels": labels})
    return items


def task_dataset(n: int = 24, length: int = 8, seed: int = 1, num_labels: int = 3) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        ids = torch.randint(5, VOCAB, (length,), generator=gen)
        label = int(ids[:3].sum()) % num_labels  # learnable from the tokens
        items.append({"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long), "labels": torch.tensor(label)})
    return items


def stack(features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([f[key] for f in features]) for key in features[0]}


class PhaseEnd(TrainerCallback):
    """Records the weights the model sees at the end of phase 2 (and logits on a probe batch)."""

    def __init__(self, probe: dict[str, torch.Tensor] | None = None) -> None:
        self.probe = probe
        self.weights: dict[str, torch.Tensor] = {}
        self.logits: torch.Tensor | None = None
        self.module: SFTModule | None = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model.phase != "sparse":
            return
        self.module = model
        bases = model.bases()
        overrides = model.sparse.overrides(bases)
        by_path = {path: name for name, path in model.eligible_names.items()}
        self.weights = {name: bases[name].detach().clone() for name in bases}
        self.weights.update({by_path[path]: w.detach().clone() for path, w in overrides.items()})
        if self.probe is not None:
            model.eval()
            with torch.no_grad():
                self.logits = model(**self.probe)["logits"].clone()


pytestmark = pytest.mark.usefixtures("one_thread")


def fast_config(**changes: object) -> SFTTrainingConfig:
    settings: dict[str, object] = dict(
        num_params=300, full_steps=4, sparse_steps=4, batch_size=4, learning_rate=5e-3, logging_steps=50
    )
    settings.update(changes)
    return SFTTrainingConfig(**settings)


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def language_run() -> dict[str, object]:
    """One LT-SFT language run with AdamW and weight decay, shared by several checks."""
    model = tiny_masked_lm(seed=0, **NO_DROPOUT)
    before = state_of(model)
    theta0 = {k: v.clone() for k, v in canonical_state_dict(model).items()}
    probe = PhaseEnd()
    sft = train_sft(
        model,
        mlm_dataset(),
        stack,
        fast_config(weight_decay=0.5, optim="adamw_torch"),
        kind="language",
        metadata=SFTMetadata(language="jav", hyperparameters={"train_file": "x.txt"}),
        progress=False,
        callbacks=[probe],
    )
    return {"model": model, "before": before, "theta0": theta0, "sft": sft, "probe": probe}


def test_k_is_exact_and_head_is_dense(language_run):
    sft, model = language_run["sft"], language_run["model"]
    assert sft.nnz == 300
    heads = {n for n, info in canonical_parameters(model).items() if not info.in_base}
    assert set(sft.dense) == heads  # lm_head.dense / layer_norm / bias, stored whole
    assert not set(sft.deltas) & heads
    for name, tensor in sft.dense.items():
        assert tensor.shape == canonical_parameters(model)[name].parameter.shape
    sft.validate()
    assert not any("LayerNorm" in n for n in sft.deltas)  # excluded by default


def test_outside_mask_is_theta0_bit_for_bit_with_weight_decay(language_run):
    sft, theta0, weights = language_run["sft"], language_run["theta0"], language_run["probe"].weights
    assert weights, "phase-2 end was not observed"
    changed_inside = 0
    for name, weight in weights.items():
        keep = torch.ones(weight.numel(), dtype=torch.bool)
        if name in sft.deltas:
            keep[sft.deltas[name].indices] = False
            inside = weight.reshape(-1)[sft.deltas[name].indices]
            changed_inside += int((inside != theta0[name].reshape(-1)[sft.deltas[name].indices]).sum())
            # the SFT's values are exactly what phase 2 trained
            torch.testing.assert_close(inside - theta0[name].reshape(-1)[sft.deltas[name].indices], sft.deltas[name].values)
        assert torch.equal(weight.reshape(-1)[keep], theta0[name].reshape(-1)[keep]), name
    assert changed_inside > 250  # phase 2 did train the masked entries


def test_model_returned_to_theta0_and_tied(language_run):
    model, before = language_run["model"], language_run["before"]
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.lm_head.decoder.weight is model.roberta.embeddings.word_embeddings.weight
    assert all(p.requires_grad for p in model.parameters())
    assert not model.training


def test_metadata_records_how_it_was_made(language_run):
    meta = language_run["sft"].metadata
    hp = meta.hyperparameters
    assert meta.kind == "language" and meta.method == "lt-sft" and meta.language == "jav"
    assert hp["train_file"] == "x.txt"  # caller's fields are kept
    assert hp["num_params"] == 300 and hp["full_steps_run"] == 4 and hp["sparse_steps_run"] == 4
    assert hp["seed"] == 42 and hp["weight_decay"] == 0.5
    assert hp["untie_embeddings"] is True and hp["freeze_decoder"] is True  # the language-SFT default
    assert meta.base.fingerprint and meta.base.fingerprint == language_run["sft"].metadata.base.fingerprint
    from sftkit.fingerprints import describe_base

    fresh = tiny_masked_lm(seed=0, **NO_DROPOUT)
    assert meta.base.fingerprint == describe_base(fresh).fingerprint


def test_sparse_phase_keeps_no_dense_state():
    """Phase 2's trainable tensors are K-vectors (+ head): gradients and optimizer state scale with K."""
    model = tiny_masked_lm(seed=0)
    eligible = eligible_parameters(model, exclude=("*LayerNorm*",))
    for name, param in model.named_parameters():  # as train_sft does: only the head stays dense-trainable
        param.requires_grad_(name.startswith("lm_head."))
    module = SFTModule(model, kind="language", masked_only_mlm_head=True,
                       eligible_names={n: f"roberta.{n}" for n in eligible})
    mask = {n: torch.arange(0, min(5, p.parameter.numel()), dtype=torch.int64) for n, p in eligible.items()}
    module.sparsify(mask)
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    sparse = [p for n, p in trainable if n.startswith("sparse.")]
    assert sum(p.numel() for p in sparse) == sum(m.numel() for m in mask.values())
    assert all(n.startswith(("sparse.", "core.model.lm_head.")) for n, _ in trainable)
    for _ in range(2):  # twice: the tied embedding must come back as the model's own Parameter
        module(**stack(mlm_dataset(n=4)))["loss"].backward()
        assert model.lm_head.decoder.weight is model.roberta.embeddings.word_embeddings.weight
    assert all(p.grad is None for p in model.roberta.parameters())
    assert all(p.grad is not None and p.grad.shape == p.shape for p in sparse)


def test_l1_pull_adds_mean_distance_to_theta0():
    model = tiny_masked_lm(seed=0, **NO_DROPOUT)
    eligible = eligible_parameters(model)
    theta0 = {n: p.parameter.detach().clone() for n, p in eligible.items()}
    names = {n: f"roberta.{n}" for n in eligible}
    plain = SFTModule(model, kind="language", masked_only_mlm_head=True, eligible_names=names)
    pulled = SFTModule(model, kind="language", masked_only_mlm_head=True, eligible_names=names, l1_reg=2.0, theta0=theta0)
    with torch.no_grad():
        model.roberta.encoder.layer[0].attention.self.query.weight[0, :4] += 0.5
    distance = 0.5 * 4 / sum(t.numel() for t in theta0.values())
    batch = stack(mlm_dataset(n=3))
    plain.train(), pulled.train()
    torch.testing.assert_close(pulled(**batch)["loss"] - plain(**batch)["loss"], torch.tensor(2.0 * distance))


def test_masked_only_mlm_loss_equals_full_logits_loss():
    model = tiny_masked_lm(seed=3)
    batch = stack(mlm_dataset(n=6, seed=5))
    reference = model(**batch).loss
    fast = _LossCore(model, kind="language", masked_only_mlm_head=True)(batch)["loss"]
    full = _LossCore(model, kind="language", masked_only_mlm_head=False)(batch)["loss"]
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full, reference, rtol=1e-5, atol=1e-6)
    # and the gradient it trains with
    grads = []
    for loss_of in (lambda: model(**batch).loss, lambda: _LossCore(model, kind="language", masked_only_mlm_head=True)(batch)["loss"]):
        model.zero_grad()
        loss_of().backward()
        grads.append(model.lm_head.dense.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_deft_x_mask_differs_from_lt_sft_when_denoising_matters():
    data = mlm_dataset()
    runs = {}
    for method, extra in (("lt-sft", {}), ("deft-x", {"denoise_rank": 1})):
        model = tiny_masked_lm(seed=0, **NO_DROPOUT)
        runs[method] = train_sft(model, data, stack, fast_config(method=method, **extra), kind="language", progress=False)
    lt, dx = runs["lt-sft"], runs["deft-x"]
    assert lt.nnz == dx.nnz == 300
    lt_mask = {(n, int(i)) for n, d in lt.deltas.items() for i in d.indices}
    dx_mask = {(n, int(i)) for n, d in dx.deltas.items() for i in d.indices}
    assert lt_mask != dx_mask
    assert dx.metadata.method == "deft-x"
    assert dx.metadata.hyperparameters["denoise"]["rank"] == 1


def test_task_sft_over_language_sft_composes_to_training_state():
    """Train φ_L, then φ_T on top of it; θ0 + φ_L + φ_T composed reproduces the phase-2 model."""
    lm = tiny_masked_lm(seed=0, **NO_DROPOUT)
    language = train_sft(lm, mlm_dataset(), stack, fast_config(num_params=400), kind="language", progress=False)

    model = tiny_classifier(seed=0, **NO_DROPOUT)
    model.roberta.load_state_dict(lm.roberta.state_dict())  # the same base θ0 under a task head
    before = state_of(model)
    base = canonical_state_dict(copy.deepcopy(model))
    probe_batch = stack(task_dataset(n=5, seed=9))
    probe = PhaseEnd(probe_batch)

    def accuracy(prediction):
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    task = train_sft(
        model, task_dataset(), stack, fast_config(num_params=250), kind="task", eval_dataset=task_dataset(n=8, seed=4),
        compute_metrics=accuracy, underlying=[language], progress=False, callbacks=[probe],
    )
    # the model is back at θ0 (φ_L reverted, head restored)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert task.nnz == 250  # φ_L is not part of the result
    assert {"classifier.out_proj.weight", "classifier.dense.weight"} <= set(task.dense)
    # δ was measured against θ0 + φ_L: trained weight = θ0 + φ_L + φ_T at every entry
    for name, weight in probe.weights.items():
        expected = base[name].reshape(-1).clone()
        if name in language.deltas:
            expected[language.deltas[name].indices] += language.deltas[name].values
        if name in task.deltas:
            expected[task.deltas[name].indices] += task.deltas[name].values
        torch.testing.assert_close(weight.reshape(-1), expected, rtol=0, atol=1e-6)
    with composed(model, [language, task]):
        model.eval()
        with torch.no_grad():
            logits = model(**{k: v for k, v in probe_batch.items() if k != "labels"}).logits
    torch.testing.assert_close(logits, probe.logits, rtol=1e-5, atol=1e-5)
    assert task.metadata.hyperparameters["underlying"][0]["kind"] == "language"
    assert task.metadata.label_names == ["LABEL_0", "LABEL_1", "LABEL_2"]
    evaluation = task.metadata.hyperparameters["evaluation"]
    assert 0.0 <= evaluation["sparse"]["eval_accuracy"] <= 1.0 and evaluation["full"]["eval_loss"] > 0


def test_embedding_share_gives_the_word_embedding_its_own_budget():
    model = tiny_masked_lm(seed=0, **NO_DROPOUT)
    sft = train_sft(
        model, mlm_dataset(), stack,
        fast_config(embedding_share=0.25, untie_embeddings=False, freeze_decoder=False, full_steps=2, sparse_steps=1),
        kind="language", progress=False,
    )
    assert sft.nnz == 300
    assert sft.deltas["embeddings.word_embeddings.weight"].nnz == 75
    assert sft.metadata.hyperparameters["untie_embeddings"] is False


def test_frozen_tied_decoder_keeps_the_word_embedding_out():
    model = tiny_masked_lm(seed=0)
    eligible = eligible_parameters(model, freeze_word_embedding=True)
    assert "embeddings.word_embeddings.weight" not in eligible
    assert "embeddings.position_embeddings.weight" in eligible
    assert not any(n.startswith("embeddings.") for n in eligible_parameters(model, freeze_embeddings=True))
    only = eligible_parameters(model, include=("encoder.layer.0.*",), exclude=("*bias",))
    assert only and all(n.startswith("encoder.layer.0.") and n.endswith("weight") for n in only)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"method": "diff-pruning"}, "method"),
        ({"num_params": None}, "exactly one of num_params"),
        ({"density": 0.1}, "exactly one of num_params"),
        ({"num_params": 10**9}, "exceeds"),
        ({"num_params": None, "density": 1e-9}, "K = 0"),
        ({"denoise_rank": 2}, "deft-x"),
        ({"full_steps": 2, "full_epochs": 1.0}, "full_steps or full_epochs"),
        ({"resume": True}, "checkpoint_dir"),
        ({"untie_embeddings": True, "freeze_decoder": False}, "freeze_decoder=True"),
    ],
)
def test_config_errors_are_one_line(changes, fragment):
    model = tiny_masked_lm(seed=0)
    before = state_of(model)
    with pytest.raises(ConfigError) as err:
        train_sft(model, mlm_dataset(n=4), stack, fast_config(**changes), kind="language", progress=False)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="kind"):
        train_sft(tiny_masked_lm(), mlm_dataset(n=4), stack, fast_config(), kind="translation", progress=False)


def test_head_warmup_trains_only_the_head_and_hands_the_model_back():
    model = tiny_masked_lm(seed=0, **NO_DROPOUT)
    before = state_of(model)
    head_before = {n: t.clone() for n, t in before.items() if n.startswith("lm_head.") and "decoder" not in n}
    sft = train_sft(model, mlm_dataset(), stack, fast_config(head_warmup_steps=3), kind="language", progress=False)
    assert sft.nnz == 300
    assert sft.metadata.hyperparameters["head_warmup_train_loss"] is not None
    after = state_of(model)
    assert all(torch.equal(after[k], v) for k, v in before.items())  # the fresh head comes back too
    stored = {n: t for n, t in sft.dense.items() if n.startswith("lm_head.")}
    assert stored and any(not torch.equal(stored[n], head_before[n]) for n in stored)


def test_head_warmup_changes_where_phase_one_starts():
    plain = train_sft(tiny_masked_lm(seed=0, **NO_DROPOUT), mlm_dataset(), stack, fast_config(), kind="language", progress=False)
    warmed = train_sft(
        tiny_masked_lm(seed=0, **NO_DROPOUT), mlm_dataset(), stack, fast_config(head_warmup_steps=3, head_learning_rate=5e-2),
        kind="language", progress=False,
    )
    assert plain.metadata.hyperparameters["head_warmup_train_loss"] is None
    masks = [{n: set(d.indices.tolist()) for n, d in s.deltas.items()} for s in (plain, warmed)]
    assert masks[0] != masks[1]


def test_phase1_cache_shares_phase_one_between_mask_methods(tmp_path):
    cache = tmp_path / "phase1"
    config = fast_config(head_warmup_steps=2)
    lt = train_sft(tiny_masked_lm(seed=0, **NO_DROPOUT), mlm_dataset(), stack, config, kind="language",
                   progress=False, phase1_cache=cache)
    assert (cache / "theta1.safetensors").is_file() and (cache / "phase1.json").is_file()

    phases: list[str] = []

    class Phases(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            phases.append(model.phase)

    deft = dict(method="deft-x", denoise_rank=1, residual_keep=0.0, head_warmup_steps=2)
    shared = train_sft(tiny_masked_lm(seed=0, **NO_DROPOUT), mlm_dataset(), stack, fast_config(**deft), kind="language",
                       progress=False, phase1_cache=cache, callbacks=[Phases()])
    assert phases == ["sparse"]  # neither the head warm-up nor phase 1 ran again
    alone = train_sft(tiny_masked_lm(seed=0, **NO_DROPOUT), mlm_dataset(), stack, fast_config(**deft), kind="language",
                      progress=False)
    assert set(shared.deltas) == set(alone.deltas)
    for name, delta in alone.deltas.items():
        assert torch.equal(shared.deltas[name].indices, delta.indices)
        torch.testing.assert_close(shared.deltas[name].values, delta.values, rtol=0, atol=1e-6)
    assert lt.metadata.hyperparameters["full_steps_run"] == shared.metadata.hyperparameters["full_steps_run"]


def test_phase1_cache_refuses_a_different_phase_one(tmp_path):
    cache = tmp_path / "phase1"
    train_sft(tiny_masked_lm(seed=0), mlm_dataset(), stack, fast_config(), kind="language", progress=False, phase1_cache=cache)
    with pytest.raises(ConfigError, match="phase-1 cache"):
        train_sft(tiny_masked_lm(seed=0), mlm_dataset(), stack, fast_config(full_steps=5), kind="language",
                  progress=False, phase1_cache=cache)
    with pytest.raises(ConfigError, match="phase-1 cache"):
        train_sft(tiny_masked_lm(seed=0), mlm_dataset(seed=3), stack, fast_config(), kind="language",
                  progress=False, phase1_cache=cache)
