"""The cross-lingual runner end to end on a tiny model (preset ``smoke``), without ../shared.

The data layout is built from sftkit's bundled sample corpus (NusaX rows) plus synthetic NLI pairs
(``experiments.datasets.write_sample_layout``), so these tests run wherever the package does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import datasets as ds
from experiments.presets import get_preset
from experiments.report import write_report
from experiments.xling import METHODS, Runner, RunSpec, apply_overrides, main
from sftkit.errors import ConfigError
from sftkit.format import load_file

GROWN = ("zero-shot", "lt-sft", "deft-x")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ds.write_sample_layout(tmp_path_factory.mktemp("xling-data"))


@pytest.fixture(scope="module")
def run(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    import torch

    out = tmp_path_factory.mktemp("xling-run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is faster, and the CI box has two busy cores
    try:
        # Every method on NusaX; then the same folder grows by a dataset and a language with three
        # methods (the English SFTs and the NusaX scores come from the cache).
        common = {"data_dir": layout, "out": out, "preset": get_preset("smoke"), "seeds": (1,)}
        records = Runner(RunSpec(nusax_languages=("javanese",), methods=METHODS, **common)).run()
        records += Runner(RunSpec(nusax_languages=("javanese",), anli_languages=("smp",), methods=GROWN, **common)).run()
    finally:
        torch.set_num_threads(threads)
    return out, records


def test_leakage_filter_drops_test_sentences(layout: Path) -> None:
    leak = ds.build_leakage_filter(ds.Layout(layout))
    test_row = next(iter(ds._read_table(layout / "nusax/sentiment/javanese/test.csv", ",")))
    assert not leak.keep(test_row["text"])
    assert not leak.keep("  " + test_row["text"].upper() + " ")  # normalised: case and spacing ignored
    assert leak.keep("a sentence that is in no test set at all")
    assert ds.normalise("Héllo,  World!") == ds.normalise("héllo world")


def test_every_method_is_scored_and_cached(run: tuple[Path, list[dict]], layout: Path) -> None:
    out, records = run
    expected = [("nusax", m, "jav") for m in METHODS] + [(d, m, t) for d, t in (("nusax", "jav"), ("anli", "smp")) for m in GROWN]
    assert [(r["dataset"], r["method"], r["target"]) for r in records] == expected
    first = {(r["dataset"], r["method"]): r for r in records[: len(METHODS)]}
    assert all(r == first[(r["dataset"], r["method"])] for r in records[len(METHODS):] if r["dataset"] == "nusax")
    for r in records:
        assert 0.0 <= r["value"] <= 1.0 and r["n"] == 16
        assert r["value"] == r[r["metric"]]
    manifest = json.loads((out / "data/manifest.json").read_text())
    # write_sample_layout plants two AmericasNLI test sentences in the smp text: both must go.
    assert manifest["text"]["smp"]["leaked_dropped"] == 2
    text = (out / "data/text/smp.txt").read_text().splitlines()
    leak = ds.build_leakage_filter(ds.Layout(layout))
    assert text and all(leak.keep(line) for line in text)
    # Language SFTs of the four mask methods: the same K, phase 1 shared (same phase-1 loss), masks differ.
    sfts = {m: load_file(out / f"sfts/language/jav/{m}/seed1.safetensors") for m in ("lt-sft", "deft-x", "deft-x-rank", "deft-x-nores")}
    assert len({s.nnz for s in sfts.values()}) == 1
    losses = {s.metadata.hyperparameters["full_train_loss"] for s in sfts.values()}
    assert len(losses) == 1
    assert sfts["deft-x"].metadata.hyperparameters["denoise"]["residual_keep"] > 0
    assert sfts["deft-x-nores"].metadata.hyperparameters["denoise"]["residual_keep"] == 0
    masks = {m: {n: tuple(d.indices.tolist()) for n, d in s.deltas.items()} for m, s in sfts.items()}
    assert masks["lt-sft"] != masks["deft-x"]
    task = load_file(out / "sfts/task/anli/deft-x/seed1.safetensors")
    assert task.metadata.hyperparameters["underlying"][0]["language"] == "eng"
    assert load_file(out / "sfts/task/anli/zero-shot/seed1.safetensors").metadata.hyperparameters["underlying"] == []
    assert not any((out / "cache/phase1").rglob("*.safetensors"))  # dropped once every mask method is done


def test_rerun_reuses_the_cache_and_report_is_written(run: tuple[Path, list[dict]], layout: Path, tmp_path: Path) -> None:
    out, records = run
    stamps = {p: p.stat().st_mtime_ns for p in (out / "sfts").rglob("*.safetensors")}
    code = main([
        "--data-dir", str(layout), "--nusax-languages", "javanese", "--anli-languages", "smp",
        "--methods", ",".join(GROWN), "--seeds", "1", "--preset", "smoke", "--out", str(out),
    ])
    assert code == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "sfts").rglob("*.safetensors")} == stamps
    results_md = tmp_path / "results.md"
    results_md.write_text("# Results\n\nprotocol text stays\n")
    report = write_report(out, results_md)
    assert report["table"]["nusax"]["methods"]["lt-sft"]["jav"]["mean"] == next(
        r["value"] for r in records if r["dataset"] == "nusax" and r["method"] == "lt-sft"
    )
    assert set(report["analysis"]["overlap"]) >= {"jav-lt-sft vs task nusax", "smp-deft-x vs task anli"}
    text = results_md.read_text()
    assert "protocol text stays" in text and "| (b) LT-SFT |" in text
    assert "#### Does DeFT-X beat LT-SFT here?" in text and "average difference" in text
    assert "Macro-F1 × 100 of the same predictions" in text  # beside AmericasNLI's accuracy
    assert report["table_macro_f1"]["anli"]["methods"]["lt-sft"]["smp"]["mean"] == next(
        r["macro_f1"] for r in records if r["dataset"] == "anli" and r["method"] == "lt-sft"
    )
    assert json.loads((tmp_path / "results/xling.json").read_text())["comparisons"]["deft-x vs lt-sft"]
    for plot in report["plots"]:
        assert (tmp_path / "results" / plot).stat().st_size > 0 and f"](results/{plot})" in text
    assert json.loads((out / "report/results.json").read_text())["timings"]["total_seconds"] > 0


def test_changed_preset_in_same_folder_is_refused(run: tuple[Path, list[dict]], layout: Path) -> None:
    out, _ = run
    spec = RunSpec(
        data_dir=layout, out=out, preset=apply_overrides(get_preset("smoke"), ["language.full_steps=3"]),
        nusax_languages=("javanese",), seeds=(1,),
    )
    with pytest.raises(ConfigError, match="another preset"):
        Runner(spec).check()


def test_user_mistakes_are_one_line_errors(layout: Path, tmp_path: Path) -> None:
    spec = RunSpec(data_dir=layout, out=tmp_path / "o", preset=get_preset("smoke"), nusax_languages=("klingon",))
    with pytest.raises(ConfigError, match="klingon"):
        Runner(spec).check()
    with pytest.raises(ConfigError, match="no such preset field"):
        apply_overrides(get_preset("smoke"), ["language.bogus=1"])
    assert main(["--data-dir", str(layout), "--preset", "nope", "--nusax-languages", "javanese", "--out", str(tmp_path)]) == 1


def test_deft_x_vs_lt_sft_is_paired_by_target_and_seed() -> None:
    from experiments.report import compare, verdict

    def score(method: str, target: str, seed: int, value: float) -> dict:
        return {"dataset": "nusax", "method": method, "target": target, "seed": seed, "value": value}

    scores = [score("lt-sft", t, s, 0.50) for t in ("jav", "sun") for s in (1, 2, 3)]
    scores += [score("deft-x", t, s, 0.50 + (0.02 if t == "jav" else -0.01) * s) for t in ("jav", "sun") for s in (1, 2, 3)]
    result = compare(scores, "deft-x", "lt-sft")["nusax"]
    assert (result["pairs"], result["wins"], result["losses"]) == (6, 3, 3)
    assert result["avg_difference_per_seed"] == pytest.approx([0.005, 0.01, 0.015])
    text = verdict({"nusax": result}, "DeFT-X", "LT-SFT")
    assert "DeFT-X beats LT-SFT" in text and "+1.0 ± 0.5 points over 3 seed(s)" in text
    worse = [dict(s, value=0.4) if s["method"] == "deft-x" else s for s in scores]
    assert "does not beat" in verdict(compare(worse, "deft-x", "lt-sft"), "DeFT-X", "LT-SFT")
    one_seed = [s for s in scores if s["seed"] == 1 and s["method"] == "lt-sft"]
    one_seed += [score("deft-x", "jav", 1, 0.5004), score("deft-x", "sun", 1, 0.4995)]  # -0.005 points: shown as 0.0
    text = verdict(compare(one_seed, "deft-x", "lt-sft"), "DeFT-X", "LT-SFT")
    assert "DeFT-X ties with LT-SFT" in text and "+0.0 points over 1 seed(s)" in text and "-0.0" not in text
    offsets = {1: -0.001, 2: 0.0008, 3: -0.0003}  # per-seed differences straddle zero: mean -0.017 points
    spread = [s for s in scores if s["method"] == "lt-sft"]
    spread += [dict(s, method="deft-x", value=s["value"] + offsets[s["seed"]]) for s in spread]
    text = verdict(compare(spread, "deft-x", "lt-sft"), "DeFT-X", "LT-SFT")
    assert "+0.0 ± 0.1 points" in text and "within the seed-to-seed spread" in text and "-0.0" not in text


def test_language_seed_shares_language_sfts_across_seeds(layout: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    spec = RunSpec(data_dir=layout, out=tmp_path, preset=replace(get_preset("smoke"), language_seed=1), seeds=(1, 2, 3))
    runner = Runner(spec)
    assert [runner.language_seed(s) for s in (1, 2, 3)] == [1, 1, 1]
    assert Runner(replace(spec, preset=get_preset("smoke"))).language_seed(2) == 2


def test_processes_sharing_a_run_folder_skip_held_units_and_come_back(run: tuple[Path, list[dict]], layout: Path) -> None:
    """A unit held by another process is deferred, not retrained in parallel; the run waits for it."""
    import subprocess
    import sys

    from experiments.xling import UnitBusy

    out, records = run
    score = out / "scores/nusax/zero-shot/jav/seed1.json"
    before = json.loads(score.read_text())
    score.unlink()
    runner = Runner(RunSpec(data_dir=layout, out=out, preset=get_preset("smoke"), nusax_languages=("javanese",),
                            methods=("zero-shot", "lt-sft"), seeds=(1,)))
    runner.poll_seconds = 0.05
    lock = out / "locks/score-nusax-zero-shot-jav-seed1.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from filelock import FileLock; import time; l = FileLock({str(lock)!r}); l.acquire();"
         "print('held', flush=True); time.sleep(1.0); l.release()"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        runner.check()
        runner.prepare_data()
        with pytest.raises(UnitBusy):
            runner.score("nusax", "zero-shot", "jav", 1)
        assert not score.exists()
        got = runner.run()  # lt-sft comes from the cache; zero-shot waits for the release, then scores
    finally:
        holder.wait(timeout=30)
    assert [(r["method"], r["value"]) for r in got] == [("zero-shot", before["value"]), ("lt-sft", got[1]["value"])]
    assert json.loads(score.read_text())["value"] == before["value"]



def test_balanced_sick_has_equal_label_counts(layout: Path, tmp_path: Path) -> None:
    import csv
    from collections import Counter

    rows = [{"label": label, "premise": f"{label} {i}"} for label, n in (("neutral", 9), ("entailment", 5), ("contradiction", 2))
            for i in range(n)]
    chosen = ds.balanced(rows)
    assert Counter(r["label"] for r in chosen) == {"neutral": 2, "entailment": 2, "contradiction": 2}
    assert len({r["premise"] for r in chosen}) == 6 and chosen == ds.balanced(rows)  # distinct rows, reproducible
    assert [r["label"] for r in chosen] != sorted(r["label"] for r in chosen)  # shuffled, not grouped by label
    assert Counter(r["label"] for r in ds.balanced(rows, limit=3)) == {"neutral": 1, "entailment": 1, "contradiction": 1}

    out = tmp_path / "train.tsv"
    assert ds.write_sick_split(ds.Layout(layout), ("TRAIN",), out, limit=7, balance=True) == 6
    with open(out, encoding="utf-8") as handle:
        labels = Counter(r["label"] for r in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert labels == {"neutral": 2, "entailment": 2, "contradiction": 2}


def test_calibration_scores_anli_dev_with_predicted_label_counts(
    run: tuple[Path, list[dict]], layout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from experiments.calibrate import main as calibrate

    out, _ = run
    common = ["--run", str(out), "--model-dir", str(out / "base"), "--dataset", "anli", "--steps", "2", "--num-params", "200",
              "--max-seq-length", "32", "--head-warmup-steps", "1"]
    assert calibrate([*common, "--anli-dev", "smp"]) == 1  # no --data-dir: refused before any training
    assert "--anli-dev needs" in capsys.readouterr().err
    assert calibrate([*common, "--anli-dev", "smp", "--data-dir", str(layout)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"anli_dev"')]
    assert [line["anli_dev"] for line in lines] == ["smp"]
    dev_rows = len((layout / "americasnli" / "dev" / "smp.tsv").read_text(encoding="utf-8").splitlines()) - 1
    assert lines[0]["n"] == dev_rows == sum(lines[0]["predicted"].values())
    assert 0.0 <= lines[0]["accuracy"] <= 1.0
