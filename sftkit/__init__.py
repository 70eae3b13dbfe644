"""sftkit: composable sparse fine-tunings (LT-SFT and DeFT-X).

The public API, loaded lazily so ``import sftkit`` stays cheap::

    import sftkit
    sft = sftkit.extract(base_model, finetuned_model, density=0.05)
    sftkit.save_file(sft, "delta.safetensors")
    with sftkit.composed(model, [sftkit.load_file("lang.safetensors"), sftkit.load_file("task.safetensors")]):
        logits = model(**batch).logits
"""

from __future__ import annotations

import importlib
from typing import Any

from sftkit._version import __version__
from sftkit.delta import SFT, SparseDelta
from sftkit.errors import (
    BaseMismatchError,
    ChecksumError,
    ConfigError,
    FormatError,
    MissingParameterError,
    SFTError,
)
from sftkit.metadata import BaseModelInfo, SFTMetadata

_LAZY = {
    "save_file": "sftkit.format",
    "load_file": "sftkit.format",
    "safe_open": "sftkit.format",
    "read_metadata": "sftkit.format",
    "add": "sftkit.arithmetic",
    "subtract": "sftkit.arithmetic",
    "scale": "sftkit.arithmetic",
    "negate": "sftkit.arithmetic",
    "prune": "sftkit.arithmetic",
    "restrict": "sftkit.arithmetic",
    "merge": "sftkit.arithmetic",
    "statistics": "sftkit.arithmetic",
    "overlap": "sftkit.arithmetic",
    "DenoiseConfig": "sftkit.denoise",
    "denoise": "sftkit.denoise",
    "extract": "sftkit.extract",
    "select_mask": "sftkit.extract",
    "apply": "sftkit.compose",
    "composed": "sftkit.compose",
    "Composition": "sftkit.compose",
    "describe_base": "sftkit.fingerprint",
    "fingerprint": "sftkit.fingerprint",
    "import_pytorch_diff": "sftkit.interop.composable_sft",
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
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sftkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
