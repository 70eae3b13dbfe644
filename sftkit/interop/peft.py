"""Interop with PEFT's flat-index sparse adapter (``peft_type: SUPERTUNING``).

Among the PEFT methods of the 0.21 release, Super-Tuning is the one whose checkpoint is an sftkit delta
in all but name: per adapted ``nn.Linear`` it stores ``<module>.supertuning_indices`` (int32, flat
row-major positions into the ``[out, in]`` weight) and ``<module>.supertuning_values`` (float32), and its
forward is ``weight.reshape(-1).scatter_add(0, indices, values)``, the same arithmetic as the composer.
SHiRA is sparse too but stores ``[2, nnz]`` (row, column) pairs; it is read here, never written.

Two constraints of the PEFT layout shape the export:

* Super-Tuning allocates ``int(numel * (1 - sparsity))`` entries per layer from ONE config-wide
  ``sparsity``, and loading requires the stored tensors to have exactly that length. An SFT's density
  varies per tensor, so the export picks the sparsity of the densest adapted tensor and pads the others
  with repeats of their last index carrying ``0.0``; a scatter-add of zero changes nothing, and the
  import sums duplicates, so the padding is invisible both ways.
* Super-Tuning adapts only ``nn.Linear`` weights. Everything else an SFT can touch (embeddings, biases,
  LayerNorm, tied weights, dense heads) goes to ``modules_to_save`` as full tensors ``base + delta``, which
  PEFT swaps in verbatim: exact, but dense, and it needs the base weights. A Linear with a bias delta is
  materialised whole, since a module cannot be both adapted and saved. ``materialize=False`` keeps the
  adapter sparse instead and drops what it cannot carry, with a one-line notice (``strict=True`` raises).

The adapter directory is read without importing PEFT; only the equality test needs it installed.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors import safe_open as safetensors_open
from safetensors.torch import save_file as save_safetensors
from torch import nn

from sftkit._io import atomic_directory, atomic_write_text
from sftkit.delta import SFT, SparseDelta
from sftkit.errors import ConfigError, FormatError, MissingParameterError
from sftkit.metadata import SFTMetadata
from sftkit.naming import alias_map, canonical_parameters, canonicalize_name

logger = logging.getLogger(__name__)

PEFT_TYPE = "SUPERTUNING"
READABLE_PEFT_TYPES = ("SUPERTUNING", "SHIRA")
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
KEY_PREFIX = "base_model.model."
HEADER_KEY = "sftkit"
"""safetensors header entry with what PEFT does not store: shapes, canonical names, SFT metadata."""

ModelSource = nn.Module | str | os.PathLike[str]


@dataclass
class ExportPlan:
    """How each parameter an SFT touches is carried by the PEFT adapter (pure; no I/O).

    ``targets`` maps a full Linear module path to the canonical name of its weight delta;
    ``materialized`` lists full module paths whose parameters are stored whole in ``modules_to_save``;
    ``dropped`` lists canonical names the adapter cannot carry; ``missing`` names the base does not have.
    """

    targets: dict[str, str] = field(default_factory=dict)
    materialized: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- export


def export_peft(
    sft: SFT,
    base_model_name_or_path: ModelSource,
    outdir: str | os.PathLike[str],
    *,
    adapter_name: str = "default",
    materialize: bool = True,
    strict: bool = False,
) -> Path:
    """Write ``sft`` as a PEFT Super-Tuning adapter directory that ``PeftModel.from_pretrained`` loads.

    ``base_model_name_or_path`` is the base the adapter is for: a loaded model, or a local directory / Hub
    id (its config says the architecture; weights are read only when something must be materialised).
    ``adapter_name`` is recorded in the header; PEFT itself names the adapter at load time. With
    ``materialize`` (default) the PEFT model gives the same logits as composing the SFT; without it,
    parameters Super-Tuning cannot adapt are dropped with a notice, or refused when ``strict``.
    """
    if not adapter_name or "." in adapter_name:
        raise ConfigError(f"adapter name {adapter_name!r} must be non-empty and contain no '.'; pick another")
    sft.validate()
    name_or_path, model = _resolve_model(base_model_name_or_path, weights=False)
    plan = plan_export(sft, model, materialize=materialize)
    if plan.missing:
        message = f"{len(plan.missing)} SFT parameter(s) are not in the base model ({_preview(plan.missing)})"
        if strict:
            raise MissingParameterError(message + "; export for the right base or drop strict")
        logger.warning(message + "; they are left out of the adapter")
    if plan.dropped:
        message = (
            f"PEFT Super-Tuning cannot carry {len(plan.dropped)} parameter(s) of this SFT "
            f"({_preview(plan.dropped)}); "
        )
        if strict:
            raise ConfigError(message + "export with materialize=True or restrict the SFT to Linear weights")
        logger.warning(message + "they are left out of the adapter")
    if plan.materialized and _is_meta(model):
        name_or_path, model = _resolve_model(base_model_name_or_path, weights=True)

    params = canonical_parameters(model)
    names = alias_map(model)
    sft = _canonical_view(sft, names)
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    canonical_of: dict[str, str] = {}
    supports = {module: sft.deltas[canonical] for module, canonical in plan.targets.items()}
    placeholder = None
    if not supports:  # PEFT refuses an adapter that adapts no module; add one that adds nothing
        placeholder = _placeholder_target(model, plan.materialized)
        shape = tuple(model.get_submodule(placeholder).weight.shape)
        supports[placeholder] = SparseDelta(shape, torch.zeros(1, dtype=torch.int64), torch.zeros(1))
    sparsity = shared_sparsity({module: (delta.nnz, delta.numel) for module, delta in supports.items()})
    for module, delta in supports.items():
        size = int(delta.numel * (1 - sparsity))  # PEFT's own count; must match exactly to load
        indices, values = pad_support(delta.indices, delta.values.to(torch.float32), size)
        tensors[f"{KEY_PREFIX}{module}.supertuning_indices"] = indices.to(torch.int32)
        tensors[f"{KEY_PREFIX}{module}.supertuning_values"] = values
        shapes[f"{module}.weight"] = list(delta.shape)
        canonical_of[f"{module}.weight"] = names[f"{module}.weight"]
    for module in plan.materialized:
        for local, param in model.get_submodule(module).named_parameters(remove_duplicate=False):
            full = f"{module}.{local}"
            canonical = names[full]
            tensors[KEY_PREFIX + full] = _materialize(param.detach(), sft, canonical)
            canonical_of[full] = canonical
            shapes[full] = list(params[canonical].parameter.shape)

    config = _adapter_config(name_or_path, sparsity, list(supports), plan.materialized)
    header = {
        "adapter_name": adapter_name,
        "placeholder": placeholder,
        "shapes": shapes,
        "canonical_names": canonical_of,
        "value_dtypes": {c: str(d.values.dtype).removeprefix("torch.") for c, d in sft.deltas.items()},
        "dropped": [*plan.missing, *plan.dropped],
        "metadata": sft.metadata.to_dict(),
    }
    return _write_adapter_dir(Path(outdir), config, tensors, {"format": "pt", HEADER_KEY: json.dumps(header)})


def plan_export(sft: SFT, model: nn.Module, *, materialize: bool = True) -> ExportPlan:
    """Decide, per parameter, whether the adapter carries it sparse, whole, or not at all.

    A sparse delta on the weight of an ``nn.Linear`` that owns no other changed parameter and shares its
    weight with nothing becomes a Super-Tuning target. Every other touched parameter makes its owning
    module(s) materialised; tied parameters make all their owners materialised, so the copies PEFT makes
    stay equal. A parent that merely re-registers a child's parameter (``lm_head.bias``) is not an owner.
    """
    params = canonical_parameters(model)
    names = alias_map(model)
    owners = _owners(model)
    plan = ExportPlan()
    residual: dict[str, list[str]] = {}  # canonical -> owning modules
    missing: list[str] = []  # not in this base at all: never carried, whatever ``materialize`` says
    touched = [(n, True) for n in sft.deltas] + [(n, False) for n in sft.dense]
    for name, is_sparse in touched:
        canonical = names.get(name) or names.get(canonicalize_name(name))
        if canonical is None:
            missing.append(name)
            continue
        expected = tuple(params[canonical].parameter.shape)
        got = sft.deltas[name].shape if is_sparse else tuple(sft.dense[name].shape)
        if got != expected:
            raise FormatError(
                f"{name}: shape {list(got)} in the SFT but {list(expected)} in the base; wrong base model"
            )
        places = owners[id(params[canonical].parameter)]
        module, attr = places[0]
        linear_weight = (
            is_sparse
            and len(places) == 1
            and attr == "weight"
            and isinstance(model.get_submodule(module), nn.Linear)
        )
        if linear_weight:
            plan.targets[module] = canonical
        else:
            residual[canonical] = [m for m, _ in places]
    plan.missing = sorted(missing)
    if not materialize:
        plan.dropped = sorted(residual)
        return plan
    modules = {m for mods in residual.values() for m in mods}
    plan.materialized = sorted(m for m in modules if not any(m.startswith(o + ".") for o in modules))
    for module in list(plan.targets):
        if any(module == m or module.startswith(m + ".") for m in plan.materialized):
            del plan.targets[module]
    return plan


def shared_sparsity(layers: dict[str, tuple[int, int]]) -> float:
    """The largest config ``sparsity`` at which PEFT allocates at least ``nnz`` entries in every layer.

    ``layers`` maps a module to ``(nnz, numel)``; PEFT allocates ``int(numel * (1 - sparsity))``. Starting
    from the densest layer's complement, step down one float ulp at a time until rounding agrees.
    """
    if not layers:
        return 0.0
    sparsity = max(0.0, 1.0 - max(nnz / numel for nnz, numel in layers.values()))
    while any(int(numel * (1 - sparsity)) < nnz for nnz, numel in layers.values()):
        sparsity = max(0.0, math.nextafter(sparsity, -math.inf))
    return sparsity


def pad_support(indices: torch.Tensor, values: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lengthen a sparse support to ``size`` entries by repeating its last index with value ``0.0``."""
    missing = size - indices.numel()
    if missing <= 0:
        return indices, values
    fill = indices[-1:] if indices.numel() else torch.zeros(1, dtype=indices.dtype)
    return (
        torch.cat([indices, fill.expand(missing)]),
        torch.cat([values, torch.zeros(missing, dtype=values.dtype)]),
    )


def _canonical_view(sft: SFT, names: dict[str, str]) -> SFT:
    """The same SFT keyed by the model's canonical names (files may list ``roberta.…`` or tied aliases)."""

    def resolve(name: str) -> str | None:
        return names.get(name) or names.get(canonicalize_name(name))

    seen: dict[str, str] = {}
    deltas: dict[str, SparseDelta] = {}
    dense: dict[str, torch.Tensor] = {}
    for name, entry in [*sft.deltas.items(), *sft.dense.items()]:
        canonical = resolve(name)
        if canonical is None:
            continue
        if canonical in seen:
            raise FormatError(
                f"SFT lists both {seen[canonical]!r} and {name!r}, one (tied) parameter; keep one"
            )
        seen[canonical] = name
        if isinstance(entry, SparseDelta):
            deltas[canonical] = entry
        else:
            dense[canonical] = entry
    return SFT(deltas, dense, sft.metadata)


def _placeholder_target(model: nn.Module, materialized: list[str]) -> str:
    for path, module in model.named_modules():
        inside = any(path == m or path.startswith(m + ".") for m in materialized)
        if isinstance(module, nn.Linear) and not inside:
            return path
    raise ConfigError("the base model has no nn.Linear outside the saved modules; PEFT needs one to adapt")


def _materialize(base: torch.Tensor, sft: SFT, canonical: str) -> torch.Tensor:
    """The full tensor PEFT will swap in: a dense replacement, or base + delta summed in fp32, rounded once."""
    if canonical in sft.dense:
        return sft.dense[canonical].to(base.dtype).contiguous().clone()
    if canonical in sft.deltas:
        return (base.float() + sft.deltas[canonical].to_dense(torch.float32)).to(base.dtype).contiguous()
    return base.contiguous().clone()


def _owners(model: nn.Module) -> dict[int, list[tuple[str, str]]]:
    """Parameter identity -> the (module path, attribute) pairs that use it, aliasing parents removed."""
    found: dict[int, list[tuple[str, str]]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        for attr, param in module._parameters.items():
            if param is not None:
                found.setdefault(id(param), []).append((path, attr))
    for key, places in found.items():
        paths = [p for p, _ in places]
        found[key] = [(p, a) for p, a in places if not any(o.startswith(p + ".") for o in paths if o != p)]
    return found


def _adapter_config(
    name_or_path: str | None, sparsity: float, targets: list[str], materialized: list[str]
) -> dict[str, Any]:
    try:
        from peft import __version__ as peft_version
    except ImportError:
        peft_version = None
    return {
        "peft_type": PEFT_TYPE,
        "task_type": None,
        "base_model_name_or_path": name_or_path,
        "revision": None,
        "inference_mode": True,
        "target_modules": targets,
        "modules_to_save": materialized or None,
        "sparsity": sparsity,
        "select_top": True,
        "r": None,
        "lora_alpha": None,
        "lora_dropout": 0.0,
        "init_weights": True,
        "save_precomputed_indices": True,
        "peft_version": peft_version,
    }


def _write_adapter_dir(
    outdir: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], header: dict[str, str]
) -> Path:
    """Build the directory under a temporary name beside ``outdir``, then swap it in with renames."""
    if outdir.exists() and not outdir.is_dir():
        raise ConfigError(f"{outdir}: exists and is not a directory; choose another output path")
    if outdir.is_dir() and any(outdir.iterdir()) and not (outdir / CONFIG_NAME).exists():
        raise ConfigError(
            f"{outdir}: non-empty directory that is not a PEFT adapter; refusing to overwrite it"
        )
    with atomic_directory(outdir) as staging:
        atomic_write_text(staging / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_safetensors(tensors, str(staging / WEIGHTS_NAME), metadata=header)
    return outdir


# ----------------------------------------------------------------------------------------------- import


def import_peft(
    adapter_dir: str | os.PathLike[str],
    *,
    base: ModelSource | None = None,
    allow_pickle_weights: bool = False,
) -> SFT:
    """Read a PEFT Super-Tuning (or SHiRA) adapter directory back into an SFT.

    Adapted weights become sparse deltas; ``modules_to_save`` tensors become dense replacements, which is
    what PEFT does with them. Tensor shapes and canonical names come from the sftkit header when the
    adapter was written by :func:`export_peft`; for other adapters pass ``base`` (a model, a local
    directory or Hub id) so the flat indices get their ``[out, in]`` shape. ``adapter_model.bin`` is a
    pickle and is read only with ``allow_pickle_weights=True``, through ``torch.load(weights_only=True)``.
    """
    directory = Path(adapter_dir)
    config = _read_config(directory)
    peft_type = str(config.get("peft_type"))
    if peft_type not in READABLE_PEFT_TYPES:
        raise FormatError(
            f"{directory / CONFIG_NAME}: peft_type {peft_type!r} is not a sparse method; sftkit reads "
            f"{' and '.join(READABLE_PEFT_TYPES)}"
        )
    if peft_type == "SUPERTUNING" and config.get("r"):
        raise FormatError(
            f"{directory / CONFIG_NAME}: Supra mode (r set) adds a dense low-rank term; not an SFT"
        )
    tensors, header = _read_weights(directory, allow_pickle_weights)
    # save_precomputed_indices=False: PEFT re-selects the support by base-weight magnitude at load; so do we.
    regenerate = peft_type == "SUPERTUNING" and config.get("save_precomputed_indices") is False
    if regenerate and base is None:
        raise FormatError(
            f"{directory / CONFIG_NAME}: indices were not saved (save_precomputed_indices=false); "
            "pass base= (the model with weights) to re-select them"
        )
    model = _resolve_model(base, weights=regenerate)[1] if base is not None else None
    names = alias_map(model) if model is not None else {}
    shapes: dict[str, list[int]] = dict(header.get("shapes", {}))
    canonical_of: dict[str, str] = dict(header.get("canonical_names", {}))
    if model is not None:
        for name, param in _full_parameters(model).items():
            if shapes.setdefault(name, list(param.shape)) != list(param.shape):
                raise FormatError(
                    f"{name}: shape {shapes[name]} in the adapter but {list(param.shape)} in the base; wrong base model"
                )

    def canonical(full: str) -> str:
        return canonical_of.get(full) or names.get(full) or canonicalize_name(full)

    stems = {
        "SUPERTUNING": ("supertuning_indices", "supertuning_values"),
        "SHIRA": ("shira_indices", "shira_weight"),
    }
    index_stem, value_stem = stems[peft_type]
    deltas: dict[str, SparseDelta] = {}
    dense: dict[str, torch.Tensor] = {}
    for key in sorted(tensors):
        if not key.startswith(KEY_PREFIX):
            raise FormatError(
                f"{directory / WEIGHTS_NAME}: key {key!r} lacks the {KEY_PREFIX!r} prefix; not a PEFT adapter"
            )
        full = key[len(KEY_PREFIX) :]
        module, _, leaf = full.rpartition(".")
        if leaf == index_stem:
            if f"{KEY_PREFIX}{module}.{value_stem}" not in tensors:
                raise FormatError(
                    f"{directory / WEIGHTS_NAME}: {key!r} has no {value_stem!r} tensor; the file is incomplete"
                )
            continue
        if leaf != value_stem:
            name = canonical(full)
            if name in dense and not torch.equal(dense[name], tensors[key]):
                raise FormatError(
                    f"{directory / WEIGHTS_NAME}: tied copies of {name!r} differ; the adapter is inconsistent"
                )
            dense[name] = tensors[key]
            continue
        if module == header.get("placeholder"):
            continue
        weight = f"{module}.weight"
        if weight not in shapes:
            raise FormatError(
                f"{directory}: shape of {weight!r} unknown; pass base= (the model the adapter is for)"
            )
        shape = tuple(int(s) for s in shapes[weight])
        values = tensors[key].reshape(-1)
        indices_key = f"{KEY_PREFIX}{module}.{index_stem}"
        if indices_key in tensors:
            flat = _flat_indices(tensors[indices_key], shape, peft_type, weight)
        elif regenerate:
            flat = _magnitude_support(model, weight, values.numel(), bool(config.get("select_top", True)))
        else:
            raise FormatError(
                f"{directory / WEIGHTS_NAME}: {key!r} has no {index_stem!r} tensor; the file is incomplete"
            )
        deltas[canonical(weight)] = coalesce(flat, values, shape, weight)

    for name, dtype in header.get("value_dtypes", {}).items():
        if name in deltas:
            deltas[name] = deltas[name].to(getattr(torch, dtype))
    metadata = SFTMetadata.from_dict(header["metadata"]) if "metadata" in header else SFTMetadata()
    metadata.provenance = {
        **metadata.provenance,
        "format": f"peft-{peft_type.lower()}",
        "path": str(directory),
    }
    if not metadata.base.name and config.get("base_model_name_or_path"):
        metadata.base.name = str(config["base_model_name_or_path"])
    sft = SFT(deltas=deltas, dense=dense, metadata=metadata)
    sft.validate()
    return sft


def coalesce(indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, ...], name: str) -> SparseDelta:
    """Sort flat indices and sum duplicates, as PEFT's scatter-add does; check the range."""
    if indices.numel() != values.numel():
        raise FormatError(
            f"{name}: {indices.numel()} indices but {values.numel()} values; the adapter is corrupt"
        )
    numel = math.prod(shape)
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= numel):
        raise FormatError(
            f"{name}: index out of range for shape {list(shape)}; wrong base model or corrupt adapter"
        )
    order = torch.sort(indices, stable=True).indices
    indices, values = indices[order], values[order].to(torch.float32)
    unique, inverse = torch.unique_consecutive(indices, return_inverse=True)
    summed = torch.zeros(unique.numel(), dtype=torch.float32).index_add_(0, inverse, values)
    return SparseDelta(shape, unique, summed)


def _magnitude_support(model: nn.Module | None, weight: str, count: int, largest: bool) -> torch.Tensor:
    """PEFT's own selection for an adapter saved without indices: top-``count`` of ``|W|``, flat."""
    if model is None or _is_meta(model):
        raise FormatError(
            f"{weight}: the adapter stores no indices; pass base= with weights to re-select them"
        )
    scores = model.get_parameter(weight).detach().abs().flatten()
    return torch.topk(scores, k=count, largest=largest).indices.to(torch.int64)


def _flat_indices(stored: torch.Tensor, shape: tuple[int, ...], peft_type: str, name: str) -> torch.Tensor:
    """Flat row-major int64 positions from Super-Tuning's flat or SHiRA's ``[2, nnz]`` (row, col) indices."""
    stored = stored.to(torch.int64)  # float32 on Windows-saved SHiRA adapters; exact for realistic sizes
    if peft_type == "SHIRA":
        if stored.dim() != 2 or stored.shape[0] != 2 or len(shape) != 2:
            raise FormatError(
                f"{name}: SHiRA indices must be [2, nnz] for a 2-D weight, got {list(stored.shape)}"
            )
        return stored[0] * shape[1] + stored[1]
    return stored.reshape(-1)


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise FormatError(f"{directory}: not a directory; pass a PEFT adapter directory")
    if not path.is_file():
        raise FormatError(f"{path}: missing; a PEFT adapter directory holds adapter_config.json")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(
            f"{path}: not valid JSON ({exc.__class__.__name__}); re-export the adapter"
        ) from None
    if not isinstance(config, dict):
        raise FormatError(f"{path}: must hold a JSON object")
    return config


def _read_weights(directory: Path, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = directory / WEIGHTS_NAME
    if path.is_file():
        try:
            with safetensors_open(str(path), framework="pt") as handle:
                raw = (handle.metadata() or {}).get(HEADER_KEY)
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except SafetensorError as exc:
            raise FormatError(
                f"{path}: not a readable safetensors file ({exc}); re-export the adapter"
            ) from None
        try:
            header = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            raise FormatError(f"{path}: corrupt '{HEADER_KEY}' header entry; re-export the adapter") from None
        return tensors, header
    pickled = directory / PICKLE_WEIGHTS_NAME
    if pickled.is_file():
        if not allow_pickle:
            raise FormatError(
                f"{pickled}: pickle weights are not loaded by default; pass allow_pickle_weights=True "
                "(read with torch.load(weights_only=True)) or re-save the adapter as safetensors"
            )
        state = torch.load(pickled, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise FormatError(f"{pickled}: expected a state dict of tensors")
        return dict(state), {}
    raise FormatError(f"{directory}: no {WEIGHTS_NAME}; a PEFT adapter directory holds its weights there")


# ------------------------------------------------------------------------------------------- base model


def _resolve_model(source: ModelSource, *, weights: bool) -> tuple[str | None, nn.Module]:
    """The base as a module, with its name for ``adapter_config.json``.

    A path or Hub id is built from its config on the meta device unless ``weights`` are needed: the
    structure (module types, prefix, tied weights) is all the sparse part requires.
    """
    if isinstance(source, nn.Module):
        config = getattr(source, "config", None)
        return (getattr(config, "_name_or_path", None) or None), source
    import transformers

    name = os.fspath(source)
    try:
        config = transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{name}: cannot read the base model config ({exc.__class__.__name__}); check the path or id"
        ) from None
    architectures = getattr(config, "architectures", None) or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    if cls is None:
        raise ConfigError(f"{name}: config names no known architecture; pass the loaded model instead")
    if weights:
        return name, cls.from_pretrained(name).eval()
    with torch.device("meta"):
        model = cls(config)
    return name, model.eval()


def _is_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def _full_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters(remove_duplicate=False))


def _preview(names: Iterable[str], limit: int = 4) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", … {len(names) - limit} more" if len(names) > limit else "")


__all__ = [
    "export_peft",
    "import_peft",
    "plan_export",
    "shared_sparsity",
    "pad_support",
    "coalesce",
    "ExportPlan",
]
