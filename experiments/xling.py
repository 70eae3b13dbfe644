"""Cross-lingual transfer with composable sparse fine-tunings: NusaX sentiment and AmericasNLI.

One command runs the whole protocol (docs/results.md)::

    python -m experiments.xling --data-dir ../shared/data --model-dir /work/models/me5-small \\
        --nusax-languages javanese,sundanese --anli-languages aym,gn,quy \\
        --methods zero-shot,lt-sft,deft-x,deft-x-rank,deft-x-nores,dense --seeds 1,2,3 \\
        --preset default --out runs/xling
    python -m experiments.xling report --out runs/xling

Methods: (a) ``zero-shot`` — a task SFT trained without any language SFT, evaluated alone;
(b) ``lt-sft``; (c) ``deft-x`` (energy 0.9 + residual); (d) ``deft-x-rank`` (fixed rank + residual);
(e) ``deft-x-nores`` (energy 0.9, no residual); (f) ``dense`` — full fine-tuning on the source task,
evaluated zero-shot. For (b)–(e) the task SFT is trained with the source language SFT of the same
method underneath and evaluated as θ0 + φ_L(target) + φ_T.

Resumable: every language SFT, task SFT, phase-1 cache and score is a file written atomically under
``--out``; a rerun skips what exists, and the unit in flight continues from its Trainer checkpoint.
Phase 1 of a language SFT does not depend on the mask, so it runs once per language and seed and the
other mask methods start from the cached θ1 (the same computation, not an approximation).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from experiments import datasets as ds
from experiments.presets import Preset, get_preset
from sftkit.errors import ConfigError, SFTError

logger = logging.getLogger("experiments.xling")

METHODS = ("zero-shot", "lt-sft", "deft-x", "deft-x-rank", "deft-x-nores", "dense")
METHOD_LABELS = {
    "zero-shot": "(a) task SFT only, zero-shot",
    "lt-sft": "(b) LT-SFT",
    "deft-x": "(c) DeFT-X, energy 0.9",
    "deft-x-rank": "(d) DeFT-X, fixed rank",
    "deft-x-nores": "(e) DeFT-X without residual",
    "dense": "(f) dense fine-tuning, zero-shot",
}
SPARSE_WITH_LANGUAGE = ("lt-sft", "deft-x", "deft-x-rank", "deft-x-nores")
DATASETS = ("nusax", "anli")
METRIC = {"nusax": "macro_f1", "anli": "accuracy"}
ANLI_LABELS = ("contradiction", "entailment", "neutral")
RESULT_FREE = ("logging_steps", "save_steps", "eval_batch_size", "notes")
"""Preset fields that do not change any number; a folder may be resumed with other values."""


@dataclass(frozen=True)
class RunSpec:
    """What one invocation asks for (the preset decides how)."""

    data_dir: Path
    out: Path
    preset: Preset
    model_dir: Path | None = None
    nusax_languages: tuple[str, ...] = ()
    anli_languages: tuple[str, ...] = ()
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (1,)
    source: str = "english"
    keep_phase1: bool = False

    def identity(self) -> dict[str, Any]:
        """What must stay the same for an output folder to be resumed (languages, methods, seeds may grow)."""
        preset = {k: v for k, v in self.preset.to_dict().items() if k not in RESULT_FREE}
        return {
            "preset": preset,
            "model_dir": str(self.model_dir) if self.model_dir and self.preset.tiny_model is None else None,
            "source": self.source,
        }


# -------------------------------------------------------------------------------------------- helpers


def write_json(path: Path, data: Any) -> None:
    ds.atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def sft_config(preset: Preset, method: str, kind: str, seed: int, checkpoint_dir: Path | None = None) -> Any:
    """The :class:`SFTTrainingConfig` of one SFT: the mask method's settings on the preset's phase settings."""
    from sftkit.training import SFTTrainingConfig

    phase = preset.language if kind == "language" else preset.task
    mask: dict[str, Any] = {"method": "lt-sft"}
    if method == "deft-x":
        mask = {"method": "deft-x", "denoise_energy": preset.deft_energy, "residual_keep": preset.residual_keep}
    elif method == "deft-x-rank":
        mask = {"method": "deft-x", "denoise_rank": preset.deft_rank, "residual_keep": preset.residual_keep}
    elif method == "deft-x-nores":
        mask = {"method": "deft-x", "denoise_energy": preset.deft_energy, "residual_keep": 0.0}
    return SFTTrainingConfig(
        **mask,
        num_params=preset.num_params,
        density=preset.density if preset.num_params is None else None,
        full_steps=phase.full_steps,
        sparse_steps=phase.sparse_steps,
        full_epochs=phase.full_epochs,
        sparse_epochs=phase.sparse_epochs,
        learning_rate=phase.learning_rate,
        head_warmup_steps=phase.head_warmup_steps,
        head_learning_rate=phase.head_learning_rate,
        warmup_steps=phase.warmup_steps,
        group_by_length=phase.group_by_length,
        batch_size=phase.batch_size,
        max_seq_length=phase.max_seq_length,
        seed=seed,
        freeze_embeddings=kind == "task" and preset.task_freeze_embeddings,
        logging_steps=preset.logging_steps,
        save_steps=preset.save_steps,
        save_total_limit=1,
        checkpoint_dir=str(checkpoint_dir) if checkpoint_dir is not None else None,
        resume=checkpoint_dir is not None and (checkpoint_dir / "sft_state.json").is_file(),
    )


@contextmanager
def _timed(path: Path, stage: str, **details: Any) -> Iterator[None]:
    """Record the wall-clock and CPU time of a unit of work (only when it finishes).

    CPU seconds (all threads of this process) are what a shared machine cannot inflate: on an idle
    machine with C cores, wall ≈ CPU / C when torch keeps every core busy.
    """
    started, cpu = time.perf_counter(), _cpu_seconds()
    yield
    write_json(path, {
        "stage": stage, "seconds": round(time.perf_counter() - started, 3),
        "cpu_seconds": round(_cpu_seconds() - cpu, 3), "load_average": list(os.getloadavg()), **details,
    })


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class PhaseTimer:
    """Wall-clock and CPU seconds and optimizer steps of each training phase (a Trainer callback)."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self
        self.phases: dict[str, dict[str, float]] = {}

        class _Callback(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
                timer._start = (time.perf_counter(), _cpu_seconds(), int(state.global_step))

            def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
                wall, cpu, step = timer._start
                steps = int(state.global_step) - step
                timer.phases[getattr(model, "phase", "?")] = {
                    "steps": steps, "seconds": round(time.perf_counter() - wall, 3),
                    "cpu_seconds": round(_cpu_seconds() - cpu, 3),
                }

        self.callback = _Callback()
        self._start = (0.0, 0.0, 0)


def _dense_saver(path: Path) -> Any:
    """A Trainer callback that keeps the dense phase-1 classifier of the zero-shot task run: method (f)."""
    import safetensors.torch
    from transformers import TrainerCallback

    class DenseSaver(TrainerCallback):
        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if model is None or getattr(model, "phase", None) != "full" or not state.is_world_process_zero:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            weights = {n: t.detach().to("cpu").contiguous() for n, t in model.model.state_dict().items()}
            tmp = path.with_name(path.name + ".tmp")
            safetensors.torch.save_file(weights, str(tmp))
            tmp.replace(path)

    return DenseSaver()


# --------------------------------------------------------------------------------------------- runner


class UnitBusy(Exception):
    """A unit of work is held by another process sharing the run folder."""


class Runner:
    """Builds every unit of the protocol on demand, from the cache when it is there."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.preset = spec.preset
        self.out = spec.out.resolve()  # the manifest records absolute file paths
        self.layout = ds.Layout(spec.data_dir)
        self.manifest: dict[str, Any] = {}
        self._base: str | None = None
        self._tokenizer: Any = None
        self.poll_seconds = 10.0
        """How long to wait when every remaining unit is held by another process."""

    # ---- layout of the output folder
    def lang_path(self, code: str, method: str, seed: int) -> Path:
        return self.out / "sfts" / "language" / code / method / f"seed{seed}.safetensors"

    def task_path(self, dataset: str, method: str, seed: int) -> Path:
        return self.out / "sfts" / "task" / dataset / method / f"seed{seed}.safetensors"

    def score_path(self, dataset: str, method: str, target: str, seed: int) -> Path:
        return self.out / "scores" / dataset / method / target / f"seed{seed}.json"

    def phase1_dir(self, code: str, seed: int) -> Path:
        return self.out / "cache" / "phase1" / code / f"seed{seed}"

    def dense_path(self, dataset: str, seed: int) -> Path:
        return self.out / "cache" / "dense" / dataset / f"seed{seed}.safetensors"

    def checkpoint_dir(self, unit: str) -> Path:
        return self.out / "checkpoints" / unit

    def timing_path(self, unit: str) -> Path:
        return self.out / "timings" / f"{unit}.json"

    # ---- setup
    def check(self) -> None:
        unknown = [m for m in self.spec.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"--methods: {unknown[0]!r} is not one of {', '.join(METHODS)}")
        if not self.spec.nusax_languages and not self.spec.anli_languages:
            raise ConfigError("give --nusax-languages and/or --anli-languages (at least one target language)")
        if not self.spec.data_dir.is_dir():
            raise ConfigError(f"--data-dir {self.spec.data_dir} does not exist; point it at the shared data folder")
        if self.spec.nusax_languages:
            self.layout.check_nusax([self.spec.source, *self.spec.nusax_languages])
        self.layout.check_anli(self.spec.anli_languages)
        if self.preset.tiny_model is None and (self.spec.model_dir is None or not self.spec.model_dir.is_dir()):
            raise ConfigError(f"--model-dir {self.spec.model_dir} is not a model directory; build one (see docs/results.md)")
        record = self.out / "run.json"
        if record.is_file():
            previous = read_json(record).get("identity") or {}
            for key in RESULT_FREE:
                previous.get("preset", {}).pop(key, None)
            if previous != json.loads(json.dumps(self.spec.identity())):
                raise ConfigError(
                    f"{record}: this folder was run with another preset, model or source; use a new --out or the same settings"
                )
        write_json(record, {"identity": self.spec.identity(), "last_command": sys.argv})

    def source_code(self, dataset: str) -> str:
        return ds.nusax_code(self.spec.source) if dataset == "nusax" else "eng"

    def targets(self, dataset: str) -> list[str]:
        if dataset == "nusax":
            return [ds.nusax_code(f) for f in self.spec.nusax_languages]
        return list(self.spec.anli_languages)

    def datasets(self) -> list[str]:
        return [d for d in DATASETS if self.targets(d)]

    def prepare_data(self) -> dict[str, Any]:
        """Filtered language text and the task files (train/valid/test) under ``out/data`` (cached)."""
        path = self.out / "data" / "manifest.json"
        manifest: dict[str, Any] = read_json(path) if path.is_file() else {"text": {}, "tasks": {}}
        leak: ds.LeakageFilter | None = None
        wanted: dict[str, list[ds.TextSource]] = {}
        if self.spec.nusax_languages:
            for folder in [self.spec.source, *self.spec.nusax_languages]:
                code = ds.nusax_code(folder)
                wanted[code] = (
                    ds.english_text_sources(self.layout) if folder == "english" else ds.nusax_text_sources(self.layout, folder)
                )
        if self.spec.anli_languages:
            wanted.setdefault("eng", ds.english_text_sources(self.layout))
            for language in self.spec.anli_languages:
                wanted[language] = ds.anli_text_sources(self.layout, language)
        for code, sources in wanted.items():
            if code in manifest["text"]:
                continue
            if leak is None:
                leak = ds.build_leakage_filter(self.layout)
                manifest["leakage_filter"] = {"sentences": len(leak.sentences), "sources": leak.sources}
            output = self.out / "data" / "text" / f"{code}.txt"
            manifest["text"][code] = ds.write_language_text(
                sources, output, leak, root=self.layout.root, max_lines=self.preset.max_text_lines
            )
            write_json(path, manifest)
        tasks = manifest["tasks"]
        folder = self.out / "data" / "tasks"
        p = self.preset
        if self.spec.nusax_languages and "nusax" not in tasks:
            tasks["nusax"] = {
                "train": str(folder / "nusax" / "train.tsv"), "valid": str(folder / "nusax" / "valid.tsv"), "test": {},
                "rows": {
                    "train": ds.write_nusax_split(self.layout, self.spec.source, "train", folder / "nusax" / "train.tsv", p.nusax_train_rows),
                    "valid": ds.write_nusax_split(self.layout, self.spec.source, "valid", folder / "nusax" / "valid.tsv", p.valid_rows),
                },
            }
        for language in self.spec.nusax_languages:
            code = ds.nusax_code(language)
            if code not in tasks["nusax"]["test"]:
                test = folder / "nusax" / f"test-{code}.tsv"
                rows = ds.write_nusax_split(self.layout, language, "test", test, p.test_rows)
                tasks["nusax"]["test"][code] = {"file": str(test), "rows": rows}
        if self.spec.anli_languages and "anli" not in tasks:
            tasks["anli"] = {
                "train": str(folder / "anli" / "train.tsv"), "valid": str(folder / "anli" / "valid.tsv"), "test": {},
                "rows": {
                    "train": ds.write_sick_split(
                        self.layout, ("TRAIN",), folder / "anli" / "train.tsv", p.sick_train_rows, balance=p.sick_balance
                    ),
                    "valid": ds.write_sick_split(self.layout, ("TRIAL",), folder / "anli" / "valid.tsv", p.valid_rows),
                },
            }
        for language in self.spec.anli_languages:
            if language not in tasks["anli"]["test"]:
                test = folder / "anli" / f"test-{language}.tsv"
                rows = ds.write_anli_split(self.layout, language, "test", test, p.test_rows)
                tasks["anli"]["test"][language] = {"file": str(test), "rows": rows}
        write_json(path, manifest)
        self.manifest = manifest
        return manifest

    def base(self) -> str:
        """The base model directory: ``--model-dir``, or a tiny model built once in ``out/base`` (smoke)."""
        if self._base is not None:
            return self._base
        if self.preset.tiny_model is None:
            self._base = str(self.spec.model_dir)
            return self._base
        target = self.out / "base"
        if not (target / "config.json").is_file():
            self._build_tiny_base(target)
        self._base = str(target)
        return self._base

    def _build_tiny_base(self, target: Path) -> None:
        import torch
        from transformers import XLMRobertaForMaskedLM

        from sftkit.testing import tiny_config
        from sftkit.training.tokenizer import train_tokenizer

        tiny = self.preset.tiny_model or {}
        texts: list[str] = []
        for info in self.manifest["text"].values():
            texts += Path(info["file"]).read_text(encoding="utf-8").splitlines()
        for task in self.manifest["tasks"].values():
            for row in Path(task["train"]).read_text(encoding="utf-8").splitlines()[1:]:
                texts += row.split("\t")[:-1]
        longest = max(self.preset.language.max_seq_length, self.preset.task.max_seq_length)
        tokenizer = train_tokenizer(texts, vocab_size=tiny.get("vocab_size", 400), model_max_length=longest)
        torch.manual_seed(0)
        config = tiny_config(
            vocab_size=len(tokenizer), hidden_size=tiny.get("hidden_size", 32), layers=tiny.get("layers", 2),
            max_position_embeddings=longest + 2,
        )
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        XLMRobertaForMaskedLM(config).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.replace(target)

    # ---- units
    def language_sft(self, code: str, method: str, seed: int) -> Path:
        """φ_L for ``code`` with ``method``'s mask; phase 1 shared between mask methods (``phase1_cache``)."""
        seed = self.language_seed(seed)
        output = self.lang_path(code, method, seed)
        if output.is_file():
            return output
        # One claim per language and seed: its mask methods share (and must not race for) phase 1.
        with self._claim(f"language-{code}-seed{seed}"):
            return self._language_sft(code, method, seed)

    def _language_sft(self, code: str, method: str, seed: int) -> Path:
        output = self.lang_path(code, method, seed)
        if output.is_file():
            return output
        unit = f"language-{code}-{method}-seed{seed}"
        checkpoints = self.checkpoint_dir(unit)
        cache = self.phase1_dir(code, seed)
        text = self.manifest["text"][code]["file"]
        config = sft_config(self.preset, method, "language", seed, checkpoints)
        shared = (cache / "phase1.json").is_file()
        timer = PhaseTimer()
        logger.info("language SFT %s (%s, seed %d)%s", code, method, seed, " from the cached phase 1" if shared else "")
        stage = "language SFT phase 2 (phase 1 cached)" if shared else "language SFT phases 1+2"
        details = {"language": code, "method": method, "seed": seed, "phases": timer.phases}
        with _timed(self.timing_path(unit), stage, **details):
            from sftkit.training import train_language_sft

            train_language_sft(
                self.base(), [text], language=code, config=config, output=output, progress=False,
                callbacks=[timer.callback], phase1_cache=cache,
            )
        shutil.rmtree(checkpoints, ignore_errors=True)
        self._drop_phase1_if_done(code, seed)
        return output

    def language_seed(self, seed: int) -> int:
        """The seed whose language SFTs serve ``seed`` (the first seed's, when the preset shares them)."""
        return self.preset.language_seed if self.preset.language_seed is not None else seed

    def _drop_phase1_if_done(self, code: str, seed: int) -> None:
        if self.spec.keep_phase1:
            return
        wanted = [m for m in SPARSE_WITH_LANGUAGE if m in self.spec.methods]
        if all(self.lang_path(code, m, seed).is_file() for m in wanted):
            shutil.rmtree(self.phase1_dir(code, seed), ignore_errors=True)

    def _task_files(self, dataset: str) -> dict[str, Any]:
        task = self.manifest["tasks"][dataset]
        if dataset == "nusax":
            columns = {"task_type": "classification", "text_column": "text", "label_column": "label"}
        else:
            columns = {
                "task_type": "pair-classification", "text_column": "premise", "text_pair_column": "hypothesis",
                "label_column": "label", "labels": ANLI_LABELS,
            }
        return {"train": task["train"], "valid": task["valid"], **columns}

    def task_sft(self, dataset: str, method: str, seed: int) -> Path:
        """φ_T for ``dataset``: over the source language SFT of ``method`` (none for zero-shot / dense)."""
        output_method = "zero-shot" if method == "dense" else method
        output = self.task_path(dataset, output_method, seed)
        dense = self.dense_path(dataset, seed)
        needs_dense = "dense" in self.spec.methods and output_method == "zero-shot"
        if output.is_file() and (dense.is_file() or not needs_dense):
            return output
        unit = f"task-{dataset}-{output_method}-seed{seed}"
        with self._claim(unit):
            if output.is_file() and (dense.is_file() or not needs_dense):
                return output
            return self._task_sft(dataset, method, output_method, seed, unit, needs_dense)

    def _task_sft(self, dataset: str, method: str, output_method: str, seed: int, unit: str, needs_dense: bool) -> Path:
        output = self.task_path(dataset, output_method, seed)
        dense = self.dense_path(dataset, seed)
        checkpoints = self.checkpoint_dir(unit)
        if output.is_file():  # the SFT is there but (f) needs phase 1 again: retrain from scratch
            shutil.rmtree(checkpoints, ignore_errors=True)
        mask_method = "lt-sft" if output_method == "zero-shot" else method
        config = sft_config(self.preset, mask_method, "task", seed, checkpoints)
        language = None
        if output_method != "zero-shot":
            language = self.language_sft(self.source_code(dataset), method, seed)
        files = self._task_files(dataset)
        logger.info("task SFT %s (%s, seed %d)", dataset, output_method, seed)
        timer = PhaseTimer()
        callbacks = [timer.callback] + ([_dense_saver(dense)] if needs_dense else [])
        details = {"dataset": dataset, "method": output_method, "seed": seed, "phases": timer.phases}
        with _timed(self.timing_path(unit), "task SFT phases 1+2", **details):
            self._train_task(dataset, files, config, language, output, callbacks)
        shutil.rmtree(checkpoints, ignore_errors=True)
        return output

    def _train_task(
        self, dataset: str, files: dict[str, Any], config: Any, language: Path | None, output: Path, callbacks: list[Any]
    ) -> None:
        from sftkit.training import train_task_sft

        train_task_sft(
            self.base(), files["train"], validation_file=files["valid"], task_type=files["task_type"],
            text_column=files["text_column"], text_pair_column=files.get("text_pair_column"),
            label_column=files["label_column"], labels=files.get("labels"), language_sft=language,
            language=self.source_code(dataset), config=config, task=dataset, output=output, progress=False,
            callbacks=callbacks,
        )

    def score(self, dataset: str, method: str, target: str, seed: int) -> dict[str, Any]:
        path = self.score_path(dataset, method, target, seed)
        if path.is_file():
            return read_json(path)
        with self._claim(f"score-{dataset}-{method}-{target}-seed{seed}"):
            if path.is_file():
                return read_json(path)
            return self._score(dataset, method, target, seed)

    def _score(self, dataset: str, method: str, target: str, seed: int) -> dict[str, Any]:
        path = self.score_path(dataset, method, target, seed)
        task = self.task_sft(dataset, method, seed)
        language = self.language_sft(target, method, seed) if method in SPARSE_WITH_LANGUAGE else None
        test = self.manifest["tasks"][dataset]["test"][target]["file"]
        files = self._task_files(dataset)
        unit = f"evaluate-{dataset}-{method}-{target}-seed{seed}"
        with _timed(self.timing_path(unit), "evaluation", dataset=dataset, method=method, target=target, seed=seed):
            if method == "dense":
                result = self._evaluate_dense(dataset, seed, task, test, files)
            else:
                from sftkit.training import evaluate

                result = evaluate(
                    self.base(), task, language_sft=language, test_file=test, text_column=files["text_column"],
                    text_pair_column=files.get("text_pair_column"), label_column=files["label_column"],
                    batch_size=self.preset.eval_batch_size,
                )
        record = {
            "dataset": dataset, "method": method, "target": target, "seed": seed, "metric": METRIC[dataset],
            "value": float(getattr(result, METRIC[dataset])), "accuracy": float(result.accuracy),
            "macro_f1": float(result.macro_f1), "n": int(result.n),
            "task_sft": str(task.relative_to(self.out)),
            "language_sft": str(language.relative_to(self.out)) if language is not None else None,
            "preset": self.preset.name,
        }
        write_json(path, record)
        return record

    def _evaluate_dense(self, dataset: str, seed: int, task: Path, test: str, files: dict[str, Any]) -> Any:
        """Score the phase-1 dense classifier of the zero-shot task run (method f)."""
        import safetensors.torch
        import torch

        from sftkit.format import read_metadata
        from sftkit.models import load_model, load_tokenizer
        from sftkit.training import classification_metrics
        from sftkit.training import data as datamod

        label_names = read_metadata(str(task)).label_names
        model = load_model(self.base(), for_task="sequence-classification", label_names=label_names)
        model.load_state_dict(safetensors.torch.load_file(str(self.dense_path(dataset, seed))), strict=True)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device).eval()
        tokenizer = load_tokenizer(self.base())
        columns = {k: files.get(k) for k in ("text_column", "text_pair_column", "label_column")}
        data = datamod.read_labelled(test, what="test", **columns)
        tokens = datamod.classification_dataset(tokenizer, data, label_names, max_seq_length=self.preset.task.max_seq_length)
        predictions: list[int] = []
        references: list[int] = []
        with torch.inference_mode():
            for _, batch in datamod.batches(tokens, datamod.classification_collator(tokenizer), self.preset.eval_batch_size):
                labels = batch.pop("labels")
                predictions += model(**{k: v.to(device) for k, v in batch.items()}).logits.argmax(-1).tolist()
                references += labels.tolist()
        return classification_metrics(predictions, references, label_names)

    # ---- the whole protocol
    def run(self) -> list[dict[str, Any]]:
        self.check()
        started = time.perf_counter()
        with _timed(self.out / "timings" / "prepare-data.json", "data preparation"):
            self.prepare_data()
        wanted = [
            (dataset, method, target, seed)
            for seed in self.spec.seeds
            for dataset in self.datasets()
            for method in self.spec.methods
            for target in self.targets(dataset)
        ]
        records: dict[tuple[str, str, str, int], dict[str, Any]] = {}
        pending = list(wanted)
        while pending:
            busy = []
            for key in pending:
                try:
                    record = self.score(*key)
                except UnitBusy:
                    busy.append(key)  # another process of this run is on it (or on what it needs)
                    continue
                logger.info("%s %s %s seed %d: %s = %.4f", *key, record["metric"], record["value"])
                records[key] = record
            if busy and len(busy) == len(pending):
                time.sleep(self.poll_seconds)
            pending = busy
        logger.info("done in %.1f s (this invocation)", time.perf_counter() - started)
        return [records[key] for key in wanted]

    @contextmanager
    def _claim(self, unit: str) -> Iterator[None]:
        """Hold ``unit`` for this process, so several processes can share one run folder.

        Each process takes the units nobody holds and comes back to the others; a crashed holder
        releases its claim with its file descriptor (an OS file lock, not a marker file).
        """
        from filelock import FileLock, Timeout

        (self.out / "locks").mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.out / "locks" / f"{unit}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise UnitBusy(unit) from None
        try:
            yield
        finally:
            lock.release()


# ------------------------------------------------------------------------------------------------ CLI


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.xling",
        description="Cross-lingual transfer with LT-SFT / DeFT-X (NusaX, AmericasNLI). "
        "`python -m experiments.xling report --out DIR` writes the report.",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with nusax/, americasnli/, … (../shared/data)")
    parser.add_argument("--model-dir", type=Path, default=None, help="base model directory (not needed for --preset smoke)")
    parser.add_argument("--nusax-languages", type=_csv, default=(), help="NusaX folders, e.g. javanese,sundanese")
    parser.add_argument("--anli-languages", type=_csv, default=(), help="AmericasNLI files, e.g. aym,gn,quy")
    parser.add_argument("--methods", type=_csv, default=METHODS, help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--seeds", type=_csv, default=("1",), help="comma list of integers")
    parser.add_argument("--preset", default="default", help="smoke | default | full")
    parser.add_argument("--source", default="english", help="NusaX source language folder (english or indonesian)")
    parser.add_argument("--out", type=Path, default=Path("runs/xling"))
    parser.add_argument("--keep-phase1", action="store_true", help="keep the phase-1 θ1 caches (≈ 4 bytes × parameters each)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
        help="override a preset field, e.g. --set language.full_steps=20 --set num_params=1000000 (repeatable)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def apply_overrides(preset: Preset, overrides: Sequence[str]) -> Preset:
    """``preset`` with ``FIELD=VALUE`` / ``language.FIELD=VALUE`` / ``task.FIELD=VALUE`` applied (JSON values)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: write FIELD=VALUE, e.g. language.full_steps=20")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        section, _, name = key.rpartition(".")
        target = getattr(preset, section) if section in ("language", "task") else preset
        if section not in ("", "language", "task") or not hasattr(target, name):
            raise ConfigError(f"--set {key}: no such preset field; see experiments/presets.py")
        if section:
            preset = replace(preset, **{section: replace(target, **{name: value})})
        else:
            preset = replace(preset, **{name: value})
    return preset


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    try:
        seeds = tuple(int(s) for s in args.seeds)
    except ValueError as exc:
        raise ConfigError(f"--seeds must be integers separated by commas, got {','.join(args.seeds)}") from exc
    return RunSpec(
        data_dir=args.data_dir, out=args.out, preset=apply_overrides(get_preset(args.preset), args.overrides),
        model_dir=args.model_dir,
        nusax_languages=tuple(args.nusax_languages), anli_languages=tuple(args.anli_languages),
        methods=tuple(args.methods), seeds=seeds, source=args.source, keep_phase1=args.keep_phase1,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "report":
            from experiments.report import main as report_main

            return report_main(argv[1:])
        args = _run_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("experiments").setLevel(logging.INFO)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        Runner(spec_from_args(args)).run()
    except SFTError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
