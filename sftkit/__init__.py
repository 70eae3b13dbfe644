"""sftkit: composable sparse fine-tunings (LT-SFT and DeFT-X).

The public API, loaded lazily so ``import sftkit`` stays cheap::

    import sftkit
    sft = sftkit.extract(base_model, finetuned_model, density=0.05)
    sftkit.save_file(sft, "delta.safetensors")
    with sftkit.composed(model, [sftkit.load_file("lang.safetensors"), sftkit.load_file("task.safetensors")]):
        logits = model(**batch).logits
"""

from __future__ import annotations

from sftkit._lazy import lazy_attributes
from sftkit._version import __version__

# The pure modules only need torch (which delta.py imports anyway), so they load eagerly.
from sftkit.arithmetic import add, merge, negate, overlap, prune, restrict, scale, statistics, subtract
from sftkit.compose import Composition, apply, apply_to_state_dict, composed, prepare
from sftkit.delta import SFT, SparseDelta
from sftkit.denoising import DenoiseConfig, denoise
from sftkit.errors import (
    BaseMismatchError,
    ChecksumError,
    ConfigError,
    FormatError,
    MissingParameterError,
    SFTError,
)
from sftkit.extraction import extract, select_mask
from sftkit.fingerprints import describe_base, fingerprint
from sftkit.format import load_file, read_metadata, safe_open, save_file
from sftkit.metadata import BaseModelInfo, SFTMetadata

# Modules that pull in transformers/peft load on first use.
_LAZY = {
    "import_pytorch_diff": "sftkit.interop.composable_sft",
    "train_language_sft": "sftkit.training",
    "train_task_sft": "sftkit.training",
    "evaluate": "sftkit.training",
    "SFTTrainingConfig": "sftkit.training",
}

__all__ = [
    "__version__",
    "SFT",
    "SparseDelta",
    "SFTMetadata",
    "BaseModelInfo",
    "SFTError",
    "FormatError",
    "ChecksumError",
    "BaseMismatchError",
    "MissingParameterError",
    "ConfigError",
    "add",
    "subtract",
    "scale",
    "negate",
    "prune",
    "restrict",
    "merge",
    "statistics",
    "overlap",
    "apply",
    "composed",
    "prepare",
    "apply_to_state_dict",
    "Composition",
    "DenoiseConfig",
    "denoise",
    "extract",
    "select_mask",
    "describe_base",
    "fingerprint",
    "save_file",
    "load_file",
    "safe_open",
    "read_metadata",
    *_LAZY,
]


__getattr__, __dir__ = lazy_attributes("sftkit", globals(), _LAZY)
