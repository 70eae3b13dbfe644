"""The embedded default: the whole LT-SFT pipeline end to end, offline, in about a minute on a CPU.

``sftkit demo`` (and :func:`run_demo`) uses the real code paths on a tiny model so that a new user
sees every step work before spending GPU hours on XLM-R:

1. train a small tokenizer on the shipped sample text (:mod:`sftkit.data`, a NusaX subset);
2. build a tiny XLM-R-shaped masked-LM from a config and save it as the base θ0;
3. train a language SFT for English (source), Javanese and Sundanese (targets) by masked LM;
4. train an English sentiment task SFT with the English language SFT applied underneath;
5. save every SFT as a file (and register it in a local registry inside the work dir when the
   registry module is available);
6. compose θ0 + φ_L(target) + φ_T and evaluate zero-shot on Javanese/Sundanese test rows, with and
   without the target language SFT.

The model is tiny and trained from scratch for about a minute, so scores are low (chance ≈ 0.33 for
three classes; ``quick=True`` stays at chance); the point is the pipeline, not the numbers.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sftkit.data import sample_path

logger = logging.getLogger("sftkit")

TARGETS = ("jav", "sun")
NOTE = (
    "A tiny model trained from scratch for about a minute on a few hundred sentences: absolute scores are low, "
    "chance is about 0.33 (three classes), and with 100 test examples differences of a few points are noise. "
    "The demo shows the pipeline (tokenizer -> base -> language SFTs -> task SFT -> compose -> evaluate), "
    "not the quality of LT-SFT at scale."
)


def _settings(quick: bool) -> dict[str, Any]:
    steps = 8 if quick else 120
    return {
        "vocab_size": 600 if quick else 1500,
        "hidden_size": 32 if quick else 64,
        "layers": 2,
        "language_steps": steps,
        "task_steps": steps,
        "batch_size": 16,
        "max_seq_length": 64,
        "density": 0.1,
        "learning_rate": 1e-3,
    }


def _build_base(workdir: Path, settings: dict[str, Any], seed: int) -> Path:
    """Train the tokenizer and save a tiny masked-LM base θ0 (model + tokenizer) in ``workdir/base``."""
    import torch
    from transformers import XLMRobertaForMaskedLM

    from sftkit.testing import tiny_config
    from sftkit.training.data import read_texts
    from sftkit.training.tokenizer import train_tokenizer

    texts = read_texts(sample_path("eng-train"), text_column="text")
    for language in TARGETS:
        texts += read_texts(sample_path(f"{language}-text"))
    tokenizer = train_tokenizer(texts, vocab_size=settings["vocab_size"], model_max_length=settings["max_seq_length"])
    torch.manual_seed(seed)
    config = tiny_config(
        vocab_size=len(tokenizer), hidden_size=settings["hidden_size"], layers=settings["layers"],
        max_position_embeddings=settings["max_seq_length"] + 2,
    )
    model = XLMRobertaForMaskedLM(config).eval()
    base = workdir / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    return base


def _register(files: dict[str, Path], workdir: Path) -> str | None:
    """Push the SFTs into a local registry under ``workdir`` if the registry module offers one."""
    try:
        from sftkit import registry
    except ImportError:
        return None
    registry_class = getattr(registry, "LocalRegistry", None)
    if registry_class is None or not hasattr(registry_class, "push"):
        return None
    root = workdir / "registry"
    try:
        local = registry_class(root)
        for name, path in files.items():
            local.push(path, f"sftkit-demo/tiny-xlmr-{name}")
    except Exception as exc:  # the demo must not fail because an optional step does
        logger.warning("demo: could not register the SFTs in %s: %s", root, exc)
        return None
    return str(root)


@contextmanager
def _quiet_and_single_threaded() -> Iterator[None]:
    """Tiny models: one thread is as fast on an idle CPU and far faster on a busy one; and the expected
    transformers load reports (fresh heads) and weight-loading bars would bury the demo's output."""
    import torch
    from transformers.utils import logging as hf_logging

    threads, verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def run_demo(
    workdir: str | Path | None = None,
    *,
    quick: bool = False,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the pipeline end to end and return its results.

    Returns ``{"workdir", "base", "files": {name: path}, "registry", "rows": [{"language", "setting",
    "language_sft", "accuracy", "macro_f1", "n"}], "seconds", "quick", "note"}``. Files go to
    ``workdir`` (a new temporary directory when ``None``; it is kept so the SFTs can be inspected).
    ``log`` receives one line per step (e.g. ``lambda m: click.echo(m, err=True)``); default: the
    ``sftkit`` logger at INFO level.
    """
    with _quiet_and_single_threaded():
        return _run(workdir, quick=quick, seed=seed, log=log or logger.info)


def _run(workdir: str | Path | None, *, quick: bool, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    from sftkit.training.api import evaluate, train_language_sft, train_task_sft
    from sftkit.training.config import SFTTrainingConfig

    started = time.perf_counter()
    settings = _settings(quick)
    work = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="sftkit-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"demo: training a tokenizer and building a tiny XLM-R base in {work}")
    base = _build_base(work, settings, seed)

    def config(steps: int) -> SFTTrainingConfig:
        return SFTTrainingConfig(
            density=settings["density"], full_steps=steps, sparse_steps=steps, learning_rate=settings["learning_rate"],
            batch_size=settings["batch_size"], max_seq_length=settings["max_seq_length"], seed=seed,
            logging_steps=max(1, steps // 4),
        )

    files: dict[str, Path] = {}
    language_sfts = {}
    sources = {"eng": (sample_path("eng-train"), "text")} | {lang: (sample_path(f"{lang}-text"), None) for lang in TARGETS}
    for language, (text_file, column) in sources.items():
        files[f"lang-{language}"] = work / f"lang-{language}.safetensors"
        log(f"demo: training the {language} language SFT on {Path(text_file).name}")
        language_sfts[language] = train_language_sft(
            base, [text_file], language=language, config=config(settings["language_steps"]), text_column=column,
            output=files[f"lang-{language}"], progress=False,
        )
    files["task-sentiment"] = work / "task-sentiment-eng.safetensors"
    log("demo: training the English sentiment task SFT with the eng language SFT underneath")
    task_sft = train_task_sft(
        base, sample_path("eng-train"), validation_file=sample_path("eng-validation"), language_sft=language_sfts["eng"],
        config=config(settings["task_steps"]), task="sentiment", output=files["task-sentiment"], progress=False,
    )

    rows: list[dict[str, Any]] = []

    def score(language: str, test_file: Path, setting: str, with_language: bool) -> None:
        result = evaluate(
            base, task_sft, language_sft=language_sfts[language] if with_language else None, test_file=test_file,
        )
        rows.append({
            "language": language, "setting": setting, "language_sft": with_language,
            "accuracy": result.accuracy, "macro_f1": result.macro_f1, "n": result.n,
        })

    log("demo: composing and evaluating")
    score("eng", sample_path("eng-validation"), "source (validation)", True)
    for language in TARGETS:
        test_file = sample_path(f"{language}-test")
        score(language, test_file, "zero-shot, task SFT only", False)
        score(language, test_file, "zero-shot, + language SFT", True)

    return {
        "workdir": str(work),
        "base": str(base),
        "files": {name: str(path) for name, path in files.items()},
        "registry": _register(files, work),
        "rows": rows,
        "seconds": time.perf_counter() - started,
        "quick": quick,
        "note": NOTE,
    }


def format_table(result: dict[str, Any]) -> str:
    """The demo's results as text: the score table, where the files are, and what the numbers mean."""
    from sftkit.cli._output import format_table as table

    rows = [
        (r["language"], r["setting"], "yes" if r["language_sft"] else "no", round(r["accuracy"], 4),
         round(r["macro_f1"], 4), r["n"])
        for r in result["rows"]
    ]
    lines = [
        table(rows, ["language", "setting", "language SFT", "accuracy", "macro-F1", "n"]),
        "",
        f"SFTs written to {result['workdir']}: " + ", ".join(Path(p).name for p in result["files"].values()),
    ]
    if result.get("registry"):
        lines.append(f"registered in the local registry at {result['registry']}")
    lines += [f"took {result['seconds']:.1f} s", "", f"Note: {result['note']}"]
    if result.get("quick"):
        lines.append("Quick mode trains only a few steps per phase, so every row stays at chance.")
    return "\n".join(lines)
