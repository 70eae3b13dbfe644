"""Calibrate the task SFT's learning rate and length on the *source* validation split only.

Trains one task SFT (LT-SFT mask, no language SFT) on a run folder's prepared source data and prints
the validation scores after each phase — the only numbers a preset choice may look at::

    python -m experiments.calibrate --run runs/xling --model-dir /work/models/me5-small \\
        --dataset nusax --learning-rate 1e-4 --steps 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sftkit.errors import SFTError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder of experiments.xling (its data/ is used)")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--dataset", choices=("nusax", "anli"), required=True)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=100, help="steps of each phase")
    parser.add_argument("--num-params", type=int, default=3_250_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    from experiments.xling import ANLI_LABELS
    from sftkit.training import SFTTrainingConfig, train_task_sft

    data = args.run / "data" / "tasks" / args.dataset
    if not (data / "train.tsv").is_file():
        print(f"Error: {data}/train.tsv is missing; run experiments.xling with --out {args.run} first", file=sys.stderr)
        return 1
    columns = (
        {"task_type": "classification", "text_column": "text", "label_column": "label"}
        if args.dataset == "nusax"
        else {"task_type": "pair-classification", "text_column": "premise", "text_pair_column": "hypothesis",
              "label_column": "label", "labels": ANLI_LABELS}
    )
    config = SFTTrainingConfig(
        num_params=args.num_params, full_steps=args.steps, sparse_steps=args.steps, learning_rate=args.learning_rate,
        warmup_steps=args.steps // 10, batch_size=16, max_seq_length=96, seed=args.seed, freeze_embeddings=True,
        group_by_length=True,
    )
    started = time.perf_counter()
    try:
        sft = train_task_sft(str(args.model_dir), data / "train.tsv", validation_file=data / "valid.tsv", config=config,
                             task=args.dataset, progress=False, **columns)
    except SFTError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    evaluation = sft.metadata.hyperparameters.get("evaluation", {})
    print(json.dumps({"dataset": args.dataset, "learning_rate": args.learning_rate, "steps": args.steps,
                      "seconds": round(time.perf_counter() - started, 1), "validation": evaluation}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
