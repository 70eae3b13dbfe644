"""Community SFTs: Hub repos holding composable-sft's ``pytorch_diff.bin``.

The ``cambridgeltl/xlmr-lang-sft-<lang>-small`` series (and other composable-sft uploads) predate
sftkit. Pulling one converts it once, through the core importer
(:func:`sftkit.interop.composable_sft.import_pytorch_diff`), fills in what the repo name and its
``config.json`` say (kind, language/task, base model), records where it came from, and stores the
converted file in the local registry so it composes like any other SFT.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.errors import FormatError
from sftkit.registry.card import render_card
from sftkit.registry.entry import COMMUNITY_FILENAME, RegistryEntry
from sftkit.registry.naming import RepoRef, codes_from_name
from sftkit.registry.sftfile import sha256_of

if TYPE_CHECKING:
    from sftkit.delta import SFT
    from sftkit.registry.hub import HubRegistry
    from sftkit.registry.local import LocalRegistry

IMPORT_METHOD = "composable-sft-import"


def is_community_repo(files: list[str]) -> bool:
    """True if a repo's file list looks like a composable-sft upload (detected by file name)."""
    return COMMUNITY_FILENAME in files


def convert_community_file(
    path: str | Path,
    *,
    repo_id: str,
    revision: str,
    base: Any = None,
    config: dict[str, Any] | None = None,
    endpoint: str | None = None,
) -> SFT:
    """Import a ``pytorch_diff.bin`` and complete its metadata from the repo name and config."""
    from sftkit.interop.composable_sft import import_pytorch_diff

    sft = import_pytorch_diff(str(path), base=base)
    meta = sft.metadata
    language, task = codes_from_name(repo_id)
    changes: dict[str, Any] = {}
    if meta.kind == "other" and (language or task):
        changes["kind"] = "language" if language else "task"
    if language and not meta.language:
        changes["language"] = language
    if task and not meta.task:
        changes["task"] = task
    if not meta.method:
        changes["method"] = IMPORT_METHOD
    base_info = meta.base
    if config and not base_info.name:
        base_info.name = config.get("_name_or_path") or None
    if config and not base_info.architecture:
        base_info.architecture = config.get("model_type")
    changes["base"] = base_info
    changes["provenance"] = {
        **(meta.provenance or {}),
        "repo": repo_id,
        "revision": revision,
        "file": COMMUNITY_FILENAME,
        "format": "composable-sft",
        "sha256": sha256_of(Path(path)),
        **({"endpoint": endpoint} if endpoint else {}),
    }
    sft.metadata = meta.copy(**changes)
    return sft


def pull_community(
    hub: HubRegistry,
    ref: RepoRef,
    sha: str,
    files: list[str],
    local: LocalRegistry,
    path: Path,
    *,
    base: Any = None,
) -> RegistryEntry:
    """Convert and register the downloaded ``pytorch_diff.bin`` of a composable-sft repo at commit ``sha``."""
    from sftkit.format import save_file
    from sftkit.registry.hub import _branch_of, evict

    config_path = hub.download_optional(ref.repo_id, "config.json", sha, files)
    config = _read_json(config_path)
    try:
        sft = convert_community_file(
            path, repo_id=ref.repo_id, revision=sha, base=base, config=config, endpoint=hub.endpoint
        )
    except FormatError as exc:
        evict(path)
        raise FormatError(
            f"{ref.repo_id}@{sha[:10]}: {COMMUNITY_FILENAME} could not be converted ({exc}); nothing was registered"
        ) from None
    with tempfile.TemporaryDirectory(prefix="sftkit-import-") as tmp:
        converted = Path(tmp) / "converted.safetensors"
        save_file(sft, str(converted))
        entry = RegistryEntry.from_metadata(ref.repo_id, sft.metadata, nnz=sft.nnz, source="hub")
        entry.density = sft.nnz / sft.numel if sft.numel else 0.0
        return local.add(
            converted,
            ref.repo_id,
            revision=sha,
            branch=_branch_of(ref, sha),
            source="hub",
            card_text=render_card(entry),
        )


def write_pytorch_diff(sft: SFT, path: str | Path, *, prefix: str = "roberta.") -> Path:
    """Write ``sft`` in composable-sft's ``pytorch_diff.bin`` layout (the community baseline).

    ``{'diffs': {name: {'size', 'index_steps', 'values'}}, 'abs': {name: tensor}}`` with flat indices
    in column-major order, delta-coded as a Python list (first entry absolute), exactly as
    composable-sft's ``encode_sparse_tensor`` saves them. Used to test the importer path and to
    measure the community format against sftkit's; base-model names get ``prefix`` back.
    """
    import numpy as np
    import torch

    diffs: dict[str, Any] = {}
    for name, delta in sft.deltas.items():
        shape = tuple(delta.shape)
        coords = np.unravel_index(delta.indices.numpy(), shape)
        strides = np.cumprod([1, *shape[:-1]], dtype=np.int64)
        column_major = sum(c.astype(np.int64) * s for c, s in zip(coords, strides, strict=True))
        order = np.argsort(column_major, kind="stable")
        flat = np.asarray(column_major)[order]
        # composable-sft stores the first index as the numpy scalar it computed, the rest as ints.
        steps = [flat[0], *np.diff(flat).tolist()] if flat.size else []
        diffs[_file_name(name, prefix)] = {
            "size": torch.Size(shape),
            "index_steps": steps,
            "values": delta.values[torch.from_numpy(order)].clone(),
        }
    dense = {_file_name(name, prefix): tensor for name, tensor in sft.dense.items()}
    path = Path(path)
    torch.save({"diffs": diffs, "abs": dense}, path)
    return path


def _file_name(name: str, prefix: str) -> str:
    """composable-sft keys parameters by the full model name; heads (``lm_head.``, ``classifier.``) keep theirs."""
    head = name.split(".", 1)[0]
    return name if head in {"lm_head", "classifier", "qa_outputs"} or not prefix else prefix + name


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
