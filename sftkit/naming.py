"""Canonical parameter names.

An SFT must apply to every model built on the same base, whatever head sits on top: a language SFT
trained with ``XLMRobertaForMaskedLM`` composes onto ``XLMRobertaForSequenceClassification``. So the
canonical name of a base-model parameter is its name *relative to* ``model.base_model`` (for XLM-R:
``encoder.layer.0.attention.self.query.weight``, without ``roberta.``). Parameters outside the base
model (heads: ``lm_head.dense.weight``, ``classifier.out_proj.weight``) keep their full model name.

Tied weights are one parameter. transformers 5 lists the tied XLM-R embedding under
``lm_head.decoder.weight`` first; its canonical name is still ``embeddings.word_embeddings.weight``,
and every alias resolves to it, so a delta lands on the shared storage exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

# Base-model attribute names used by transformers architectures; used to canonicalise names that
# come from files (composable-sft diffs, raw state dicts) where no live model says which prefix is base.
KNOWN_BASE_PREFIXES = (
    "roberta",
    "bert",
    "distilbert",
    "deberta",
    "electra",
    "albert",
    "xlm",
    "transformer",
    "model",
    "encoder_model",
)


@dataclass
class CanonicalParameter:
    name: str
    parameter: torch.Tensor
    in_base: bool
    aliases: list[str] = field(default_factory=list)


def base_prefix(model: nn.Module) -> str:
    """The attribute name of the base model inside ``model`` (``roberta``), or ``""`` if it is the base."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    if prefix and isinstance(getattr(model, prefix, None), nn.Module):
        return prefix
    return ""


def strip_prefix(name: str, prefix: str) -> str:
    return name[len(prefix) + 1 :] if prefix and name.startswith(prefix + ".") else name


def canonical_parameters(model: nn.Module) -> dict[str, CanonicalParameter]:
    """Map canonical name → parameter, one entry per distinct tensor (tied weights once)."""
    prefix = base_prefix(model)
    groups: dict[int, list[str]] = {}
    tensors: dict[int, torch.Tensor] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
        tensors[id(param)] = param
    result: dict[str, CanonicalParameter] = {}
    for key, names in groups.items():
        in_base_names = [n for n in names if not prefix or n.startswith(prefix + ".")]
        if in_base_names:
            canonical, in_base = strip_prefix(in_base_names[0], prefix), True
        else:
            canonical, in_base = names[0], False
        aliases = sorted({*names, *(strip_prefix(n, prefix) for n in names)} - {canonical})
        result[canonical] = CanonicalParameter(canonical, tensors[key], in_base, aliases)
    return result


def alias_map(model: nn.Module) -> dict[str, str]:
    """Every name a parameter is known by (full, base-relative, tied aliases) → its canonical name."""
    mapping: dict[str, str] = {}
    for canonical, info in canonical_parameters(model).items():
        mapping[canonical] = canonical
        for alias in info.aliases:
            mapping.setdefault(alias, canonical)
    return mapping


def canonical_state_dict(model: nn.Module, *, base_only: bool = False) -> dict[str, torch.Tensor]:
    """Canonical name → detached tensor (sharing storage with the model)."""
    return {
        name: info.parameter.detach()
        for name, info in canonical_parameters(model).items()
        if info.in_base or not base_only
    }


def canonicalize_name(name: str, prefixes: tuple[str, ...] = KNOWN_BASE_PREFIXES) -> str:
    """Strip a known base-model prefix from a name that comes from a file (``roberta.x`` → ``x``)."""
    head, _, rest = name.partition(".")
    return rest if rest and head in prefixes else name
