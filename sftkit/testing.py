"""Tiny models for tests, examples and the embedded default (built from configs, no download)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM, XLMRobertaForSequenceClassification


def tiny_config(vocab_size: int = 120, hidden_size: int = 32, layers: int = 2, **overrides: object) -> XLMRobertaConfig:
    """An XLM-R-shaped config small enough to train in seconds on a CPU."""
    params: dict[str, object] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=130,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    params.update(overrides)
    return XLMRobertaConfig(**params)


def tiny_masked_lm(seed: int = 0, **overrides: object) -> XLMRobertaForMaskedLM:
    torch.manual_seed(seed)
    return XLMRobertaForMaskedLM(tiny_config(**overrides)).eval()


def tiny_classifier(seed: int = 0, num_labels: int = 3, **overrides: object) -> XLMRobertaForSequenceClassification:
    torch.manual_seed(seed)
    return XLMRobertaForSequenceClassification(tiny_config(num_labels=num_labels, **overrides)).eval()


def perturbed_copy(model: nn.Module, density: float = 0.1, scale: float = 0.05, seed: int = 1) -> nn.Module:
    """A "fine-tuned" copy: a random ``density`` fraction of every parameter moved by N(0, scale²)."""
    clone = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in clone.parameters():
            keep = torch.rand(param.shape, generator=gen) < density
            param.add_(torch.randn(param.shape, generator=gen) * scale * keep)
    return clone
