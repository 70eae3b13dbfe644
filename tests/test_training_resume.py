"""Checkpoint and resume: an interrupted run, resumed, gives the uninterrupted run's SFT.

The run is made as hard to reproduce as a real one: dropout is on and the collator masks tokens at
random (torch.bernoulli), so the result depends on every RNG draw after the restart.
"""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from sftkit.errors import ConfigError
from sftkit.testing import tiny_masked_lm
from sftkit.training.config import SFTTrainingConfig
from sftkit.training.procedure import train_sft

pytestmark = pytest.mark.usefixtures("one_thread")


def sentences(n: int = 24, length: int = 10) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(5, 120, (length,), generator=gen)} for _ in range(n)]


def random_masking(features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    ids = torch.stack([f["input_ids"] for f in features])
    masked = torch.bernoulli(torch.full(ids.shape, 0.3)).bool()
    masked[:, 0] = True
    return {
        "input_ids": torch.where(masked, torch.full_like(ids, 4), ids),
        "attention_mask": torch.ones_like(ids),
        "labels": torch.where(masked, ids, torch.full_like(ids, -100)),
    }


class Kill(TrainerCallback):
    """Simulates a crash after ``step`` optimizer steps of ``phase``."""

    def __init__(self, phase: str, step: int) -> None:
        self.phase, self.step = phase, step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model.phase == self.phase and state.global_step == self.step:
            raise RuntimeError("simulated crash")


def config(**changes: object) -> SFTTrainingConfig:
    settings: dict[str, object] = dict(
        num_params=300, full_steps=5, sparse_steps=5, batch_size=4, learning_rate=5e-3, weight_decay=0.1,
        save_steps=2, logging_steps=50,
    )
    settings.update(changes)
    return SFTTrainingConfig(**settings)


@pytest.fixture(scope="module")
def uninterrupted() -> object:
    return train_sft(tiny_masked_lm(seed=0), sentences(), random_masking, config(), kind="language", progress=False)


@pytest.mark.parametrize("phase", ["full", "sparse"])
def test_killed_and_resumed_equals_uninterrupted(phase, uninterrupted, tmp_path):
    model = tiny_masked_lm(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sft(
            model, sentences(), random_masking, config(checkpoint_dir=str(tmp_path)), kind="language",
            progress=False, callbacks=[Kill(phase, 3)],
        )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # θ0 even after a crash
    assert (tmp_path / ("phase1" if phase == "full" else "phase2") / "checkpoint-2").is_dir()

    with pytest.raises(ConfigError, match="resume=True"):
        train_sft(tiny_masked_lm(seed=0), sentences(), random_masking, config(checkpoint_dir=str(tmp_path)),
                  kind="language", progress=False)
    with pytest.raises(ConfigError, match="learning_rate"):
        train_sft(tiny_masked_lm(seed=0), sentences(), random_masking,
                  config(checkpoint_dir=str(tmp_path), resume=True, learning_rate=1e-3), kind="language", progress=False)

    resumed = train_sft(
        tiny_masked_lm(seed=0), sentences(), random_masking, config(checkpoint_dir=str(tmp_path), resume=True),
        kind="language", progress=False,
    )
    assert resumed.nnz == uninterrupted.nnz == 300
    assert resumed.deltas.keys() == uninterrupted.deltas.keys()
    for name, delta in uninterrupted.deltas.items():
        assert torch.equal(resumed.deltas[name].indices, delta.indices), name
        torch.testing.assert_close(resumed.deltas[name].values, delta.values, rtol=0, atol=1e-6)
    for name, tensor in uninterrupted.dense.items():
        torch.testing.assert_close(resumed.dense[name], tensor, rtol=0, atol=1e-6)

    # a finished run is not trained again: its stored result comes back
    again = train_sft(
        tiny_masked_lm(seed=0), sentences(), random_masking, config(checkpoint_dir=str(tmp_path), resume=True),
        kind="language", progress=False, callbacks=[Kill("full", 1)],
    )
    assert again == resumed
