"""The transformers ``Trainer`` side of SFT training: the loss module, the Trainer subclass, the collator.

Both phases run through :class:`SFTTrainer` (a ``transformers.Trainer``, so ``accelerate launch`` /
``torchrun`` distribute it unchanged) on an :class:`SFTModule`, a thin ``nn.Module`` around the
user's model that computes the loss itself:

* the MLM head is applied only at labelled positions (``masked_only_mlm_head``): with a 250k
  vocabulary, full logits at every position dominate the time and memory of a CPU step;
* the loss is a sum over labelled items divided by the global item count the Trainer passes as
  ``num_items_in_batch``, so 2 processes × batch b give the same gradient as 1 process × batch 2b;
* in phase 2 the forward pass runs the model with :class:`~sftkit.training.sparse.SparseValues`
  overrides, so only the K-vectors and the head are trainable parameters.

Checkpoints hold the trainable tensors only (safetensors), not the frozen base.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from transformers import Trainer
from transformers.utils import SAFE_WEIGHTS_NAME

from sftkit._io import atomic_path
from sftkit.errors import ConfigError
from sftkit.training.sparse import SparseValues, dense_l1_to_base


def masked_lm_head(model: nn.Module) -> str | None:
    """Attribute name of the module mapping hidden states to vocabulary logits (``lm_head``, BERT's ``cls``)."""
    for attr in ("lm_head", "cls"):
        if isinstance(getattr(model, attr, None), nn.Module):
            return attr
    return None


class _LossCore(nn.Module):
    """Model + loss, as one module so ``functional_call`` can swap its weights in phase 2."""

    def __init__(self, model: nn.Module, *, kind: str, masked_only_mlm_head: bool) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        # An attribute name, not a second registration of the head module: a module reachable under two
        # paths breaks functional_call's restoring of tied weights.
        self.head_attr = masked_lm_head(model) if (kind == "language" and masked_only_mlm_head) else None
        self.accepted = set(inspect.signature(model.forward).parameters)

    def forward(self, inputs: Mapping[str, Any], num_items_in_batch: torch.Tensor | int | None = None) -> dict:
        labels = inputs.get("labels")
        model_inputs = {k: v for k, v in inputs.items() if k in self.accepted}
        if labels is None:
            return dict(self.model(**model_inputs))
        if self.kind == "language":
            if self.head_attr is not None:
                base_inputs = {k: v for k, v in model_inputs.items() if k != "labels"}
                hidden = self.model.base_model(**base_inputs)[0]
                selected = labels.ne(-100)
                logits = getattr(self.model, self.head_attr)(hidden[selected])
                loss_sum = F.cross_entropy(logits.float(), labels[selected], reduction="sum")
                outputs: dict[str, Any] = {}
            else:
                out = self.model(**{k: v for k, v in model_inputs.items() if k != "labels"})
                logits = out.logits
                loss_sum = F.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
                )
                outputs = {"logits": logits}
            count = labels.ne(-100).sum()
        else:
            out = self.model(**model_inputs)
            count = labels.ne(-100).sum()
            loss_sum = out.loss * count  # the head's own loss is a mean over the labelled items
            outputs = {"logits": out.logits}
        denominator = count.clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        outputs["loss"] = loss_sum / denominator
        return outputs


class SFTModule(nn.Module):
    """What the Trainer trains: the model (phase 1) or the K-vectors + head over a frozen model (phase 2).

    ``phase`` is ``"full"`` or ``"sparse"`` (callbacks see this module as ``kwargs["model"]``).
    """

    accepts_loss_kwargs = True  # the Trainer passes num_items_in_batch and skips its own GA scaling

    def __init__(
        self,
        model: nn.Module,
        *,
        kind: str,
        masked_only_mlm_head: bool,
        eligible_names: Mapping[str, str],
        l1_reg: float = 0.0,
        l1_scale: float = 1.0,
        theta0: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.core = _LossCore(model, kind=kind, masked_only_mlm_head=masked_only_mlm_head)
        self.eligible_names = dict(eligible_names)  # canonical → module path
        self.sparse: SparseValues | None = None
        self.phase = "full"
        self.l1_reg = float(l1_reg)
        self.l1_scale = float(l1_scale)
        self._theta0 = dict(theta0 or {})
        self._theta0_device: dict[str, torch.Tensor] | None = None
        self._sparse_theta0: dict[str, torch.Tensor] | None = None

    @property
    def model(self) -> nn.Module:
        return self.core.model

    def bases(self) -> dict[str, torch.Tensor]:
        """Canonical name → the live (frozen in phase 2) base parameter."""
        return {name: self.model.get_parameter(path) for name, path in self.eligible_names.items()}

    def sparsify(self, mask: Mapping[str, torch.Tensor]) -> None:
        """Enter phase 2: freeze every eligible weight and train the masked values instead."""
        bases = self.bases()
        for param in bases.values():
            param.requires_grad_(False)
        self.sparse = SparseValues(bases, mask, self.eligible_names)
        self.phase = "sparse"
        self._sparse_theta0 = None

    def forward(self, num_items_in_batch: torch.Tensor | int | None = None, **inputs: Any) -> dict:
        if self.sparse is None:
            outputs = self.core(inputs, num_items_in_batch)
        else:
            overrides = {f"model.{path}": t for path, t in self.sparse.overrides(self.bases()).items()}
            outputs = functional_call(self.core, overrides, (inputs, num_items_in_batch), tie_weights=True)
        if self.l1_reg and self.training and "loss" in outputs:
            scale = self.l1_scale if num_items_in_batch is not None else 1.0
            outputs["loss"] = outputs["loss"] + self.l1_reg * scale * self._l1()
        return outputs

    def _l1(self) -> torch.Tensor:
        if self.sparse is None:
            params = {name: p for name, p in self.bases().items() if p.requires_grad}
            if self._theta0_device is None:
                self._theta0_device = {
                    n: self._theta0[n].to(p.device, p.dtype) for n, p in params.items() if n in self._theta0
                }
            return dense_l1_to_base({n: p for n, p in params.items() if n in self._theta0_device}, self._theta0_device)
        if self._sparse_theta0 is None:
            bases = self.bases()
            self._sparse_theta0 = {
                n: bases[n].detach().reshape(-1)[self.sparse.index(n)].clone() for n in self.sparse.canonical
            }
        return self.sparse.l1_to_base(self._sparse_theta0)


def _atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str) -> None:
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, tmp, metadata={"format": "pt"})


class SFTTrainer(Trainer):
    """``Trainer`` whose checkpoints hold only the trainable tensors of an :class:`SFTModule`.

    The stock ``_save`` would write the whole wrapped model (failing on the tied embedding, and
    storing the frozen base again at every checkpoint in phase 2).
    """

    def _trainable_state(self, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        module = self.accelerator.unwrap_model(model if model is not None else self.model)
        return {name: p for name, p in module.named_parameters() if p.requires_grad}

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        tensors = {n: p.detach().to("cpu").contiguous() for n, p in self._trainable_state().items()}
        _atomic_save_safetensors(tensors, os.path.join(output_dir, SAFE_WEIGHTS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        path = os.path.join(resume_from_checkpoint, SAFE_WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: checkpoint weights missing; delete the incomplete checkpoint folder and resume")
        state = safetensors.torch.load_file(path, device="cpu")
        params = self._trainable_state(model)
        if set(state) != set(params):
            raise ConfigError(
                f"{path}: checkpoint does not match this run's trainable parameters; resume with the same config and model"
            )
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name])


def _digest_value(h: Any, value: Any) -> None:
    if torch.is_tensor(value):
        h.update(str((value.dtype, tuple(value.shape))).encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(value, np.ndarray):
        h.update(value.tobytes())
    elif isinstance(value, Mapping):
        for key in sorted(value):
            h.update(str(key).encode())
            _digest_value(h, value[key])
    else:
        h.update(repr(value).encode())


class DeterministicCollator:
    """Runs a (possibly random, e.g. MLM-masking) collator under a seed derived from the batch itself.

    The Trainer's data loader collates one batch ahead, so the global RNG state saved in a checkpoint
    already includes the next batch's draws and a resumed run would mask that batch differently.
    Seeding each call from (seed, batch content) makes collation a pure function of the batch:
    resume-exact, independent of prefetching, and it leaves the global RNG (dropout) untouched.
    """

    def __init__(self, collator: Callable[[list], Any], seed: int) -> None:
        self.collator = collator
        self.seed = int(seed)

    def __call__(self, features: list) -> Any:
        h = hashlib.blake2b(digest_size=8)
        h.update(str(self.seed).encode())
        for feature in features:
            _digest_value(h, feature)
        seed = int.from_bytes(h.digest(), "little") & (2**63 - 1)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)
                return self.collator(features)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
