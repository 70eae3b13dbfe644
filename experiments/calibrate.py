"""Calibrate the task SFT's learning rate and length on the *source* validation split only.

Trains one task SFT (LT-SFT mask, no language SFT) on a run folder's prepared source data and prints
the validation scores after each phase — the only numbers a preset choice may look at::

    python -m experiments.calibrate --run runs/xling --model-dir /work/models/me5-small \\
        --dataset nusax --learning-rate 1e-4 --steps 100

For AmericasNLI, ``--anli-dev aym,gn,quy --data-dir ../shared/data`` also scores the task SFT (no
language SFT) on the AmericasNLI *dev* files, with the predicted-label counts; dev is where a choice
about the transfer itself (e.g. the class balance of SICK) may be made, never test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    parser.add_argument("--max-seq-length", type=int, default=96)
    parser.add_argument("--head-warmup-steps", type=int, default=0, help="train the classifier head alone first")
    parser.add_argument("--head-learning-rate", type=float, default=None)
    parser.add_argument("--anli-dev", default="", help="AmericasNLI languages whose dev file to score (anli only)")
    parser.add_argument("--data-dir", type=Path, help="the shared data folder (for --anli-dev)")
    args = parser.parse_args(argv)
    dev_languages = [code for code in args.anli_dev.split(",") if code]
    if dev_languages and (args.dataset != "anli" or args.data_dir is None):
        print("Error: --anli-dev needs --dataset anli and --data-dir (the shared data folder)", file=sys.stderr)
        return 1
    from experiments.datasets import Layout

    missing = [Layout(args.data_dir).anli_split(code, "dev") for code in dev_languages] if dev_languages else []
    missing = [path for path in missing if not path.is_file()]
    if missing:
        print(f"Error: {missing[0]} is missing; --anli-dev names AmericasNLI dev files under --data-dir", file=sys.stderr)
        return 1
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
        warmup_steps=args.steps // 10, batch_size=16, max_seq_length=args.max_seq_length, seed=args.seed, freeze_embeddings=True,
        group_by_length=True, head_warmup_steps=args.head_warmup_steps, head_learning_rate=args.head_learning_rate,
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
                      "seed": args.seed, "head_warmup_steps": args.head_warmup_steps,
                      "train_rows": (data / "train.tsv").read_text(encoding="utf-8").count("\n") - 1,
                      "seconds": round(time.perf_counter() - started, 1), "validation": evaluation}, indent=1))
    if not dev_languages:
        return 0
    try:
        for language, scores in _anli_dev(args.data_dir, dev_languages, args.model_dir, sft, args.run).items():
            print(json.dumps({"anli_dev": language, **scores}))
    except SFTError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


def _anli_dev(data_dir: Path, languages: Sequence[str], model_dir: Path, sft: Any, run: Path) -> dict[str, Any]:
    """Accuracy, macro-F1 and predicted-label counts of ``sft`` (alone) on each language's AmericasNLI dev file."""
    from collections import Counter

    from experiments.datasets import Layout, write_anli_split
    from sftkit.training import evaluate

    scores: dict[str, Any] = {}
    for language in languages:
        dev = run / "calibration" / f"dev-{language}.tsv"
        write_anli_split(Layout(data_dir), language, "dev", dev)
        result = evaluate(str(model_dir), sft, test_file=dev, text_column="premise", text_pair_column="hypothesis",
                          label_column="label", batch_size=64)
        scores[language] = {"accuracy": round(result.accuracy, 4), "macro_f1": round(result.macro_f1, 4), "n": result.n,
                            "predicted": dict(Counter(result.label_names[p] for p in result.predictions))}
    return scores


if __name__ == "__main__":
    raise SystemExit(main())
