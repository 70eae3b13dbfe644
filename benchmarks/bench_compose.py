"""Compose benchmark: sftkit's fused composer against composable-sft's format and method.

On an XLM-R-base-shaped sequence classifier (xlm-roberta-base's config, 278M parameters, random
init) with a random language delta (K = 7,667,712, spread over all base-model parameters in
proportion to their size) and a random task delta (K = 14,155,776, spread over the encoder layers,
plus a dense classifier head) — the sizes composable-sft uses — it measures, in one run:

1. **load + apply** of both deltas: ``sftkit.load_file`` + ``sftkit.apply`` versus composable-sft's
   files (``torch.save`` of delta-coded Python int lists of column-major indices + values) decoded by
   cumsum and applied as a sparse COO add (``param += torch.sparse_coo_tensor(...).coalesce()``),
   one SFT after the other, as composable-sft does. Target: sftkit ≥ 5× faster.
2. **fused apply** of prepared deltas (``sftkit.prepare`` once, then ``sftkit.apply``) versus a bare
   ``index_add_`` over the same (index, value) pairs, one call per parameter, and one single
   ``index_add_`` into a flat buffer of the whole model as a floor. Target: ≤ 1.3× the bare loop.
   Both ``revertible=False`` and ``revertible=True`` are reported.

CUDA rows are added when a GPU is present. Prints a table and writes JSON
(``benchmarks/results/compose.json``, ``compose-quick.json`` with ``--quick``)::

    python benchmarks/bench_compose.py            # full size (~8 GB RAM, a few minutes on 2 cores)
    python benchmarks/bench_compose.py --quick    # a small model, seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

from sftkit.compose import apply, forget, prepare
from sftkit.delta import SFT, SparseDelta
from sftkit.fingerprints import describe_base
from sftkit.format import load_file, save_file
from sftkit.metadata import SFTMetadata
from sftkit.naming import canonical_parameters

LANGUAGE_K = 7_667_712
TASK_K = 14_155_776
RESULTS = Path(__file__).resolve().parent / "results" / "compose.json"


# ---- setup --------------------------------------------------------------------------------------


def xlmr_base_config(**overrides: int) -> XLMRobertaConfig:
    """xlm-roberta-base's shape. ``XLMRobertaConfig()`` alone inherits BERT's vocabulary of 30,522
    (109M parameters); the real model has 250,002 tokens and 514 positions (278M parameters)."""
    values = dict(vocab_size=250_002, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                  pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=3)
    values.update(overrides)
    return XLMRobertaConfig(**values)


def build_model(quick: bool, seed: int) -> nn.Module:
    """A randomly initialised XLM-R classifier; weights filled directly (faster than transformers' init)."""
    config = xlmr_base_config()
    if quick:
        config = xlmr_base_config(vocab_size=30_000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                  intermediate_size=1024)
    with torch.device("meta"):
        model = XLMRobertaForSequenceClassification(config)
    model = model.to_empty(device="cpu").eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02, generator=gen)
    return model


def spread(k: int, sizes: dict[str, int]) -> dict[str, int]:
    """Split K over tensors in proportion to their size (largest remainders get the leftovers)."""
    total = sum(sizes.values())
    share = {n: k * s / total for n, s in sizes.items()}
    counts = {n: int(v) for n, v in share.items()}
    for name in sorted(share, key=lambda n: counts[n] - share[n])[: k - sum(counts.values())]:
        counts[name] += 1
    return counts


def random_sft(model: nn.Module, k: int, include: Callable[[str], bool], seed: int, kind: str) -> SFT:
    params = {n: info.parameter for n, info in canonical_parameters(model).items() if info.in_base and include(n)}
    counts = spread(k, {n: p.numel() for n, p in params.items()})
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for name, param in params.items():
        indices = torch.randperm(param.numel(), generator=gen)[: counts[name]].sort().values
        values = torch.randn(indices.numel(), generator=gen) * 1e-3
        deltas[name] = SparseDelta(tuple(param.shape), indices, values)
    return SFT(deltas=deltas, metadata=SFTMetadata(kind=kind, base=describe_base(model)))


def with_head(sft: SFT, model: nn.Module, seed: int) -> SFT:
    gen = torch.Generator().manual_seed(seed)
    head = {n: torch.randn(p.shape, generator=gen) * 0.02 for n, p in model.named_parameters() if n.startswith("classifier.")}
    return SFT(deltas=sft.deltas, dense=head, metadata=sft.metadata)


def column_major(indices: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Row-major flat positions → composable-sft's column-major ones (first dimension fastest)."""
    coords = []
    rest = indices
    for size in reversed(shape):
        coords.append(rest % size)
        rest = rest // size
    coords.reverse()
    multipliers = np.cumprod([1, *shape[:-1]]).tolist()
    return sum(c * m for c, m in zip(coords, multipliers, strict=True))


def save_composable_sft(sft: SFT, model: nn.Module, path: Path) -> None:
    """composable-sft's pytorch_diff.bin: {'body': {name: {size, index_steps, values}}, 'head': {...}}."""
    full_names = {n: info.aliases for n, info in canonical_parameters(model).items()}
    body = {}
    for name, delta in sft.deltas.items():
        full = next((a for a in full_names[name] if a.startswith("roberta.")), name)
        flat, order = torch.sort(column_major(delta.indices, delta.shape))
        steps = torch.diff(flat, prepend=torch.zeros(1, dtype=flat.dtype))
        body[full] = {"size": torch.Size(delta.shape), "index_steps": steps.tolist(), "values": delta.values[order].clone()}
    torch.save({"body": body, "head": dict(sft.dense)}, path)


# ---- the composable-sft method (decode by cumsum, sparse COO add), re-implemented ---------------


def composable_sft_decode(encoding: dict) -> torch.Tensor:
    size = encoding["size"]
    flat = np.cumsum(encoding["index_steps"], dtype=np.int64)
    modulos = np.cumprod(list(size), dtype=np.int64)
    divisors = np.concatenate([[1], modulos[:-1]]).astype(np.int64)
    coordinates = (flat[None, :] // divisors[:, None]) % modulos[:, None]
    coo = torch.sparse_coo_tensor(torch.from_numpy(coordinates), encoding["values"], size=size, check_invariants=False)
    return coo.coalesce()


def composable_sft_apply(model: nn.Module, components: dict) -> None:
    with torch.no_grad():
        for name, encoding in components["body"].items():
            param = model.get_parameter(name)
            param += composable_sft_decode(encoding).to(param.device)
        for name, value in components.get("head", {}).items():
            model.get_parameter(name).copy_(value)


def composable_sft_load_apply(model: nn.Module, paths: list[Path]) -> None:
    for path in paths:
        composable_sft_apply(model, torch.load(path, weights_only=True))


# ---- timing -------------------------------------------------------------------------------------


def timed(
    fn: Callable[[], object], reset: Callable[[], object], repeats: int, device: torch.device, warmup: bool = True
) -> list[float]:
    """Run ``fn`` once to warm up (unless not ``warmup``), then ``repeats`` times; ``reset`` runs untimed before each."""
    times = []
    for i in range(repeats + 1 if warmup else repeats):
        reset()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i or not warmup:
            times.append(time.perf_counter() - start)
    return times


def bench_device(
    device: torch.device,
    model: nn.Module,
    sftkit_paths: list[Path],
    csft_paths: list[Path],
    repeats: int,
    baseline_repeats: int,
) -> list[dict]:
    model = model.to(device)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}

    def restore() -> None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(original[n])
        forget(model)

    rows: list[dict] = []

    def record(case: str, times: list[float], **extra: object) -> None:
        rows.append({"device": str(device), "case": case, "median_s": statistics.median(times), "min_s": min(times),
                     "runs": len(times), **extra})
        print(f"  {device}  {case:<58} median {statistics.median(times):8.4f} s", flush=True)

    # (1) load + apply
    # composable-sft runs take long (the weights_only unpickler reads Python int lists): no warm-up run
    record("composable-sft: torch.load + cumsum decode + sparse COO add",
           timed(lambda: composable_sft_load_apply(model, csft_paths), restore, baseline_repeats, device, warmup=False))
    loaded = [torch.load(p, weights_only=True) for p in csft_paths]
    record("composable-sft: decode + sparse COO add only (files loaded)",
           timed(lambda: [composable_sft_apply(model, c) for c in loaded], restore, baseline_repeats, device, warmup=False))
    loaded.clear()
    for revertible in (False, True):
        record(f"sftkit: load_file + apply (revertible={revertible})",
               timed(lambda r=revertible: apply(model, [load_file(p) for p in sftkit_paths], revertible=r),
                     restore, repeats, device))

    sfts = [load_file(p) for p in sftkit_paths]
    record("sftkit: apply (SFTs loaded, revertible=False)", timed(lambda: apply(model, sfts, revertible=False),
                                                                   restore, repeats, device))

    # (2) fused apply of prepared deltas vs a bare index_add_ over the same pairs. The cases alternate
    # run by run so that load from other processes hits them alike; between runs the model just keeps
    # accumulating deltas (timing does not depend on the values), except that revertible runs revert.
    restore()
    prepared = prepare(model, sfts)
    nnz = prepared.nnz
    items = [(p.tensor.view(-1), p.indices, p.values) for p in prepared.parameters if p.indices is not None]
    heads = [(p.tensor, p.dense) for p in prepared.parameters if p.dense is not None]

    def bare() -> None:
        with torch.no_grad():
            for tensor, dense in heads:  # the same work: the task head copy, then the scatter
                tensor.copy_(dense)
            for flat, indices, values in items:
                flat.index_add_(0, indices, values)

    # The floor: every pair scattered by one call into one flat buffer the size of the touched tensors.
    starts, offset = [], 0
    for p in prepared.parameters:
        if p.indices is not None:
            starts.append(offset)
            offset += p.tensor.numel()
    flat_model = torch.zeros(offset, device=device)
    global_idx = torch.cat([indices + start for (_, indices, _), start in zip(items, starts, strict=True)])
    global_val = torch.cat([values for _, _, values in items])

    pending: list = []

    def undo() -> None:
        while pending:
            composition = pending.pop()
            if composition.revertible:
                composition.revert()

    cases: dict[str, Callable[[], object]] = {
        "sftkit: apply(prepared, revertible=False)": lambda: pending.append(apply(model, prepared, revertible=False)),
        "sftkit: apply(prepared, revertible=True)": lambda: pending.append(apply(model, prepared, revertible=True)),
        "bare index_add_ per parameter (same pairs)": bare,
        "bare index_add_, one call into a flat buffer": lambda: flat_model.index_add_(0, global_idx, global_val),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(repeats + 1):  # round 0 warms up
        for name, fn in cases.items():
            times[name].extend(timed(fn, undo, 1, device, warmup=False) if round_ else [])
            if not round_:
                fn()
                undo()
    for name, values in times.items():
        record(name, values, nnz=nnz)
    restore()
    model.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def ratios(rows: list[dict]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for device in dict.fromkeys(r["device"] for r in rows):
        t = {r["case"]: r["median_s"] for r in rows if r["device"] == device}
        csft = t["composable-sft: torch.load + cumsum decode + sparse COO add"]
        bare = t["bare index_add_ per parameter (same pairs)"]
        out[device] = {
            "load_apply_speedup_revertible_false": csft / t["sftkit: load_file + apply (revertible=False)"],
            "load_apply_speedup_revertible_true": csft / t["sftkit: load_file + apply (revertible=True)"],
            "apply_method_speedup_files_loaded": t["composable-sft: decode + sparse COO add only (files loaded)"]
            / t["sftkit: apply (SFTs loaded, revertible=False)"],
            "fused_over_bare_revertible_false": t["sftkit: apply(prepared, revertible=False)"] / bare,
            "fused_over_bare_revertible_true": t["sftkit: apply(prepared, revertible=True)"] / bare,
            "fused_over_flat_floor_revertible_false": t["sftkit: apply(prepared, revertible=False)"]
            / t["bare index_add_, one call into a flat buffer"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small model and proportionally scaled K")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 3, quick 5)")
    parser.add_argument("--baseline-repeats", type=int, default=None,
                        help="timed runs of the slow composable-sft cases (default 1, quick 3)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CPU, plus CUDA if present")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results path (default benchmarks/results/compose.json, compose-quick.json with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 3)
    baseline_repeats = args.baseline_repeats or (3 if args.quick else 1)
    out_path = args.out or (RESULTS.with_name("compose-quick.json") if args.quick else RESULTS)

    t0 = time.perf_counter()
    model = build_model(args.quick, args.seed)
    base_numel = sum(info.parameter.numel() for info in canonical_parameters(model).values() if info.in_base)
    encoder_numel = sum(p.numel() for n, p in model.named_parameters() if n.startswith("roberta.encoder."))
    if args.quick:  # keep the full-size densities
        full = build_dims_full()
        lang_k = round(LANGUAGE_K * base_numel / full[0])
        task_k = round(TASK_K * encoder_numel / full[1])
    else:
        lang_k, task_k = LANGUAGE_K, TASK_K
    language = random_sft(model, lang_k, lambda n: True, args.seed + 1, "language")
    task = with_head(random_sft(model, task_k, lambda n: n.startswith("encoder."), args.seed + 2, "task"), model, args.seed + 3)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters; language K = {language.nnz:,}, task K = {task.nnz:,} "
          f"(+{sum(t.numel() for t in task.dense.values()):,} dense head); setup {time.perf_counter() - t0:.1f} s", flush=True)

    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        print("CUDA requested but not available", file=sys.stderr)
        return 2

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sftkit-bench-") as tmp:
        tmpdir = Path(tmp)
        sftkit_paths = [tmpdir / "language.safetensors", tmpdir / "task.safetensors"]
        csft_paths = [tmpdir / "language-pytorch_diff.bin", tmpdir / "task-pytorch_diff.bin"]
        for sft, sk, cs in zip((language, task), sftkit_paths, csft_paths, strict=True):
            save_file(sft, sk)
            save_composable_sft(sft, model, cs)
        sizes = {p.name: p.stat().st_size for p in [*sftkit_paths, *csft_paths]}
        del language, task
        gc.collect()
        for device in devices:
            rows.extend(bench_device(device, model, sftkit_paths, csft_paths, repeats, baseline_repeats))

    summary = ratios(rows)
    print()
    print(f"{'device':<6}  {'case':<58}  {'median s':>9}  {'min s':>9}")
    for r in rows:
        print(f"{r['device']:<6}  {r['case']:<58}  {r['median_s']:9.4f}  {r['min_s']:9.4f}")
    print()
    for device, values in summary.items():
        print(f"{device}: load+apply speedup vs composable-sft {values['load_apply_speedup_revertible_false']:.1f}x "
              f"(revertible=True {values['load_apply_speedup_revertible_true']:.1f}x; target >= 5x); "
              f"apply alone, files already loaded {values['apply_method_speedup_files_loaded']:.1f}x")
        print(f"{device}: fused apply / bare index_add_ {values['fused_over_bare_revertible_false']:.2f}x "
              f"(revertible=True {values['fused_over_bare_revertible_true']:.2f}x; target <= 1.3x); "
              f"vs one flat index_add_ {values['fused_over_flat_floor_revertible_false']:.2f}x")
    print("file sizes: " + ", ".join(f"{n} {s / 2**20:.1f} MiB" for n, s in sizes.items()))

    result = {
        "benchmark": "compose",
        "quick": args.quick,
        "parameters": n_params,
        "language_k": lang_k,
        "task_k": task_k,
        "repeats": repeats,
        "baseline_repeats": baseline_repeats,
        "file_bytes": sizes,
        "rows": rows,
        "ratios": summary,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out_path.with_name(f".{out_path.name}.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, out_path)
    print(f"wrote {out_path}")
    return 0


def build_dims_full() -> tuple[int, int]:
    """Base-model and encoder parameter counts of the full XLM-R-base config (computed on meta, no memory)."""
    with torch.device("meta"):
        full = XLMRobertaForSequenceClassification(xlmr_base_config())
    base = sum(p.numel() for p in full.roberta.parameters())
    encoder = sum(p.numel() for p in full.roberta.encoder.parameters())
    return base, encoder


if __name__ == "__main__":
    sys.exit(main())
