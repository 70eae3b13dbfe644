"""Configuration of LT-SFT / DeFT-X training (both methods share the two-phase procedure).

The procedure (see :func:`sftkit.training.procedure.train_sft`): phase 1 fine-tunes every *eligible*
parameter densely (θ0 → θ1); the mask is the global top-K of |θ1 − θ0| (LT-SFT) or of the
DeFT-X-denoised difference; every parameter is reset to θ0 and phase 2 trains only the K masked
entries (plus the head, densely). The two methods differ only in how the mask is chosen.

Tied MLM decoder and embeddings (a deliberate default)
------------------------------------------------------
With a tied MLM head the output softmax gives *every* vocabulary row a gradient, so after phase 1
the word embedding holds almost all the large entries and a global top-K turns a "language SFT" into an
embedding patch (measured on multilingual-e5-small: 99.999% of K in the embedding at 2.76% density).
The default for a **language** SFT on a model whose MLM decoder is tied to the word embedding is
therefore composable-sft's recipe: ``untie_embeddings=None`` and ``freeze_decoder=None`` resolve to
``True`` — the decoder becomes a frozen copy of the θ0 embedding (still the pretrained output layer, so
the MLM loss is meaningful), and the *input* embedding is trained like any other weight: only rows of
tokens that occur in the text get gradients. The SFT's delta for ``embeddings.word_embeddings.weight``
is then an input-embedding delta; composed onto a tied model it moves the (tied) decoder too, exactly
as composable-sft's SFTs do. Task SFTs (no decoder) are unaffected. Pass ``False`` explicitly to keep the
tie, and ``embedding_share`` to give the word embedding its own fraction of K instead of competing in
the global top-K (a separate budget). The model is re-tied before :func:`train_sft` returns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sftkit.errors import ConfigError

if TYPE_CHECKING:
    from sftkit.denoising import DenoiseConfig

METHODS = ("lt-sft", "deft-x")
DEFAULT_DEFT_X_ENERGY = 0.9


@dataclass
class SFTTrainingConfig:
    """Everything that decides how an SFT is trained (stored in the SFT's ``metadata.hyperparameters``)."""

    method: str = "lt-sft"
    """``lt-sft`` (mask = top-K of |δ|) or ``deft-x`` (mask = top-K of the denoised δ)."""
    num_params: int | None = None
    """K, the number of sparse entries; exactly one of ``num_params`` / ``density``."""
    density: float | None = None
    """K = round(density × number of eligible entries)."""
    denoise_energy: float | None = None
    """DeFT-X: keep the leading singular directions holding this fraction of squared singular values
    (0.9 when ``method="deft-x"`` and no ``denoise_rank`` is given)."""
    denoise_rank: int | None = None
    """DeFT-X: keep a fixed rank instead of an energy threshold."""
    residual_keep: float = 0.0
    """DeFT-X: fraction ρ of the low-rank residual kept by magnitude."""
    full_steps: int | None = None
    """Phase 1 length in optimizer steps (or ``full_epochs``; one epoch when neither is given)."""
    sparse_steps: int | None = None
    """Phase 2 length in optimizer steps (or ``sparse_epochs``; one epoch when neither is given)."""
    full_epochs: float | None = None
    sparse_epochs: float | None = None
    learning_rate: float = 5e-5
    sparse_learning_rate: float | None = None
    """Phase 2 learning rate; ``learning_rate`` when ``None``."""
    batch_size: int = 8
    """Per-device batch size (the global batch is ``batch_size × processes × gradient_accumulation_steps``)."""
    max_seq_length: int = 128
    seed: int = 42
    weight_decay: float = 0.0
    """Decoupled weight decay of θ (in phase 2 only the masked entries and the head are decayed)."""
    l1_reg: float = 0.0
    """L1 pull toward θ0: adds ``l1_reg × mean |θ − θ0|`` over the trained sparse-eligible entries."""
    freeze_embeddings: bool = False
    """Exclude every ``embeddings.*`` weight (word, position, token type) from training and the mask."""
    freeze_decoder: bool | None = None
    """Do not train the MLM output embedding. ``None`` = auto (True for a language SFT with a tied decoder);
    with a kept tie this also freezes the word embedding, since it is the same tensor."""
    untie_embeddings: bool | None = None
    """Train the input embedding and the MLM decoder as separate tensors. ``None`` = auto (as ``freeze_decoder``)."""
    embedding_share: float | None = None
    """If set, the word embedding gets round(share × K) of the budget by its own top-K and the other
    eligible weights share the rest; otherwise all eligible weights compete in one global top-K."""
    include: tuple[str, ...] = ()
    """fnmatch patterns on canonical names; when non-empty only matching base weights are eligible."""
    exclude: tuple[str, ...] = ("*LayerNorm*", "*layer_norm*")
    """fnmatch patterns on canonical names that are never trained (LayerNorm by default)."""
    checkpoint_dir: str | None = None
    """Save Trainer checkpoints of both phases (and the procedure state) here."""
    resume: bool = False
    """Continue from the latest checkpoint in ``checkpoint_dir``."""
    save_steps: int = 200
    """Checkpoint interval in optimizer steps (only with ``checkpoint_dir``)."""
    save_total_limit: int | None = 2
    logging_steps: int = 10
    masked_only_mlm_head: bool = True
    """Apply the MLM head only at labelled positions (same loss, far less memory/time for big vocabularies)."""
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "linear"
    """Per phase: each phase decays from its own learning rate (transformers scheduler names)."""
    warmup_steps: int = 0
    head_warmup_steps: int = 0
    """Before phase 1, train the head alone (every base weight frozen) for this many steps. For a base
    without a pretrained head (e.g. multilingual-e5 has no MLM head) this restores the paper's starting
    point: without it, phase 1 and phase 2 spend their updates adapting the encoder to a random head.
    The warmed head is the head's θ0 for both phases; it is stored (densely) in the SFT as usual."""
    head_learning_rate: float | None = None
    """Learning rate of the head warm-up; ``learning_rate`` when ``None``."""
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    """Any transformers ``TrainingArguments.optim``; sparse entries outside the mask stay θ0 whatever it is."""
    dataloader_num_workers: int = 0
    group_by_length: bool = False
    """Batch training items of similar length (transformers' length-grouped sampler): less padding,
    faster steps when lengths vary; batches are still drawn at random."""
    use_cpu: bool = False
    ddp_backend: str | None = None
    """``gloo`` / ``nccl`` …; transformers' choice when ``None``."""

    def __post_init__(self) -> None:
        self.include = tuple(self.include)
        self.exclude = tuple(self.exclude)

    def validate(self) -> None:
        """Raise :class:`ConfigError` (one line, naming the field and the fix) for an invalid combination."""
        if self.method not in METHODS:
            raise ConfigError(f"method {self.method!r} is not one of {', '.join(METHODS)}; pick one")
        if (self.num_params is None) == (self.density is None):
            raise ConfigError("give exactly one of num_params (K) or density")
        if self.num_params is not None and (isinstance(self.num_params, bool) or int(self.num_params) < 1):
            raise ConfigError(f"num_params must be a positive integer, got {self.num_params!r}")
        if self.density is not None and not 0.0 < float(self.density) <= 1.0:
            raise ConfigError(f"density must be in (0, 1], got {self.density!r}")
        if self.method == "lt-sft" and (self.denoise_energy is not None or self.denoise_rank is not None):
            raise ConfigError("denoise_energy / denoise_rank only apply to method='deft-x'; set method='deft-x' or drop them")
        if self.denoise_energy is not None and self.denoise_rank is not None:
            raise ConfigError("give at most one of denoise_energy or denoise_rank")
        if self.denoise_energy is not None and not 0.0 < float(self.denoise_energy) <= 1.0:
            raise ConfigError(f"denoise_energy must be in (0, 1], got {self.denoise_energy!r}")
        if self.denoise_rank is not None and int(self.denoise_rank) < 1:
            raise ConfigError(f"denoise_rank must be a positive integer, got {self.denoise_rank!r}")
        if not 0.0 <= float(self.residual_keep) <= 1.0:
            raise ConfigError(f"residual_keep must be in [0, 1], got {self.residual_keep!r}")
        for phase in ("full", "sparse"):
            steps, epochs = getattr(self, f"{phase}_steps"), getattr(self, f"{phase}_epochs")
            if steps is not None and epochs is not None:
                raise ConfigError(f"give at most one of {phase}_steps or {phase}_epochs")
            if steps is not None and int(steps) < 1:
                raise ConfigError(f"{phase}_steps must be a positive integer, got {steps!r}")
            if epochs is not None and not float(epochs) > 0:
                raise ConfigError(f"{phase}_epochs must be positive, got {epochs!r}")
        if int(self.head_warmup_steps) < 0:
            raise ConfigError(f"head_warmup_steps must be >= 0, got {self.head_warmup_steps!r}")
        for name in ("learning_rate", "sparse_learning_rate", "head_learning_rate"):
            value = getattr(self, name)
            if value is not None and not float(value) > 0:
                raise ConfigError(f"{name} must be positive, got {value!r}")
        for name in ("batch_size", "max_seq_length", "logging_steps", "save_steps", "gradient_accumulation_steps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("weight_decay", "l1_reg"):
            if float(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.embedding_share is not None and not 0.0 <= float(self.embedding_share) <= 1.0:
            raise ConfigError(f"embedding_share must be in [0, 1], got {self.embedding_share!r}")
        if self.embedding_share is not None and self.freeze_embeddings:
            raise ConfigError("embedding_share needs trainable embeddings; drop it or freeze_embeddings")
        if self.resume and not self.checkpoint_dir:
            raise ConfigError("resume=True needs checkpoint_dir (where the interrupted run saved its checkpoints)")

    def denoise_config(self) -> DenoiseConfig | None:
        """The :class:`sftkit.denoising.DenoiseConfig` for DeFT-X, ``None`` for LT-SFT."""
        if self.method != "deft-x":
            return None
        from sftkit.denoising import DenoiseConfig

        energy = self.denoise_energy
        if energy is None and self.denoise_rank is None:
            energy = DEFAULT_DEFT_X_ENERGY
        return DenoiseConfig(energy=energy, rank=self.denoise_rank, residual_keep=self.residual_keep)

    def resolved_tying(self, kind: str, has_tied_decoder: bool) -> tuple[bool, bool]:
        """``(untie_embeddings, freeze_decoder)`` after resolving the ``None`` (auto) defaults."""
        auto = kind == "language" and has_tied_decoder
        untie = auto if self.untie_embeddings is None else bool(self.untie_embeddings)
        freeze = auto if self.freeze_decoder is None else bool(self.freeze_decoder)
        return untie, freeze

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["include"], data["exclude"] = list(self.include), list(self.exclude)
        return data
