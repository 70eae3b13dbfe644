"""Size and speed of the SFT file format on an XLM-R-base-shaped parameter set.

For a random language delta (K = 7,667,712) and a task delta (K = 14,155,776) spread uniformly over
the base model's tensors, reports

* index bytes per nonzero for each encoding (and the automatic per-tensor choice) against the
  entropy bound ``sum_t log2 C(n_t, k_t)``;
* the whole file against (entropy bound + value bytes), target <= 1.05x;
* the same delta in composable-sft's format (``torch.save`` of delta-coded Python ints + values,
  written in this run), and save/load times of both.

Shapes come from xlm-roberta-base's ``XLMRobertaConfig`` (vocab 250,002, hidden 768, 12 layers:
277,453,056 base parameters) on the meta device: no weights, no download.

    python benchmarks/bench_format.py            # full size, a few minutes on 2 cores
    python benchmarks/bench_format.py --quick    # vocabulary 5,000 and 2 layers, well under a minute

Writes ``benchmarks/results/format.json`` (``format-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

from sftkit import SFT, SFTMetadata, SparseDelta
from sftkit.format import (
    ENCODINGS,
    decode_indices,
    encode_indices,
    encoded_nbytes,
    entropy_bound_bits,
    load_file,
    save_file,
)
from sftkit.naming import canonical_parameters

FULL_K = {"language": 7_667_712, "task": 14_155_776}
RESULTS = Path(__file__).resolve().parent / "results" / "format.json"


def base_shapes(quick: bool) -> dict[str, tuple[int, ...]]:
    # xlm-roberta-base's config.json; the class defaults are BERT's (vocab 30,522), not XLM-R's.
    config = XLMRobertaConfig(vocab_size=250_002, max_position_embeddings=514, type_vocab_size=1)
    if quick:
        config.vocab_size, config.num_hidden_layers = 5_000, 2
    with torch.device("meta"):
        model = XLMRobertaForMaskedLM(config)
    return {n: tuple(p.parameter.shape) for n, p in canonical_parameters(model).items() if p.in_base}


def random_sft(shapes: dict[str, tuple[int, ...]], k_total: int, seed: int, kind: str) -> SFT:
    """K nonzeros spread over the tensors in proportion to their size, uniform within each tensor."""
    rng = np.random.default_rng(seed)
    numels = np.array([math.prod(s) for s in shapes.values()], dtype=np.int64)
    shares = numels * (k_total / numels.sum())
    counts = np.floor(shares).astype(np.int64)
    counts[np.argsort(shares - counts)[::-1][: k_total - counts.sum()]] += 1  # largest remainders
    deltas = {}
    for (name, shape), numel, k in zip(shapes.items(), numels, counts, strict=True):
        indices = np.sort(rng.choice(int(numel), int(k), replace=False, shuffle=False))
        values = torch.from_numpy(rng.standard_normal(int(k), dtype=np.float32) * 1e-3)
        deltas[name] = SparseDelta(shape, torch.from_numpy(indices.astype(np.int64)), values)
    return SFT(deltas, {}, SFTMetadata(kind=kind, method="benchmark"))


# --- composable-sft's format, reproduced ----------------------------------------------------------


def column_major(indices: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    coords = np.unravel_index(indices, shape) if shape else ()
    flat = np.zeros(indices.size, dtype=np.int64)
    for dim in reversed(range(len(shape))):
        flat = flat * shape[dim] + coords[dim]
    return flat


def save_composable(sft: SFT, path: Path) -> None:
    """What composable-sft's ``SFT.save`` writes: column-major, delta-coded Python ints + values."""
    diffs = {}
    for name, delta in sft.deltas.items():
        flat = column_major(delta.indices.numpy(), delta.shape)
        order = np.argsort(flat, kind="stable")
        flat = flat[order]
        steps = np.diff(flat, prepend=0).tolist()
        diffs[name] = {"size": torch.Size(delta.shape), "index_steps": steps, "values": delta.values[order]}
    torch.save({"diffs": diffs, "abs": {}}, path)


def load_composable(path: Path) -> int:
    """``torch.load`` + composable-sft's index decode (cumsum of the steps); returns K as a check."""
    data = torch.load(path, weights_only=True)
    total = 0
    for enc in data["diffs"].values():
        total += np.cumsum(enc["index_steps"], dtype=np.int64).size
    return total


# --- measurements -------------------------------------------------------------------------------


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def measure(sft: SFT, workdir: Path, label: str) -> dict[str, Any]:
    k = sft.nnz
    entries = [(d.numel, d.nnz) for d in sft.deltas.values()]
    bound_bits = sum(entropy_bound_bits(n, c) for n, c in entries)
    global_bound_bits = entropy_bound_bits(sum(n for n, _ in entries), k)
    per_encoding = {e: sum(encoded_nbytes(e, n, c) for n, c in entries) * 8 / k for e in ENCODINGS}
    auto_bits = sum(min(encoded_nbytes(e, n, c) for e in ENCODINGS) for n, c in entries) * 8 / k

    result: dict[str, Any] = {
        "K": k,
        "numel": sum(n for n, _ in entries),
        "density": k / sum(n for n, _ in entries),
        "tensors": len(entries),
        "index_bits_per_nnz": {**per_encoding, "auto": auto_bits},
        "entropy_bits_per_nnz": bound_bits / k,
        "entropy_bits_per_nnz_global": global_bound_bits / k,
    }
    for value_dtype, value_bytes in ((torch.float32, 4), (torch.bfloat16, 2)):
        tag = str(value_dtype).removeprefix("torch.")
        path = workdir / f"{label}-{tag}.safetensors"
        save_s, _ = timed(save_file, sft, path, value_dtype=value_dtype)
        load_s, loaded = timed(load_file, path)
        assert loaded.nnz == k
        del loaded
        size = path.stat().st_size
        ideal = bound_bits / 8 + k * value_bytes
        result[f"sftkit_{tag}"] = {
            "bytes": size,
            "bytes_per_nnz": size / k,
            "vs_entropy_plus_values": size / ideal,
            "save_s": save_s,
            "load_s": load_s,
        }
        path.unlink()
    path = workdir / f"{label}-pytorch_diff.bin"
    save_s, _ = timed(save_composable, sft, path)
    load_s, count = timed(load_composable, path)
    assert count == k
    size = path.stat().st_size
    path.unlink()
    ours = result["sftkit_float32"]
    result["composable_sft"] = {"bytes": size, "bytes_per_nnz": size / k, "save_s": save_s, "load_s": load_s}
    result["ratios_vs_composable_sft"] = {
        "size": ours["bytes"] / size,
        "save_time": ours["save_s"] / save_s,
        "load_time": ours["load_s"] / load_s,
    }
    return result


def largest_tensor_codec(sft: SFT) -> dict[str, Any]:
    """Encode/decode time of the biggest single index set (the word embeddings)."""
    name, delta = max(sft.deltas.items(), key=lambda kv: kv[1].nnz)
    enc_s, (encoding, payload, params) = timed(encode_indices, delta.indices, delta.numel)
    dec_s, decoded = timed(decode_indices, encoding, payload, params, delta.numel, delta.nnz)
    assert torch.equal(decoded, delta.indices)
    return {"tensor": name, "nnz": delta.nnz, "encoding": encoding, "encode_s": enc_s, "decode_s": dec_s}


def print_table(results: dict[str, Any]) -> None:
    for label, r in results["deltas"].items():
        print(f"\n== {label} delta: K={r['K']:,} over {r['numel']:,} params (density {r['density']:.4%}) ==")
        print(f"{'index encoding':<22}{'bits/nnz':>10}{'x entropy':>11}")
        entropy = r["entropy_bits_per_nnz"]
        for name, bits in r["index_bits_per_nnz"].items():
            print(f"{name:<22}{bits:>10.3f}{bits / entropy:>11.3f}")
        print(f"{'entropy bound':<22}{entropy:>10.3f}{1:>11.3f}   (global log2 C(N,K): {r['entropy_bits_per_nnz_global']:.3f})")
        print(f"{'file':<26}{'MB':>9}{'B/nnz':>8}{'x(H+values)':>13}{'save s':>9}{'load s':>9}")
        for key in ("sftkit_float32", "sftkit_bfloat16", "composable_sft"):
            f = r[key]
            ratio = f"{f['vs_entropy_plus_values']:.4f}" if "vs_entropy_plus_values" in f else "-"
            print(f"{key:<26}{f['bytes'] / 1e6:>9.2f}{f['bytes_per_nnz']:>8.3f}{ratio:>13}{f['save_s']:>9.2f}{f['load_s']:>9.2f}")
        q = r["ratios_vs_composable_sft"]
        print(f"sftkit fp32 / composable-sft: size {q['size']:.3f}x, save time {q['save_time']:.3f}x, load time {q['load_time']:.3f}x")
    c = results["largest_tensor_codec"]
    print(f"\nlargest index set ({c['tensor']}, {c['nnz']:,} nnz, {c['encoding']}): "
          f"encode {c['encode_s']:.3f} s, decode {c['decode_s']:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small vocabulary and 2 layers (seconds, for CI)")
    parser.add_argument("--output", type=Path, default=None, help=f"default {RESULTS} (format-quick.json with --quick)")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    shapes = base_shapes(args.quick)
    total = sum(math.prod(s) for s in shapes.values())
    full_total = sum(math.prod(s) for s in base_shapes(False).values()) if args.quick else total
    results: dict[str, Any] = {
        "quick": args.quick,
        "params": total,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
        "deltas": {},
    }
    with tempfile.TemporaryDirectory(prefix="sftkit-bench-") as tmp:
        for seed, (label, k_full) in enumerate(FULL_K.items()):
            k = round(k_full * total / full_total)
            sft = random_sft(shapes, k, seed, label)
            results["deltas"][label] = measure(sft, Path(tmp), label)
            if label == "task":
                results["largest_tensor_codec"] = largest_tensor_codec(sft)
            del sft
            gc.collect()
    print_table(results)
    output = args.output or (RESULTS.with_name("format-quick.json") if args.quick else RESULTS)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
