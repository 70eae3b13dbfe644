"""Core commands: info, extract, compose, merge, prune, convert, demo."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from sftkit.cli._output import format_table, human_bytes
from sftkit.errors import ConfigError

logger = logging.getLogger("sftkit")

_DTYPES = ("float32", "bfloat16", "float16")


def _value_dtype(name: str | None):  # -> torch.dtype | None
    import torch

    return None if name in (None, "float32") else getattr(torch, name)


def _denoise_config(energy: float | None, rank: int | None, residual_keep: float | None):
    from sftkit.denoising import DenoiseConfig

    if energy is not None and rank is not None:
        raise ConfigError("--denoise-energy and --denoise-rank are exclusive; give one of them")
    if energy is None and rank is None:
        if residual_keep:
            raise ConfigError("--residual-keep needs --denoise-energy or --denoise-rank")
        return None
    return DenoiseConfig(energy=energy, rank=rank, residual_keep=residual_keep or 0.0)


def _budget(num_params: int | None, density: float | None) -> dict[str, object]:
    if (num_params is None) == (density is None):
        raise ConfigError("give exactly one of --num-params K or --density D")
    return {"num_params": num_params, "density": density}


def _load_sfts(paths: tuple[str, ...]):
    from sftkit.format import load_file

    return [load_file(p) for p in paths]


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print metadata and the tensor table as JSON.")
@click.option("--all", "show_all", is_flag=True, help="List every tensor (default: the 40 largest).")
def info(file: str, as_json: bool, show_all: bool) -> None:
    """Show an SFT file's metadata and a per-tensor table.

    \b
    Example:
      sftkit info lang-sft-jav.safetensors
    """
    from sftkit.format import safe_open

    with safe_open(file) as reader:
        meta = reader.metadata
        tensors = reader.tensor_info()
    if as_json:
        payload = {"metadata": meta.to_dict(), "tensors": [t.to_dict() if hasattr(t, "to_dict") else vars(t) for t in tensors]}
        click.echo(json.dumps(payload, indent=2, default=str))
        return
    sparse = [t for t in tensors if t.kind == "sparse"]
    nnz = sum(t.nnz for t in sparse)
    numel = sum(_numel(t.shape) for t in sparse)
    size = Path(file).stat().st_size
    base = meta.base
    lines = [
        f"file:        {file} ({human_bytes(size)})",
        f"kind:        {meta.kind}" + (f"  language: {meta.language}" if meta.language else "") + (f"  task: {meta.task}" if meta.task else ""),
        f"method:      {meta.method or '-'}",
        f"base:        {base.name or '-'} {base.fingerprint or ''}".rstrip(),
        f"nonzeros:    {nnz:,} of {numel:,} ({(nnz / numel if numel else 0):.4%}) in {len(sparse)} tensors; "
        f"{len(tensors) - len(sparse)} dense tensors",
        f"bytes/nnz:   {(size / nnz if nnz else 0):.3f}",
    ]
    if meta.label_names:
        lines.append(f"labels:      {', '.join(meta.label_names)}")
    if meta.hyperparameters:
        shown = {k: v for k, v in meta.hyperparameters.items() if not isinstance(v, (dict, list))}
        lines.append("hyperparams: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    click.echo("\n".join(lines) + "\n")
    order = sorted(tensors, key=lambda t: -(t.index_bytes + t.value_bytes))
    rows = [
        (t.name, "x".join(map(str, t.shape)) or "scalar", t.kind if t.kind == "dense" else t.encoding, t.nnz,
         f"{t.density:.4f}", t.index_bytes + t.value_bytes)
        for t in (order if show_all else order[:40])
    ]
    click.echo(format_table(rows, ["tensor", "shape", "encoding", "nnz", "density", "bytes"]))
    if not show_all and len(order) > 40:
        click.echo(f"… {len(order) - 40} more tensors (--all to list them)")


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


@click.command()
@click.argument("base")
@click.argument("finetuned")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="SFT file to write.")
@click.option("--num-params", "-k", type=click.IntRange(min=1), help="K: number of entries to keep (global top-K).")
@click.option("--density", "-d", type=click.FloatRange(0, 1, min_open=True), help="K as a fraction of eligible entries.")
@click.option("--denoise-energy", type=click.FloatRange(0, 1, min_open=True), help="DeFT-X: keep the rank holding this energy.")
@click.option("--denoise-rank", type=click.IntRange(min=1), help="DeFT-X: keep this fixed rank.")
@click.option("--residual-keep", type=click.FloatRange(0, 1), help="DeFT-X: fraction of the residual kept by magnitude.")
@click.option("--values", type=click.Choice(["original", "denoised"]), default="original", show_default=True,
              help="Store the original δ on the mask, or the denoised δ.")
@click.option("--dtype", type=click.Choice(_DTYPES), default="float32", show_default=True, help="Value dtype in the file.")
@click.option("--kind", type=click.Choice(["language", "task", "other"]), default="other", show_default=True)
@click.option("--language", help="ISO 639-3 code for a language SFT.")
@click.option("--task", help="Task name for a task SFT.")
def extract(base, finetuned, output, num_params, density, denoise_energy, denoise_rank, residual_keep, values, dtype,
            kind, language, task) -> None:
    """Extract a sparse delta from a base and a fine-tuned checkpoint.

    BASE and FINETUNED are local Hugging Face model directories (or Hub ids when online).
    The mask is the global top-K of |θ1−θ0|, or of the DeFT-X-denoised δ when a denoise option is given.

    \b
    Examples:
      sftkit extract xlmr/ xlmr-jav/ -o jav.safetensors --density 0.02 --kind language --language jav
      sftkit extract xlmr/ xlmr-jav/ -o jav.safetensors -k 7667712 --denoise-energy 0.9 --residual-keep 0.05
    """
    from sftkit.extraction import extract as extract_sft
    from sftkit.format import save_file
    from sftkit.metadata import SFTMetadata
    from sftkit.models import load_model

    budget = _budget(num_params, density)
    denoise = _denoise_config(denoise_energy, denoise_rank, residual_keep)
    base_model = load_model(base, for_task="auto")
    tuned_model = load_model(finetuned, for_task="auto")
    metadata = SFTMetadata(kind=kind, language=language, task=task)
    sft = extract_sft(
        base_model, tuned_model, denoise=denoise, values=values, metadata=metadata, progress=True, **budget
    )
    sft.metadata.base.name = sft.metadata.base.name or base
    save_file(sft, output, value_dtype=_value_dtype(dtype))
    click.echo(f"wrote {output}: {sft.nnz:,} nonzeros in {len(sft.deltas)} tensors, {len(sft.dense)} dense tensors")


@click.command()
@click.argument("base")
@click.argument("deltas", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Model directory to write.")
@click.option("--scale", "scales", multiple=True, type=float, help="Scale per DELTA (repeat, in order). Default 1.")
@click.option("--language", help="Resolve a language SFT for BASE by ISO 639-3 code through the registry.")
@click.option("--task", help="Resolve a task SFT for BASE by task name through the registry.")
@click.option("--registry", "registry_path", type=click.Path(file_okay=False), help="Local registry directory.")
@click.option("--hub/--no-hub", default=None, help="Also look on the Hugging Face Hub (default: when online).")
@click.option("--force", is_flag=True, help="Apply even if an SFT's base fingerprint does not match BASE.")
@click.option("--strict", is_flag=True, help="Fail if an SFT touches a parameter BASE does not have.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def compose(base, deltas, output, scales, language, task, registry_path, hub, force, strict, overwrite) -> None:
    """Compose SFTs onto BASE and write a standalone model directory.

    θ = θ0 + Σ scale_i · φ_i; dense tensors in an SFT (a task head) replace the base's.
    SFTs come from files (DELTA ...) and/or by name through the registry (--language/--task).

    \b
    Examples:
      sftkit compose xlmr/ lang-quy.safetensors task-nli.safetensors -o xlmr-quy-nli/
      sftkit compose xlmr/ --language quy --task nli -o xlmr-quy-nli/
    """
    from sftkit.compose import apply
    from sftkit.models import load_model_for, save_composed

    out = Path(output)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{output}: directory exists and is not empty; choose another -o or pass --overwrite")
    paths = list(deltas)
    if language or task:
        from sftkit.registry import resolve

        paths = [*map(str, resolve(base, language=language, task=task, registry=registry_path, hub=hub)), *paths]
    if not paths:
        raise ConfigError("nothing to compose: give SFT files, or --language/--task to resolve them through the registry")
    if scales and len(scales) != len(paths):
        raise ConfigError(f"--scale was given {len(scales)} times for {len(paths)} SFTs; give one per SFT or none")
    sfts = _load_sfts(tuple(paths))
    model = load_model_for(base, sfts)
    apply(model, sfts, list(scales) or None, strict=strict, force=force, revertible=False)
    save_composed(model, output, tokenizer_source=base, overwrite=overwrite)
    click.echo(f"wrote {output}: {base} + " + " + ".join(Path(p).name for p in paths))


@click.command()
@click.argument("deltas", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--method", type=click.Choice(["sum", "mean", "ties"]), default="sum", show_default=True)
@click.option("--weight", "weights", multiple=True, type=float, help="Weight per DELTA (repeat, in order).")
@click.option("--density", type=click.FloatRange(0, 1, min_open=True), help="TIES: keep this fraction of each delta first.")
@click.option("--dtype", type=click.Choice(_DTYPES), default="float32", show_default=True)
def merge(deltas, output, method, weights, density, dtype) -> None:
    """Merge several SFTs into one (sum, mean, or TIES sign election).

    \b
    Example:
      sftkit merge a.safetensors b.safetensors -o ab.safetensors --method ties --density 0.5
    """
    from sftkit.arithmetic import merge as merge_sfts
    from sftkit.format import save_file

    if weights and len(weights) != len(deltas):
        raise ConfigError(f"--weight was given {len(weights)} times for {len(deltas)} SFTs; give one per SFT or none")
    merged = merge_sfts(_load_sfts(deltas), method=method, weights=list(weights) or None, density=density)
    save_file(merged, output, value_dtype=_value_dtype(dtype))
    click.echo(f"wrote {output}: {merged.nnz:,} nonzeros")


@click.command()
@click.argument("delta", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--num-params", "-k", type=click.IntRange(min=1))
@click.option("--density", "-d", type=click.FloatRange(0, 1, min_open=True), help="Fraction of the touched tensors' entries.")
@click.option("--scope", type=click.Choice(["global", "tensor"]), default="global", show_default=True)
@click.option("--dtype", type=click.Choice(_DTYPES), default="float32", show_default=True)
def prune(delta, output, num_params, density, scope, dtype) -> None:
    """Keep the top-K entries of an SFT by magnitude (globally or per tensor).

    \b
    Example:
      sftkit prune task.safetensors -o task-small.safetensors --num-params 1000000
    """
    from sftkit.arithmetic import prune as prune_sft
    from sftkit.format import load_file, save_file

    pruned = prune_sft(load_file(delta), scope=scope, **_budget(num_params, density))
    save_file(pruned, output, value_dtype=_value_dtype(dtype))
    click.echo(f"wrote {output}: {pruned.nnz:,} nonzeros")


@click.command()
@click.argument("source", type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path())
@click.option("--from", "source_format", type=click.Choice(["auto", "composable-sft", "peft", "sftkit"]), default="auto",
              show_default=True, help="Format of SOURCE.")
@click.option("--to", "target_format", type=click.Choice(["sftkit", "peft"]), default="sftkit", show_default=True)
@click.option("--base", help="Base model dir: maps names (tied weights) and records its fingerprint; required for --to peft.")
def convert(source, output, source_format, target_format, base) -> None:
    """Convert between composable-sft's pytorch_diff.bin, PEFT adapters and sftkit files.

    \b
    Examples:
      sftkit convert pytorch_diff.bin -o quy.safetensors --base xlm-roberta-base/
      sftkit convert quy.safetensors --to peft --base xlm-roberta-base/ -o quy-peft/
      sftkit convert quy-peft/ --from peft -o quy.safetensors
    """
    from sftkit.format import load_file, save_file

    src = Path(source)
    if source_format == "auto":
        if src.is_dir():
            source_format = "peft"
        elif src.suffix == ".safetensors":
            source_format = "sftkit"
        elif src.suffix in (".bin", ".pt", ".pth"):
            source_format = "composable-sft"
        else:
            raise ConfigError(f"{source}: cannot tell its format from the name; pass --from composable-sft|peft|sftkit")
    base_model = None
    if base:
        from sftkit.models import load_model

        base_model = load_model(base, for_task="auto")
    if source_format == "composable-sft":
        from sftkit.interop.composable_sft import import_pytorch_diff

        sft = import_pytorch_diff(source, base=base_model)
    elif source_format == "peft":
        from sftkit.interop.peft import import_peft

        sft = import_peft(source, base=base_model)
    else:
        sft = load_file(source)
    if target_format == "peft":
        from sftkit.interop.peft import export_peft

        if not base:
            raise ConfigError("--to peft needs --base BASE (the adapter config names its base model)")
        export_peft(sft, base_model, output)
    else:
        save_file(sft, output)
    click.echo(f"wrote {output}: {sft.nnz:,} nonzeros in {len(sft.deltas)} tensors, {len(sft.dense)} dense tensors")


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False), help="Where to write the SFTs (default: a temp dir).")
@click.option("--quick", is_flag=True, help="A seconds-long version (fewer steps).")
def demo(workdir, quick) -> None:
    """Run the embedded default end to end: tiny model, bundled sample text, language + task SFTs, compose, evaluate.

    \b
    Example:
      sftkit demo
    """
    from sftkit.demo import format_table as format_demo
    from sftkit.demo import run_demo

    result = run_demo(workdir, quick=quick, log=lambda message: click.echo(message, err=True))
    click.echo(format_demo(result))


def register(group: click.Group) -> None:
    for command in (info, extract, compose, merge, prune, convert, demo):
        group.add_command(command)
