"""Which parameters an SFT trains, and the phase-2 sparse parametrisation.

Phase 2 of LT-SFT / DeFT-X trains only K entries of the base model. Training the dense weights with a
gradient mask would keep a dense gradient and dense optimizer state for every frozen entry, and a
decoupled weight decay (or any optimizer with momentum) would still move entries outside the mask.
Instead, each masked parameter gets a flat trainable vector of its K_i masked *values*; the forward
pass sees ``weight = θ0.index_put(mask, values)`` (via :func:`torch.func.functional_call`), so the
base weights are never written, entries outside the mask are θ0 bit for bit, and gradients and
optimizer state scale with K. Tied weights (the word embedding shared with the MLM decoder) are
overridden once under their module name; ``functional_call(tie_weights=True)`` feeds the same tensor
to every alias.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping

import torch
from torch import nn

from sftkit.naming import CanonicalParameter, base_prefix, canonical_parameters

Mask = dict[str, torch.Tensor]
WORD_EMBEDDING = "embeddings.word_embeddings.weight"


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def word_embedding_name(model: nn.Module) -> str | None:
    """Canonical name of the input word embedding (``embeddings.word_embeddings.weight`` for XLM-R)."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embedding, "weight", None)
    for name, info in canonical_parameters(model).items():
        if weight is not None and info.parameter is weight:
            return name
    return None


def tied_decoder(model: nn.Module) -> nn.Module | None:
    """The MLM output layer when its weight *is* the input embedding (shared storage), else ``None``."""
    if not (hasattr(model, "get_output_embeddings") and hasattr(model, "get_input_embeddings")):
        return None
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or emb is None or getattr(out, "weight", None) is not getattr(emb, "weight", None):
        return None
    return out


def untie_decoder(model: nn.Module, *, freeze: bool) -> Callable[[], None]:
    """Give the tied MLM decoder its own copy of the embedding; return a function that re-ties it.

    The copy starts equal to the (θ0) embedding, so the output layer is still the pretrained one.
    """
    out = tied_decoder(model)
    if out is None:
        return lambda: None
    shared = out.weight
    out.weight = nn.Parameter(shared.detach().clone(), requires_grad=not freeze)

    def retie() -> None:
        out.weight = shared

    return retie


def eligible_parameters(
    model: nn.Module,
    *,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    freeze_embeddings: bool = False,
    freeze_word_embedding: bool = False,
) -> dict[str, CanonicalParameter]:
    """Base-model floating-point weights the sparse fine-tuning may touch (canonical names, ties once)."""
    word = word_embedding_name(model)
    result: dict[str, CanonicalParameter] = {}
    for name, info in canonical_parameters(model).items():
        if not info.in_base or not info.parameter.is_floating_point():
            continue
        if include and not _matches(name, include):
            continue
        if exclude and _matches(name, exclude):
            continue
        if freeze_embeddings and name.startswith("embeddings."):
            continue
        if freeze_word_embedding and name == word:
            continue
        result[name] = info
    return result


def head_parameters(model: nn.Module) -> dict[str, CanonicalParameter]:
    """Parameters outside the base model (task classifier, MLM transform and bias) that still train.

    A frozen untied decoder is left out: it stays θ0 and is not part of the SFT.
    """
    return {
        name: info
        for name, info in canonical_parameters(model).items()
        if not info.in_base and info.parameter.requires_grad and info.parameter.is_floating_point()
    }


def module_name(model: nn.Module, canonical: str) -> str:
    """The attribute path of a canonical base parameter inside ``model`` (``roberta.`` + canonical)."""
    prefix = base_prefix(model)
    return f"{prefix}.{canonical}" if prefix else canonical


def _key(name: str) -> str:
    return name.replace(".", "__")


class SparseValues(nn.Module):
    """Flat trainable values at the masked entries of frozen base weights.

    ``values[name]`` starts as θ0 at the mask (absolute values, so weight decay decays θ as in
    phase 1, only on the trained entries); :meth:`overrides` builds the weights the forward pass sees;
    :meth:`deltas` gives the sparse differences to θ0 at the end.
    """

    def __init__(self, bases: Mapping[str, torch.Tensor], mask: Mask, names: Mapping[str, str]) -> None:
        super().__init__()
        self.names = dict(names)  # canonical → module attribute path
        # Model order, not the mask's: a mask read back from a file is name-sorted, and the optimizer
        # state of a resumed run is matched to parameters by position.
        self.canonical = [n for n in bases if n in mask and mask[n].numel()]
        self.values = nn.ParameterDict()
        for name in self.canonical:
            idx = mask[name].to(torch.int64)
            base = bases[name].detach()
            self.register_buffer(f"idx_{_key(name)}", idx.to(base.device), persistent=False)
            self.values[_key(name)] = nn.Parameter(base.reshape(-1)[idx.to(base.device)].clone())

    def index(self, name: str) -> torch.Tensor:
        return getattr(self, f"idx_{_key(name)}")

    def overrides(self, bases: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Module path → θ0 with the masked entries replaced by the trainable values (differentiable)."""
        out: dict[str, torch.Tensor] = {}
        for name in self.canonical:
            base = bases[name]
            flat = base.detach().reshape(-1).index_put((self.index(name),), self.values[_key(name)])
            out[self.names[name]] = flat.view(base.shape)
        return out

    def deltas(self, bases: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Canonical name → (indices, values − θ0 at the indices), on CPU in float32."""
        out = {}
        for name in self.canonical:
            idx = self.index(name)
            base = bases[name].detach().reshape(-1)[idx]
            value = self.values[_key(name)].detach().to(base.dtype)
            out[name] = (idx.cpu(), (value - base).to(device="cpu", dtype=torch.float32))
        return out

    def l1_to_base(self, base_values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean |θ − θ0| over the trained entries (the optional L1 pull toward θ0)."""
        total = None
        count = 0
        for name in self.canonical:
            diff = (self.values[_key(name)] - base_values[name]).abs().sum()
            total = diff if total is None else total + diff
            count += self.values[_key(name)].numel()
        return total / max(count, 1) if total is not None else torch.zeros(())


def dense_l1_to_base(params: Mapping[str, torch.Tensor], theta0: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean |θ − θ0| over every entry of ``params`` (phase 1's L1 pull)."""
    total = None
    count = 0
    for name, param in params.items():
        diff = (param - theta0[name].to(param.device, param.dtype)).abs().sum()
        total = diff if total is None else total + diff
        count += param.numel()
    return total / max(count, 1) if total is not None else torch.zeros(())
