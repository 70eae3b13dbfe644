"""Benchmark of the SFT training engine: phase-2 memory (K-vectors vs dense Adam) and step times.

Each configuration runs in its own subprocess so its peak resident memory is its own:

* ``phase1``           dense fine-tuning of every eligible weight + head (AdamW), masked-only MLM head;
* ``phase1-full-logits`` the same with the MLM head applied at every position (the standard loss);
* ``phase2-sparse``    sftkit's phase 2: flat K-vectors scattered into frozen weights (AdamW on K entries);
* ``phase2-dense-adam`` the naive phase 2: dense weights trained with a gradient mask (AdamW keeps a
  dense gradient and two dense moments for every frozen entry; composable-sft style).

Reported per configuration: median step time, peak RSS increase over the loaded model (CPU: VmHWM after resetting it via /proc/self/clear_refs), or
``torch.cuda.max_memory_allocated`` increase (CUDA), and the exact bytes held in gradients and
optimizer state after a step. Usage::

    python benchmarks/bench_training.py [--vocab 30000 --hidden 256 --layers 4 --density 0.05 --steps 6]

Prints a table and writes ``benchmarks/results/training.json``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

MODES = ("phase1", "phase1-full-logits", "phase2-sparse", "phase2-dense-adam")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> int:
    """Return freed heap to the OS, reset the peak-RSS counter (Linux), and give the current RSS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")
    return _status_bytes("VmRSS")


def _state_bytes(params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    state = sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
    )
    return grads, state


def run_mode(args: argparse.Namespace) -> dict[str, object]:
    from sftkit.testing import tiny_masked_lm
    from sftkit.training.sparse import eligible_parameters, module_name
    from sftkit.training.trainer import SFTModule

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = tiny_masked_lm(
        seed=0, vocab_size=args.vocab, hidden_size=args.hidden, layers=args.layers,
        intermediate_size=4 * args.hidden, max_position_embeddings=args.length + 4,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    ).to(device)
    model.lm_head.decoder.weight = torch.nn.Parameter(model.lm_head.decoder.weight.detach().clone(), requires_grad=False)
    eligible = eligible_parameters(model, exclude=("*LayerNorm*", "*layer_norm*"))
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("lm_head.") and "decoder" not in name)
    for info in eligible.values():
        info.parameter.requires_grad_(True)
    eligible_numel = sum(i.parameter.numel() for i in eligible.values())
    k = round(args.density * eligible_numel)
    module = SFTModule(
        model, kind="language", masked_only_mlm_head=args.mode != "phase1-full-logits",
        eligible_names={n: module_name(model, n) for n in eligible},
    )
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, args.vocab, (args.batch, args.length), generator=gen)
    labels = torch.where(torch.rand(ids.shape, generator=gen) < 0.15, ids, torch.full_like(ids, -100))
    batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}

    masks: dict[str, torch.Tensor] = {}
    if args.mode.startswith("phase2"):
        scores = {n: torch.rand(i.parameter.shape, generator=gen) for n, i in eligible.items()}
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        threshold = torch.topk(flat, k).values[-1]
        masks = {n: torch.nonzero(s.reshape(-1) >= threshold).reshape(-1).to(device) for n, s in scores.items()}
        del scores, flat
    if args.mode == "phase2-sparse":
        module.sparsify(masks)
    elif args.mode == "phase2-dense-adam":
        for name, info in eligible.items():
            keep = torch.zeros(info.parameter.numel(), dtype=info.parameter.dtype, device=device)
            keep[masks[name]] = 1
            info.parameter.register_hook(lambda g, keep=keep.view_as(info.parameter): g * keep)

    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _reset_peak_rss()
    times = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        loss = module(**batch)["loss"]
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        grads, state = _state_bytes(params, optimizer)
        optimizer.zero_grad(set_to_none=True)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else _status_bytes("VmHWM")) - baseline
    return {
        "mode": args.mode,
        "step_s": statistics.median(times[1:]),
        "peak_increase_mib": peak / 2**20,
        "grad_mib": grads / 2**20,
        "optimizer_state_mib": state / 2**20,
        "trainable": sum(p.numel() for p in params),
        "eligible": eligible_numel,
        "k": k,
        "loss": float(loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=30000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "training.json"))
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return

    rows = []
    for mode in MODES:
        command = [sys.executable, os.path.abspath(__file__), "--mode", mode] + [
            f"--{k}={getattr(args, k)}" for k in ("vocab", "hidden", "layers", "batch", "length", "density", "steps", "device")
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    unit = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "peak RSS"
    print(f"model: vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers; eligible {rows[0]['eligible']:,} entries; "
          f"K = {rows[2]['k']:,} (density {args.density}); batch {args.batch}x{args.length}; device {args.device}")
    header = f"{'mode':<20} {'step s':>8} {'peak +MiB':>10} {'grad MiB':>9} {'optim MiB':>10} {'trainable':>11}"
    print(header + f"   (peak = {unit} increase over the loaded model)")
    for r in rows:
        print(f"{r['mode']:<20} {r['step_s']:>8.3f} {r['peak_increase_mib']:>10.1f} {r['grad_mib']:>9.1f} "
              f"{r['optimizer_state_mib']:>10.1f} {r['trainable']:>11,}")
    by_mode = {r["mode"]: r for r in rows}
    sparse, dense = by_mode["phase2-sparse"], by_mode["phase2-dense-adam"]
    summary = {
        "phase2_peak_ratio_sparse_over_dense": sparse["peak_increase_mib"] / max(dense["peak_increase_mib"], 1e-9),
        "phase2_state_ratio_sparse_over_dense": (sparse["grad_mib"] + sparse["optimizer_state_mib"])
        / max(dense["grad_mib"] + dense["optimizer_state_mib"], 1e-9),
        "step_time_phase2_over_phase1": sparse["step_s"] / by_mode["phase1"]["step_s"],
        "step_time_full_logits_over_masked_only": by_mode["phase1-full-logits"]["step_s"] / by_mode["phase1"]["step_s"],
    }
    for key, value in summary.items():
        print(f"{key}: {value:.3f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    result = {
        "settings": {k: getattr(args, k) for k in ("vocab", "hidden", "layers", "batch", "length", "density", "steps", "device")},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "rows": rows,
        "summary": summary,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
