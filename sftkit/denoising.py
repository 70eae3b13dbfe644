"""DeFT-X denoising of a fine-tuning difference (Simon & Jyothi, Findings of EMNLP 2025).

LT-SFT picks its mask as the top-K entries of |δ| where δ = θ1 − θ0 after full fine-tuning. Much
of a fine-tuning difference is noise (high-order components with small singular values), and a
magnitude top-K over a noisy δ wastes budget on isolated spikes. DeFT-X denoises each weight matrix
first: it keeps the rank-r part δ_r of its SVD, where the signal concentrates, and adds back only
the largest entries of the residual, so a few genuinely large individual updates survive::

    denoised = δ_r + prune_ρ(δ − δ_r)

``r`` is fixed (``rank``) or the smallest rank whose squared singular values reach an ``energy``
fraction of ‖δ‖²_F; ``prune_ρ`` keeps the top ``ρ = residual_keep`` fraction of the residual's entries
by magnitude. The mask is then the magnitude top-K of the denoised δ (see :mod:`sftkit.extraction`).
Vectors (biases, LayerNorm) have no useful low-rank structure and pass through unchanged; tensors
with more than two dimensions are treated as ``(shape[0], -1)`` matrices.

Large matrices (XLM-R's 250,002 × 768 embedding) use a randomized truncated SVD
(:func:`torch.svd_lowrank`). With an energy threshold the top singular values alone do not tell how
much energy remains, so the total is taken exactly as ‖δ‖²_F and the sketch size q is doubled until
the captured energy reaches the threshold. A sketch is only worth it while q is small next to the
matrix's short side: past ``min(m, n) / 4`` (or ``max_rank``) the search falls back to the exact
spectrum from the eigendecomposition of the short-side Gram matrix δᵀδ (768 × 768 for the
embedding), which costs one pass over δ. Everything is computed in float32 (or float64) on the
tensor's device, with a fixed seed so the same δ always yields the same mask.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from sftkit.arithmetic import topk_indices
from sftkit.errors import ConfigError

__all__ = ["DenoiseConfig", "denoise_matrix", "denoise", "select_rank"]

_SVD_METHODS = ("auto", "exact", "lowrank")
_PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class DenoiseConfig:
    """Settings of DeFT-X denoising; exactly one of ``energy`` and ``rank`` must be given."""

    energy: float | None = None
    """Keep the smallest rank whose squared singular values reach this fraction of ‖δ‖²_F (0 < e ≤ 1)."""
    rank: int | None = None
    """Keep a fixed rank r ≥ 1 (clamped to min(m, n))."""
    residual_keep: float = 0.0
    """Fraction ρ of the residual δ − δ_r entries (by magnitude) added back; 0 gives exactly δ_r."""
    svd: str = "auto"
    """``exact`` (LAPACK SVD), ``lowrank`` (randomized), or ``auto``: lowrank above ``lowrank_threshold``."""
    lowrank_threshold: int = 1 << 24
    """Number of elements above which ``auto`` uses the randomized SVD (the embedding matrix, not the layers)."""
    oversample: int = 16
    """Extra sketch columns of the randomized SVD beyond the rank that is kept."""
    niter: int = 4
    """Power iterations of the randomized SVD; more sharpen a slowly decaying spectrum."""
    initial_rank: int = 64
    """First sketch rank tried with ``energy`` on the lowrank path, doubled until the energy is reached."""
    max_rank: int | None = None
    """Largest sketch of the lowrank path (default min(m, n) // 4); beyond it the exact Gram route is used."""
    precision: str = "float32"
    """``float32`` or ``float64`` for the decomposition."""
    seed: int = 0
    """Seed of the randomized SVD's sketch, so the same δ gives the same mask."""

    def __post_init__(self) -> None:
        if (self.energy is None) == (self.rank is None):
            raise ConfigError("DenoiseConfig needs exactly one of energy (e.g. 0.9) or rank (e.g. 64)")
        if self.energy is not None and (
            isinstance(self.energy, bool) or not isinstance(self.energy, (int, float)) or not 0.0 < self.energy <= 1.0
        ):
            raise ConfigError(f"denoise energy must be in (0, 1], got {self.energy!r}")
        if self.rank is not None and (not _is_int(self.rank) or self.rank < 1):
            raise ConfigError(f"denoise rank must be an integer >= 1, got {self.rank!r}")
        if isinstance(self.residual_keep, bool) or not isinstance(self.residual_keep, (int, float)) or not (
            0.0 <= self.residual_keep <= 1.0
        ):
            raise ConfigError(f"denoise residual_keep must be in [0, 1], got {self.residual_keep!r}")
        if self.svd not in _SVD_METHODS:
            raise ConfigError(f"denoise svd must be one of {', '.join(_SVD_METHODS)}, got {self.svd!r}")
        if self.precision not in _PRECISIONS:
            raise ConfigError(f"denoise precision must be float32 or float64, got {self.precision!r}")
        for name in ("lowrank_threshold", "initial_rank"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ConfigError(f"denoise {name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("oversample", "niter", "seed"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"denoise {name} must be an integer >= 0, got {getattr(self, name)!r}")
        if self.max_rank is not None and (not _is_int(self.max_rank) or self.max_rank < 1):
            raise ConfigError(f"denoise max_rank must be an integer >= 1, got {self.max_rank!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, for the metadata of an SFT whose mask they chose."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DenoiseConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def select_rank(singular_values: torch.Tensor, energy: float, total: float) -> int | None:
    """Smallest r with Σ_{i<r} sᵢ² ≥ energy·total, or ``None`` if the given values never reach it."""
    if total <= 0:
        return 0
    captured = singular_values.to(torch.float64).pow(2).cumsum(0)
    # A relative slack of 1e-9 absorbs summation-order rounding, so energy=1.0 is reachable.
    reached = torch.nonzero(captured >= energy * total * (1 - 1e-9))
    return int(reached[0]) + 1 if reached.numel() else None


def _fork_rng(device: torch.device) -> Any:
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def _compose(u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, r: int) -> torch.Tensor:
    return (u[:, :r] * s[:r]) @ v[:, :r].T


def _exact_low_rank(matrix: torch.Tensor, config: DenoiseConfig) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    if config.rank is not None:
        r = min(config.rank, s.numel())
    else:
        r = select_rank(s, float(config.energy), float(s.to(torch.float64).pow(2).sum()))  # type: ignore[arg-type]
        r = s.numel() if r is None else r
    return _compose(u, s, vh.T, r)


def _gram_low_rank(matrix: torch.Tensor, config: DenoiseConfig) -> torch.Tensor:
    """Exact truncated SVD through the eigendecomposition of the small Gram matrix (float64).

    For a tall 250,002 × 768 matrix, AᵀA is 768 × 768: one pass over A (in row chunks, so no float64
    copy of A is made) and a tiny ``eigh`` give the exact spectrum, far cheaper than a randomized
    sketch whose size approaches 768 (its QR factorizations cost m·q² each).
    """
    tall = matrix.shape[0] >= matrix.shape[1]
    a = matrix if tall else matrix.T
    gram = torch.zeros(a.shape[1], a.shape[1], dtype=torch.float64, device=a.device)
    for chunk in a.split(1 << 15):
        c = chunk.to(torch.float64)
        gram.addmm_(c.T, c)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    eigenvalues, eigenvectors = eigenvalues.flip(0).clamp_(min=0), eigenvectors.flip(1)
    if config.rank is not None:
        r = min(config.rank, eigenvalues.numel())
    else:
        r = select_rank(eigenvalues.sqrt(), float(config.energy), float(eigenvalues.sum()))  # type: ignore[arg-type]
        r = eigenvalues.numel() if r is None else r
    if 2 * r <= eigenvalues.numel():
        basis = eigenvectors[:, :r].to(matrix.dtype)
        low = (a @ basis) @ basis.T
    else:  # projecting out the (fewer) discarded directions is cheaper: δ_r = δ − δ·V⊥·V⊥ᵀ
        rest = eigenvectors[:, r:].to(matrix.dtype)
        low = a - (a @ rest) @ rest.T
    return low if tall else low.T


def _lowrank_low_rank(matrix: torch.Tensor, config: DenoiseConfig) -> torch.Tensor:
    m, n = matrix.shape
    # A sketch wider than a quarter of the small side costs more than the exact Gram route.
    cap = min(config.max_rank or max(1, min(m, n) // 4), min(m, n))
    with _fork_rng(matrix.device):
        torch.manual_seed(config.seed)
        if config.rank is not None:
            if config.rank + config.oversample > cap:
                return _gram_low_rank(matrix, config)
            u, s, v = torch.svd_lowrank(matrix, q=config.rank + config.oversample, niter=config.niter)
            return _compose(u, s, v, config.rank)
        if cap <= config.oversample:  # no sketch this small could be trusted (see below)
            return _gram_low_rank(matrix, config)
        total = float(sum(float(c.to(torch.float64).pow(2).sum()) for c in matrix.split(1 << 15)))
        q = min(config.initial_rank + config.oversample, cap)
        while True:
            u, s, v = torch.svd_lowrank(matrix, q=q, niter=config.niter)
            r = select_rank(s, float(config.energy), total)  # type: ignore[arg-type]
            # The last `oversample` components of a sketch are the least accurate: only trust a rank
            # that fits below them.
            trusted = max(1, q - config.oversample)
            if r is not None and r <= trusted:
                return _compose(u, s, v, r)
            # Every further component has s ≤ s[trusted-1], so at least this many are still needed; a
            # flat spectrum then goes straight to the exact route instead of through ever wider sketches.
            captured = float(s[:trusted].to(torch.float64).pow(2).sum())
            smallest = float(s[trusted - 1].to(torch.float64) ** 2)
            missing = float(config.energy) * total - captured  # type: ignore[arg-type]
            needed = trusted + (math.ceil(missing / smallest) if smallest > 0 else cap)
            if q >= cap or needed + config.oversample > cap:
                return _gram_low_rank(matrix, config)
            q = min(max(2 * q, needed + config.oversample), cap)


def denoise_matrix(delta: torch.Tensor, config: DenoiseConfig) -> torch.Tensor:
    """δ_r + prune_ρ(δ − δ_r) for a matrix; float32 on ``delta``'s device. Vectors pass through unchanged."""
    delta = delta.detach()
    if delta.dim() < 2:
        return delta.to(torch.float32, copy=True)
    shape = delta.shape
    matrix = delta.reshape(shape[0], -1).to(_PRECISIONS[config.precision])
    m, n = matrix.shape
    if m == 0 or n == 0 or not bool(matrix.any()):
        return torch.zeros(shape, dtype=torch.float32, device=delta.device)
    if not bool(torch.isfinite(matrix).all()):
        raise ConfigError("cannot denoise a delta with NaN or infinite entries; check the fine-tuned weights")
    if config.rank is not None and config.rank >= min(m, n):
        return delta.to(torch.float32, copy=True)
    method = config.svd
    if method == "auto":
        method = "lowrank" if matrix.numel() > config.lowrank_threshold else "exact"
    low = _exact_low_rank(matrix, config) if method == "exact" else _lowrank_low_rank(matrix, config)
    low = low.contiguous()  # the residual step below writes through a flat view

    keep = int(round(config.residual_keep * matrix.numel()))
    if keep:
        flat_low, flat = low.reshape(-1), matrix.reshape(-1)
        chosen = topk_indices({"residual": flat - flat_low}, keep)["residual"]
        # On the kept residual entries δ_r + (δ − δ_r) is δ itself: write it, exact and cheaper.
        flat_low[chosen] = flat[chosen]
    return low.reshape(shape).to(torch.float32)


def denoise(
    deltas: dict[str, torch.Tensor], config: DenoiseConfig, *, progress: bool = False
) -> dict[str, torch.Tensor]:
    """Denoise every matrix of ``deltas`` independently (vectors pass through); same keys, float32.

    ``progress`` shows a bar: an SVD per matrix of a 277M-parameter model takes minutes on a CPU.
    """
    from tqdm.auto import tqdm

    out: dict[str, torch.Tensor] = {}
    for name, tensor in tqdm(deltas.items(), desc="denoise", unit="tensor", disable=not progress):
        try:
            out[name] = denoise_matrix(tensor, config)
        except ConfigError as error:
            raise ConfigError(f"{name}: {error}") from None
    return out
