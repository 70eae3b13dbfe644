"""Model cards: the README.md pushed with every SFT, and reading entries back from card data.

The YAML front matter is what the Hub indexes: ``library_name: sftkit``, ``base_model`` with
``base_model_relation: adapter``, ``language`` and ``tags`` make SFTs findable with the Hub's own
filters, and an ``sftkit:`` block carries the fields search needs (kind, K, density, base
fingerprint) so search never downloads an SFT file.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCardData

from sftkit.registry.entry import RegistryEntry

LIBRARY_TAG = "sftkit"
BASE_TAGS = ("sparse-fine-tuning", LIBRARY_TAG)
KIND_TAGS = {"language": "language-sft", "task": "task-sft"}
METHOD_TAGS = {"deft-x": "deft-x", "lt-sft": "lt-sft", "composable-sft-import": "lt-sft"}
_CARD_KEYS = ("kind", "language", "task", "method", "nnz", "density", "size", "sha256", "base_fingerprint", "provenance")


def tags_for(entry: RegistryEntry) -> list[str]:
    tags = list(BASE_TAGS)
    if entry.kind in KIND_TAGS:
        tags.append(KIND_TAGS[entry.kind])
    if entry.method in METHOD_TAGS and METHOD_TAGS[entry.method] not in tags:
        tags.append(METHOD_TAGS[entry.method])
    if entry.task and entry.kind == "task":
        tags.append(f"task:{entry.task}")
    return tags


def card_data_for(entry: RegistryEntry, license: str | None = None) -> dict[str, Any]:
    """The front-matter dict of an entry's model card."""
    data: dict[str, Any] = {
        "library_name": LIBRARY_TAG,
        "tags": tags_for(entry),
        "license": license or entry.license or "apache-2.0",
    }
    if entry.base_name:
        data["base_model"] = entry.base_name
        data["base_model_relation"] = "adapter"
    if entry.language:
        data["language"] = [entry.language]
    data["sftkit"] = {k: getattr(entry, k) for k in _CARD_KEYS if getattr(entry, k) not in (None, {}, [])}
    return data


def render_card(entry: RegistryEntry, license: str | None = None, data_description: str | None = None) -> str:
    """README.md text: YAML front matter, then method, K/density, data and how to use it."""
    card_data = ModelCardData(**card_data_for(entry, license))
    what = {"language": f"language SFT for `{entry.language}`", "task": f"task SFT for `{entry.task}`"}.get(
        entry.kind, "sparse fine-tuning"
    )
    k = f"{entry.nnz:,}" if entry.nnz is not None else "?"
    density = f"{entry.density:.4%}" if entry.density is not None else "?"
    data = data_description or _data_line(entry)
    flag = f"--language {entry.language}" if entry.kind == "language" else f"--task {entry.task}"
    base = entry.base_name or "BASE"
    of_base = f"`{entry.base_name}`" if entry.base_name else "its base model"
    body = f"""
# {entry.repo_id}

A {what} of {of_base}, made with sftkit: a sparse difference
φ that is *added* to the base model's weights (θ = θ₀ + φ). Compose it with other SFTs (a language SFT
plus a task SFT gives zero-shot cross-lingual transfer).

| | |
| --- | --- |
| method | {entry.method or "-"} |
| K (non-zeros) | {k} |
| density | {density} |
| base model | {of_base} |
| base fingerprint | `{entry.base_fingerprint or "-"}` |
| training data | {data} |

## Use it with sftkit

```bash
pip install sftkit
sftkit pull {entry.repo_id}
sftkit compose {base} {flag} -o composed-model/
```

```python
import sftkit
from sftkit.registry import pull

entry = pull("{entry.repo_id}")
sft = sftkit.load_file(entry.file)
with sftkit.composed(model, [sft]):  # model: {base}
    outputs = model(**batch)
```
"""
    return f"---\n{card_data.to_yaml()}\n---\n{body}"


def _data_line(entry: RegistryEntry) -> str:
    source = entry.provenance or {}
    if source.get("repo"):
        return f"imported from `{source['repo']}` ({source.get('format', 'unknown format')})"
    data = source.get("data")
    return str(data) if data else "see the SFT's metadata (`sftkit info sft.safetensors`)"


def entry_from_card(repo_id: str, card: dict[str, Any], **fields: Any) -> RegistryEntry:
    """Rebuild an entry from card data (front matter) as the Hub returns it; tolerant of foreign cards."""
    from sftkit.registry.naming import codes_from_name

    block = card.get("sftkit") if isinstance(card.get("sftkit"), dict) else {}
    tags = [t for t in card.get("tags") or [] if isinstance(t, str)]
    languages = card.get("language")
    language = block.get("language") or (languages[0] if isinstance(languages, list) and languages else languages)
    name_lang, name_task = codes_from_name(repo_id)
    kind = block.get("kind") or (
        "language" if "language-sft" in tags or name_lang else "task" if "task-sft" in tags or name_task else "other"
    )
    base_model = card.get("base_model")
    if isinstance(base_model, list):
        base_model = base_model[0] if base_model else None
    values: dict[str, Any] = {
        "repo_id": repo_id,
        "kind": kind,
        "language": language if isinstance(language, str) else name_lang,
        "task": block.get("task") or name_task,
        "base_name": base_model,
        "base_fingerprint": block.get("base_fingerprint"),
        "method": block.get("method"),
        "nnz": block.get("nnz"),
        "density": block.get("density"),
        "size": block.get("size"),
        "sha256": block.get("sha256"),
        "tags": tags,
        "license": card.get("license"),
        "provenance": block.get("provenance") or {},
        "card_data": dict(card),
    }
    values.update(fields)
    return RegistryEntry(**values)
