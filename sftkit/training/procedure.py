"""The LT-SFT / DeFT-X training procedure (Ansell et al. 2022; Simon & Jyothi 2025).

0. (Optional, ``head_warmup_steps``) the head alone is trained over the frozen base, for bases
   that come without a pretrained head; the warmed head is the head's θ0 from then on.
1. Phase 1 fine-tunes every eligible base weight and the head densely: θ0 → θ1.
2. The mask is the global top-K of |θ1 − θ0| (LT-SFT) or of the DeFT-X-denoised difference,
   chosen by :func:`sftkit.extraction.select_mask` (the same function ``sftkit extract`` uses).
3. Every parameter is reset to θ0 (the head too) and phase 2 trains only the K masked entries, as
   flat K-vectors (see :mod:`sftkit.training.sparse`), plus the head densely.
4. The result is an :class:`~sftkit.delta.SFT`: sparse deltas on the mask, the head as dense
   tensors, and metadata saying exactly how it was made.

Underlying SFTs (the source-language SFT under a task SFT) are composed in during both phases; δ is
measured against θ0 + φ_L and the reset goes back to θ0 + φ_L, so φ_L is not part of the result.
Whatever happens (an exception, an interrupt), the model is handed back in its θ0 state.

Phase 1 does not depend on how the mask is chosen, so methods that differ only in the mask (LT-SFT
and the DeFT-X variants, or several K) can share it: pass the same ``phase1_cache`` folder and
the first run stores θ1 there, the others start from the mask choice (:class:`Phase1Cache`).

Distributed: every process returns the same SFT (the weights are kept identical by DDP and the mask
is a deterministic function of them); only the main process writes checkpoint files
(:func:`is_main_process` tells callers which process should save the result).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import safetensors.torch
import torch
from torch import nn
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint

from sftkit._io import atomic_path, atomic_write_text
from sftkit.delta import SFT, SparseDelta
from sftkit.errors import BaseMismatchError, ConfigError
from sftkit.fingerprints import describe_base
from sftkit.metadata import BaseModelInfo, SFTMetadata
from sftkit.training.config import SFTTrainingConfig
from sftkit.training.sparse import (
    Mask,
    eligible_parameters,
    head_parameters,
    module_name,
    tied_decoder,
    untie_decoder,
    word_embedding_name,
)
from sftkit.training.trainer import DeterministicCollator, SFTModule, SFTTrainer

logger = logging.getLogger("sftkit")

KINDS = ("language", "task")
STATE_FILE = "sft_state.json"
MASK_FILE = "mask.safetensors"
HEAD_FILE = "theta0_head.safetensors"
RESULT_FILE = "sft.safetensors"
PHASE_DIRS = {"head": "phase0", "full": "phase1", "sparse": "phase2"}
STATE_VERSION = 1
# Settings that do not change the result; a resumed run may differ in these.
_RESUME_FREE = ("checkpoint_dir", "resume", "logging_steps", "save_steps", "save_total_limit", "dataloader_num_workers")
# Settings that only decide the mask or phase 2: runs differing only in these share phase 1.
_MASK_ONLY = (
    "method", "num_params", "density", "denoise_energy", "denoise_rank", "residual_keep", "embedding_share",
    "sparse_steps", "sparse_epochs", "sparse_learning_rate",
)


def is_main_process() -> bool:
    """True on the process that should write results (rank 0, or the only process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def budget(config: SFTTrainingConfig, eligible_numel: int) -> int:
    """K from ``num_params`` or ``density``, checked against the number of eligible entries."""
    if eligible_numel == 0:
        raise ConfigError("no parameter is eligible for the sparse fine-tuning; widen include / exclude")
    k = int(config.num_params) if config.num_params is not None else round(float(config.density) * eligible_numel)
    if k < 1:
        raise ConfigError(f"density {config.density} of {eligible_numel} eligible entries gives K = 0; raise density")
    if k > eligible_numel:
        raise ConfigError(
            f"num_params K={k} exceeds the {eligible_numel} eligible parameter entries; lower num_params or widen include"
        )
    return k


def choose_mask(
    deltas: Mapping[str, torch.Tensor],
    num_params: int,
    config: SFTTrainingConfig,
    embedding: str | None,
) -> Mask:
    """The phase-2 mask: one global top-K, or a separate word-embedding budget (``embedding_share``)."""
    from sftkit.extraction import select_mask

    denoise = config.denoise_config()
    if config.embedding_share is None or embedding not in deltas:
        return select_mask(dict(deltas), num_params, denoise)
    k_embedding = round(float(config.embedding_share) * num_params)
    rest = {name: d for name, d in deltas.items() if name != embedding}
    rest_numel = sum(d.numel() for d in rest.values())
    k_embedding = max(k_embedding, num_params - rest_numel)
    if k_embedding > deltas[embedding].numel():
        raise ConfigError(f"embedding_share gives {k_embedding} entries but {embedding} has {deltas[embedding].numel()}")
    mask: Mask = {}
    if k_embedding:
        mask.update(select_mask({embedding: deltas[embedding]}, k_embedding, denoise))
    if num_params - k_embedding:
        mask.update(select_mask(rest, num_params - k_embedding, denoise))
    return mask


class _LogCallback(TrainerCallback):
    """Training logs through the ``sftkit`` logger, tagged with the phase (instead of bare prints)."""

    def __init__(self, phase: str) -> None:
        self.phase = phase

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and state.is_world_process_zero:
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())
            logger.info("%s phase, step %d: %s", self.phase, state.global_step, shown)


class _Checkpoints:
    """The procedure's own state beside the Trainer checkpoints: phase, mask, θ0 head, result."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def phase_dir(self, phase: str) -> str:
        return self.path(PHASE_DIRS[phase])

    def read_state(self) -> dict[str, Any] | None:
        if not os.path.isfile(self.path(STATE_FILE)):
            return None
        with open(self.path(STATE_FILE), encoding="utf-8") as fh:
            return json.load(fh)

    def write_state(self, state: dict[str, Any]) -> None:
        os.makedirs(self.root, exist_ok=True)
        atomic_write_text(self.path(STATE_FILE), json.dumps(state, indent=1, sort_keys=True))

    def save_tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        os.makedirs(self.root, exist_ok=True)
        with atomic_path(self.path(name)) as tmp:
            safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)

    def load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        if not os.path.isfile(self.path(name)):
            raise ConfigError(f"{self.path(name)} is missing; the checkpoint folder is incomplete, start without resume")
        return safetensors.torch.load_file(self.path(name), device="cpu")

    def last(self, phase: str) -> str | None:
        folder = self.phase_dir(phase)
        return get_last_checkpoint(folder) if os.path.isdir(folder) else None


class Phase1Cache:
    """A finished phase 1 kept for runs that differ only in the mask: θ1 of the eligible weights,
    the θ0 head phase 1 started from (the warmed head, with ``head_warmup_steps``), and a key.

    The key covers everything phase 1 depends on: the config without its mask/phase-2 fields, the
    kind, the base fingerprint, the training data (length + content digest of a sample of items)
    and the underlying SFTs. A cache with another key is refused with a one-line error, so a cache
    can never silently stand in for a different phase 1.
    """

    THETA1 = "theta1.safetensors"
    HEAD = "theta0_head.safetensors"
    SUMMARY = "phase1.json"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = os.fspath(path)

    def file(self, name: str) -> str:
        return os.path.join(self.root, name)

    def exists(self) -> bool:
        return all(os.path.isfile(self.file(n)) for n in (self.THETA1, self.HEAD, self.SUMMARY))

    def load(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]] | None:
        """``(θ1, θ0 head, phase-1 summary)``, or ``None`` when the folder holds no finished phase 1."""
        if not self.exists():
            return None
        with open(self.file(self.SUMMARY), encoding="utf-8") as fh:
            summary = json.load(fh)
        if summary.get("key") != key:
            raise ConfigError(
                f"{self.root}: this phase-1 cache was made by a run with other data, base or phase-1 settings; "
                "use another phase1_cache folder (or delete this one)"
            )
        theta1 = safetensors.torch.load_file(self.file(self.THETA1), device="cpu")
        head = safetensors.torch.load_file(self.file(self.HEAD), device="cpu")
        return theta1, head, summary["full"]

    def save(self, key: str, theta1: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor], full: dict[str, Any]) -> None:
        """Write the cache; the summary (with the key) goes last, so a half-written cache is never read."""
        os.makedirs(self.root, exist_ok=True)
        for name, tensors in ((self.THETA1, theta1), (self.HEAD, head)):
            with atomic_path(self.file(name)) as tmp:
                safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
        atomic_write_text(self.file(self.SUMMARY), json.dumps({"key": key, "full": full}, indent=1, sort_keys=True))


def _phase1_key(
    config: SFTTrainingConfig, kind: str, info: BaseModelInfo, train_dataset: Any, underlying: Sequence[SFT]
) -> str:
    from sftkit.training.trainer import _digest_value

    h = hashlib.sha256()
    settings = {k: v for k, v in _resume_key(config).items() if k not in _MASK_ONLY}
    h.update(json.dumps({"kind": kind, "base": info.fingerprint, "config": settings}, sort_keys=True).encode())
    n = len(train_dataset)
    h.update(str(n).encode())
    for i in sorted({0, 1, n // 2, n - 2, n - 1} & set(range(n))):
        _digest_value(h, train_dataset[i])
    for sft in underlying:
        for name in sorted(sft.deltas):
            delta = sft.deltas[name]
            h.update(name.encode())
            _digest_value(h, delta.indices)
            _digest_value(h, delta.values)
        for name in sorted(sft.dense):
            h.update(name.encode())
            _digest_value(h, sft.dense[name])
    return h.hexdigest()


def _warm_up_head(
    module: SFTModule, eligible: Mapping[str, Any], config: SFTTrainingConfig, *, output_dir: str, common: dict[str, Any]
) -> dict[str, Any]:
    """Train only the head over the frozen base (``head_warmup_steps``); no checkpoints: it is short."""
    for info in eligible.values():
        info.parameter.requires_grad_(False)
    try:
        trainer, summary = _run_phase(module, config, "head", output_dir=output_dir, resume_from=None,
                                      **{**common, "checkpoints": None, "eval_dataset": None})
        del trainer
        gc.collect()
    finally:
        for info in eligible.values():
            info.parameter.requires_grad_(True)
    return summary


def _resume_key(config: SFTTrainingConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in _RESUME_FREE}


def _base_info(model: nn.Module, given: BaseModelInfo | None) -> BaseModelInfo:
    measured = describe_base(model)
    if given is None:
        return measured
    merged = measured.to_dict()
    merged.update({k: v for k, v in given.to_dict().items() if k in ("name", "revision") or k not in merged})
    return BaseModelInfo.from_dict(merged)


def _training_args(
    config: SFTTrainingConfig, phase: str, output_dir: str, *, checkpoints: bool, progress: bool
) -> TrainingArguments:
    if phase == "head":
        steps, epochs, lr = config.head_warmup_steps, None, config.head_learning_rate or config.learning_rate
    else:
        steps = config.full_steps if phase == "full" else config.sparse_steps
        epochs = config.full_epochs if phase == "full" else config.sparse_epochs
        lr = config.learning_rate if phase == "full" else (config.sparse_learning_rate or config.learning_rate)
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=int(steps) if steps is not None else -1,
        num_train_epochs=float(epochs) if epochs is not None else 1.0,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=lr,
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        max_grad_norm=config.max_grad_norm,
        optim=config.optim,
        seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="steps" if checkpoints else "no",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        report_to="none",
        disable_tqdm=not progress,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=config.dataloader_num_workers,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        use_cpu=config.use_cpu,
        ddp_backend=config.ddp_backend,
        ddp_broadcast_buffers=False,
        average_tokens_across_devices=True,
        eval_strategy="no",
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def _run_phase(
    module: SFTModule,
    config: SFTTrainingConfig,
    phase: str,
    *,
    output_dir: str,
    checkpoints: _Checkpoints | None,
    resume_from: str | None,
    train_dataset: Any,
    eval_dataset: Any,
    collator: DeterministicCollator,
    compute_metrics: Any,
    callbacks: Sequence[TrainerCallback],
    progress: bool,
) -> tuple[SFTTrainer, dict[str, Any]]:
    args = _training_args(config, phase, output_dir, checkpoints=checkpoints is not None, progress=progress)
    module.l1_scale = 1.0 / (args.gradient_accumulation_steps * max(args.world_size, 1))
    trainer = SFTTrainer(
        model=module,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        compute_metrics=compute_metrics,
        callbacks=[_LogCallback(phase), *callbacks],
    )
    if not progress:
        trainer.remove_callback(PrinterCallback)
    result = trainer.train(resume_from_checkpoint=resume_from)
    summary: dict[str, Any] = {"steps": int(trainer.state.global_step), "train_loss": float(result.training_loss)}
    if eval_dataset is not None:
        summary["eval"] = {k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))}
    return trainer, summary


def train_sft(
    model: nn.Module,
    train_dataset: Any,
    data_collator: Any,
    config: SFTTrainingConfig,
    *,
    kind: str,
    eval_dataset: Any = None,
    underlying: Sequence[SFT] = (),
    metadata: SFTMetadata | None = None,
    base_info: BaseModelInfo | None = None,
    compute_metrics: Any = None,
    progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
    phase1_cache: str | os.PathLike[str] | None = None,
) -> SFT:
    """Train a language (``kind="language"``, MLM head) or task (``"task"``, classifier) SFT.

    ``model`` is a transformers model with its head, in its θ0 state; it is returned to θ0 (weights,
    tying, ``requires_grad`` and train/eval mode) before this returns or raises. ``data_collator``
    turns dataset items into batches with ``labels`` (MLM: -100 at unmasked positions); its
    randomness is re-seeded per batch from the batch content (resume-exact). ``callbacks`` are
    ``TrainerCallback`` objects added to both phases (``kwargs["model"].phase`` tells which).
    ``phase1_cache`` is a folder shared by runs that differ only in the mask (:class:`Phase1Cache`):
    the first stores its phase 1 there, later ones skip phase 1 (and the head warm-up).
    Every process of a distributed run returns the same SFT.
    """
    config.validate()
    if kind not in KINDS:
        raise ConfigError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    info = _base_info(model, base_info)
    has_tie = tied_decoder(model) is not None
    untie, freeze_decoder = config.resolved_tying(kind, has_tie)
    if has_tie and untie and not freeze_decoder:
        raise ConfigError(
            "untie_embeddings with a trained decoder would need the full decoder in the SFT; set freeze_decoder=True"
        )
    checkpoints = _Checkpoints(config.checkpoint_dir) if config.checkpoint_dir else None
    state, resuming = _start_state(checkpoints, config, info, kind)
    if state.get("phase") == "done" and checkpoints is not None:
        from sftkit.format import load_file

        return load_file(checkpoints.path(RESULT_FILE))

    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    device = next(model.parameters()).device  # the Trainer may move the model to an accelerator
    theta0: dict[str, torch.Tensor] = {}
    trained: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        if underlying:
            from sftkit.compose import apply

            composition = apply(model, list(underlying))
            stack.callback(composition.revert)
        stack.callback(model.train, was_training)
        stack.callback(model.to, device)
        stack.callback(lambda: [p.requires_grad_(flag) for p, flag in grad_flags])
        if has_tie and untie:
            stack.callback(untie_decoder(model, freeze=freeze_decoder))
        original: dict[str, torch.Tensor] = {}
        stack.callback(_restore, trained, original)  # runs first: θ0 (+ φ_L) back into every trained tensor

        eligible = eligible_parameters(
            model,
            include=config.include,
            exclude=config.exclude,
            freeze_embeddings=config.freeze_embeddings,
            freeze_word_embedding=has_tie and not untie and freeze_decoder,
        )
        head = head_parameters(model)
        eligible_numel = sum(p.parameter.numel() for p in eligible.values())
        k = budget(config, eligible_numel)
        if checkpoints is not None:
            _sync_head(checkpoints, head, resuming=resuming)
        trained.update({n: p.parameter for n, p in {**eligible, **head}.items()})
        theta0.update({n: p.detach().to("cpu", copy=True) for n, p in trained.items()})
        original.update(theta0)  # the head as handed in, even when a warm-up or cache replaces θ0's head
        for param in model.parameters():
            param.requires_grad_(False)
        for param in trained.values():
            param.requires_grad_(True)

        module = SFTModule(
            model,
            kind=kind,
            masked_only_mlm_head=config.masked_only_mlm_head,
            eligible_names={n: module_name(model, n) for n in eligible},
            l1_reg=config.l1_reg,
            theta0={n: theta0[n] for n in eligible},
        )
        collator = DeterministicCollator(data_collator, config.seed)
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="sftkit-train-")) if checkpoints is None else None
        common = dict(
            checkpoints=checkpoints,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            collator=collator,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            progress=progress,
        )

        if state["phase"] == "full":
            cache = Phase1Cache(phase1_cache) if phase1_cache is not None else None
            key = _phase1_key(config, kind, info, train_dataset, underlying) if cache is not None else ""
            cached = cache.load(key) if cache is not None else None
            if cached is not None:
                theta1, cached_head, state["full"] = cached
                _load_head(head, cached_head, cache.file(cache.HEAD))
                theta0.update({n: t.clone() for n, t in cached_head.items()})
                deltas = {n: theta1[n] - theta0[n] for n in eligible}
                del theta1
                logger.info("phase 1 taken from %s", cache.root)
            else:
                if config.head_warmup_steps and "head_warmup" not in state:
                    output_dir = checkpoints.phase_dir("head") if checkpoints else os.path.join(scratch, "phase0")
                    state["head_warmup"] = _warm_up_head(module, eligible, config, output_dir=output_dir, common=common)
                    theta0.update({n: p.parameter.detach().to("cpu", copy=True) for n, p in head.items()})
                    if checkpoints is not None and is_main_process():
                        checkpoints.save_tensors(HEAD_FILE, {n: p.parameter for n, p in head.items()})
                        checkpoints.write_state(state)
                output_dir = checkpoints.phase_dir("full") if checkpoints else os.path.join(scratch, "phase1")
                resume_from = checkpoints.last("full") if checkpoints and resuming else None
                trainer, state["full"] = _run_phase(
                    module, config, "full", output_dir=output_dir, resume_from=resume_from, **common
                )
                deltas = {n: eligible[n].parameter.detach().to("cpu") - theta0[n] for n in eligible}
                if cache is not None and trainer.is_world_process_zero():
                    theta1 = {n: eligible[n].parameter.detach().to("cpu") for n in eligible}
                    cache.save(key, theta1, {n: theta0[n] for n in head}, state["full"])
                    del theta1
                trainer.accelerator.wait_for_everyone()
                del trainer
                gc.collect()  # drop phase 1's DDP wrapper (and its gradient hooks on the head) before phase 2
            mask = choose_mask(deltas, k, config, word_embedding_name(model))
            del deltas
            if checkpoints is not None:
                if is_main_process():
                    checkpoints.save_tensors(MASK_FILE, mask)
                    checkpoints.save_tensors(HEAD_FILE, {n: theta0[n] for n in head})
                    state["phase"] = "sparse"
                    checkpoints.write_state(state)
                    shutil.rmtree(checkpoints.phase_dir("full"), ignore_errors=True)
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    torch.distributed.barrier()
        else:
            mask = checkpoints.load_tensors(MASK_FILE)  # type: ignore[union-attr]

        _restore(trained, theta0)
        module.sparsify(mask)
        output_dir = checkpoints.phase_dir("sparse") if checkpoints else os.path.join(scratch, "phase2")
        resume_from = checkpoints.last("sparse") if checkpoints and resuming else None
        trainer, state["sparse"] = _run_phase(
            module, config, "sparse", output_dir=output_dir, resume_from=resume_from, **common
        )
        assert module.sparse is not None
        sparse_deltas = {
            name: SparseDelta(tuple(eligible[name].parameter.shape), idx, values)
            for name, (idx, values) in module.sparse.deltas(module.bases()).items()
        }
        dense = {n: p.parameter.detach().to("cpu", copy=True) for n, p in head.items()}
        hyper = _hyperparameters(config, kind, k, eligible_numel, untie, freeze_decoder, state, underlying, trainer)
        sft = SFT(deltas=sparse_deltas, dense=dense, metadata=_metadata(metadata, kind, config, info, hyper, model))
        if checkpoints is not None:
            if trainer.is_world_process_zero():
                from sftkit.format import save_file

                save_file(sft, checkpoints.path(RESULT_FILE))
                state["phase"] = "done"
                checkpoints.write_state(state)
            trainer.accelerator.wait_for_everyone()
        return sft
    raise AssertionError("unreachable")  # pragma: no cover


def _restore(trained: Mapping[str, torch.Tensor], theta0: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in trained.items():
            param.copy_(theta0[name])


def _start_state(
    checkpoints: _Checkpoints | None, config: SFTTrainingConfig, info: BaseModelInfo, kind: str
) -> tuple[dict[str, Any], bool]:
    """The procedure state to start from, and whether it continues an interrupted run."""
    fresh = {
        "version": STATE_VERSION,
        "phase": "full",
        "kind": kind,
        "base_fingerprint": info.fingerprint,
        "config": _resume_key(config),
    }
    if checkpoints is None:
        return fresh, False
    existing = checkpoints.read_state() if config.resume or is_main_process() else None
    if existing is None:
        if is_main_process():
            checkpoints.write_state(fresh)
        return fresh, False
    if not config.resume:
        raise ConfigError(
            f"{checkpoints.root} holds an earlier training run; pass resume=True to continue it or use an empty checkpoint_dir"
        )
    if existing.get("base_fingerprint") != info.fingerprint:
        raise BaseMismatchError(
            f"{checkpoints.path(STATE_FILE)}: the run was started on base {existing.get('base_fingerprint')}, "
            f"this model is {info.fingerprint}; resume with the same base model"
        )
    if existing.get("kind") != kind:
        raise ConfigError(f"{checkpoints.path(STATE_FILE)}: the run trains a {existing.get('kind')} SFT, not {kind}")
    saved = existing.get("config", {})
    for key, value in _resume_key(config).items():
        if saved.get(key) != value:
            raise ConfigError(f"{checkpoints.path(STATE_FILE)}: {key} was {saved.get(key)!r}, now {value!r}; resume with the same config")
    return existing, True


def _load_head(head: Mapping[str, Any], saved: Mapping[str, torch.Tensor], source: str) -> None:
    if set(saved) != set(head):
        raise ConfigError(f"{source}: head parameters differ from this model's; use the same model class")
    with torch.no_grad():
        for name, info in head.items():
            info.parameter.copy_(saved[name])


def _sync_head(checkpoints: _Checkpoints, head: Mapping[str, Any], *, resuming: bool) -> None:
    """Keep the θ0 head of the interrupted run: a rebuilt model may initialise a fresh head differently."""
    if resuming:
        _load_head(head, checkpoints.load_tensors(HEAD_FILE), checkpoints.path(HEAD_FILE))
    elif is_main_process():
        checkpoints.save_tensors(HEAD_FILE, {n: p.parameter for n, p in head.items()})


def _hyperparameters(
    config: SFTTrainingConfig,
    kind: str,
    k: int,
    eligible_numel: int,
    untie: bool,
    freeze_decoder: bool,
    state: Mapping[str, Any],
    underlying: Sequence[SFT],
    trainer: SFTTrainer,
) -> dict[str, Any]:
    hyper = {k_: v for k_, v in config.to_dict().items() if k_ not in ("checkpoint_dir", "resume")}
    denoise = config.denoise_config()
    hyper.update(
        kind=kind,
        num_params=k,
        requested_num_params=config.num_params,
        eligible_params=eligible_numel,
        actual_density=k / eligible_numel,
        denoise=denoise.to_dict() if denoise is not None else None,
        untie_embeddings=untie,
        freeze_decoder=freeze_decoder,
        full_steps_run=state.get("full", {}).get("steps"),
        sparse_steps_run=state.get("sparse", {}).get("steps"),
        full_train_loss=state.get("full", {}).get("train_loss"),
        sparse_train_loss=state.get("sparse", {}).get("train_loss"),
        head_warmup_train_loss=state.get("head_warmup", {}).get("train_loss"),
        world_size=int(trainer.args.world_size),
        global_batch_size=int(config.batch_size * trainer.args.world_size * config.gradient_accumulation_steps),
        underlying=[
            {
                "kind": s.metadata.kind,
                "language": s.metadata.language,
                "task": s.metadata.task,
                "method": s.metadata.method,
                "nnz": s.nnz,
            }
            for s in underlying
        ],
    )
    evaluation = {phase: state[phase]["eval"] for phase in ("full", "sparse") if "eval" in state.get(phase, {})}
    if evaluation:
        hyper["evaluation"] = evaluation
    return hyper


def _metadata(
    given: SFTMetadata | None,
    kind: str,
    config: SFTTrainingConfig,
    info: BaseModelInfo,
    hyper: dict[str, Any],
    model: nn.Module,
) -> SFTMetadata:
    meta = given.copy() if given is not None else SFTMetadata()
    meta.kind = kind
    meta.method = config.method
    meta.base = info
    meta.hyperparameters = {**meta.hyperparameters, **hyper}
    if kind == "task" and meta.label_names is None:
        id2label = getattr(getattr(model, "config", None), "id2label", None)
        if id2label:
            meta.label_names = [str(id2label[i]) for i in sorted(id2label)]
    return meta
