"""The report of a run folder: tables (mean ± std over seeds), a JSON of every number, plots, timings.

``python -m experiments.xling report --out runs/xling`` reads only what the runner cached (scores,
timings, SFT files) — it trains nothing — and writes ``<out>/report/{results.json, results.md,
*.png}`` and the tables between the markers of ``docs/results.md``. Plots need matplotlib (optional);
without it the report says so and skips them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics as stats
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.datasets import atomic_write_text
from sftkit._io import atomic_write_bytes
from sftkit.errors import ConfigError

PAPER = {
    "nusax": {"metric": "macro-F1", "DeFT-X": 81.4, "LT-SFT": 80.2, "MAD-X": 75.8},
    "anli": {"metric": "accuracy", "DeFT-X": 51.3, "LT-SFT": 51.0, "MAD-X": 49.5},
}
"""Average over target languages reported in the DeFT-X paper (XLM-R base, full scale, their language sets)."""
BEGIN, END = "<!-- xling-report:begin -->", "<!-- xling-report:end -->"
DATASET_NAMES = {"nusax": "NusaX sentiment (macro-F1 × 100)", "anli": "AmericasNLI (accuracy × 100)"}


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    return {
        "mean": stats.fmean(values),
        "std": stats.stdev(values) if len(values) > 1 else None,
        "n_seeds": len(values),
    }


def _fmt(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "—"
    text = f"{100 * cell['mean']:.1f}"
    if cell["std"] is not None:
        text += f" ± {100 * cell['std']:.1f}"
    return text + ("" if cell["n_seeds"] > 1 else " (1 seed)")


def collect_scores(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "scores").rglob("seed*.json"))]


def aggregate(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset → method → target (and ``avg``): mean ± std over seeds.

    The average of a seed is over the targets scored for that seed; a seed missing a target that
    other seeds have is left out of the average (so averages never mix language sets).
    """
    from experiments.xling import METHODS

    table: dict[str, Any] = {}
    for dataset in sorted({s["dataset"] for s in scores}):
        rows = [s for s in scores if s["dataset"] == dataset]
        targets = sorted({s["target"] for s in rows})
        methods = [m for m in METHODS if any(s["method"] == m for s in rows)]
        table[dataset] = {"metric": rows[0]["metric"], "targets": targets, "methods": {}}
        for method in methods:
            mine = [s for s in rows if s["method"] == method]
            cells: dict[str, Any] = {}
            for target in targets:
                values = [s["value"] for s in mine if s["target"] == target]
                if values:
                    cells[target] = _mean_std(values)
            per_seed = {}
            for seed in sorted({s["seed"] for s in mine}):
                seed_rows = {s["target"]: s["value"] for s in mine if s["seed"] == seed}
                if set(seed_rows) == set(targets):
                    per_seed[seed] = stats.fmean(seed_rows.values())
            if per_seed:
                cells["avg"] = _mean_std(list(per_seed.values())) | {"seeds": sorted(per_seed)}
            table[dataset]["methods"][method] = cells
    return table


def compare(scores: list[dict[str, Any]], method: str, baseline: str) -> dict[str, Any]:
    """``method`` − ``baseline`` per dataset, paired by (target, seed): the mean difference, its spread,
    and how many pairs each side wins — what "DeFT-X beats LT-SFT" has to mean on a few seeds."""
    result: dict[str, Any] = {}
    for dataset in sorted({s["dataset"] for s in scores}):
        mine = {(s["target"], s["seed"]): s["value"] for s in scores if s["dataset"] == dataset and s["method"] == method}
        base = {(s["target"], s["seed"]): s["value"] for s in scores if s["dataset"] == dataset and s["method"] == baseline}
        pairs = sorted(set(mine) & set(base))
        if not pairs:
            continue
        diffs = [mine[p] - base[p] for p in pairs]
        seeds = sorted({seed for _, seed in pairs})
        targets = sorted({t for t, _ in pairs})
        per_seed = [
            stats.fmean(mine[(t, seed)] - base[(t, seed)] for t in targets)
            for seed in seeds if all((t, seed) in mine and (t, seed) in base for t in targets)
        ]
        result[dataset] = {
            "pairs": len(pairs), "mean_difference": stats.fmean(diffs),
            "wins": sum(d > 0 for d in diffs), "losses": sum(d < 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
            "avg_difference_per_seed": per_seed,
            "avg_difference": _mean_std(per_seed) if per_seed else None,
        }
    return result


def verdict(comparison: dict[str, Any], method: str, baseline: str) -> str:
    """One plain sentence per dataset: better, worse, or within the seed-to-seed spread."""
    lines = []
    for dataset, c in comparison.items():
        avg = c["avg_difference"]
        if avg is None:
            continue
        mean, std = 100 * avg["mean"], (100 * avg["std"]) if avg["std"] is not None else None
        spread = f" ± {std:.1f}" if std is not None else ""
        if std is not None and abs(mean) <= std:
            word = "does not beat" if mean <= 0 else "is not reliably better than"
            tail = "the difference is within the seed-to-seed spread"
        elif round(mean, 1) == 0:
            word, tail = "ties with", "equal to the 0.1 point shown"
        elif mean > 0:
            word, tail = "beats", "the difference exceeds the seed-to-seed spread" if std is not None else "one seed only"
        else:
            word, tail = "does not beat", "it is worse on average"
        lines.append(
            f"- {DATASET_NAMES.get(dataset, dataset)}: {method} {word} {baseline} — average difference "
            f"{round(mean, 1) + 0.0:+.1f}{spread} points over {avg['n_seeds']} seed(s) ({tail}); per (target, seed) pair "
            f"{c['wins']} wins, {c['losses']} losses, {c['ties']} ties."
        )
    return "\n".join(lines)


def collect_timings(out: Path) -> dict[str, Any]:
    by_stage: dict[str, dict[str, float]] = {}
    units = []
    for path in sorted((out / "timings").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        units.append({"unit": path.stem, **record})
        stage = by_stage.setdefault(record["stage"], {"units": 0, "seconds": 0.0})
        stage["units"] += 1
        stage["seconds"] += record["seconds"]
    per_step: dict[str, list[float]] = {}
    for unit in units:
        kind = "language" if unit["stage"].startswith("language") else "task"
        for phase, info in (unit.get("phases") or {}).items():
            if info.get("steps"):
                label = {"head": "0 (head warm-up)", "full": "1 (dense)", "sparse": "2 (sparse)"}.get(phase, phase)
                per_step.setdefault(f"{kind} SFT, phase {label}", []).append(info["seconds"] / info["steps"])
    step_seconds = {
        key: {"units": len(v), "median": stats.median(v), "min": min(v), "max": max(v)} for key, v in sorted(per_step.items())
    }
    per_seed: dict[int, float] = {}
    for unit in units:
        if "seed" in unit:
            per_seed[unit["seed"]] = per_seed.get(unit["seed"], 0.0) + unit["seconds"]
    return {
        "stages": by_stage, "total_seconds": sum(s["seconds"] for s in by_stage.values()), "units": units,
        "seconds_per_step": step_seconds, "seconds_per_seed": dict(sorted(per_seed.items())),
    }


def analyse_sfts(out: Path) -> dict[str, Any]:
    """Per-layer density of every language and task SFT of the first seed, and the per-layer overlap
    of each target language SFT's mask with the task SFT's mask (same method)."""
    from sftkit.arithmetic import overlap, statistics
    from sftkit.format import load_file

    root = out / "sfts"
    if not root.is_dir():
        return {}
    files = sorted(root.rglob("seed*.safetensors"))
    if not files:
        return {}
    seed = min(int(p.stem[4:]) for p in files)
    analysis: dict[str, Any] = {"seed": seed, "density": {}, "overlap": {}}
    loaded: dict[Path, Any] = {}

    def sft(path: Path) -> Any:
        if path not in loaded:
            loaded[path] = load_file(str(path))
        return loaded[path]

    for path in sorted(root.rglob(f"seed{seed}.safetensors")):
        kind, what, method = path.parts[-4], path.parts[-3], path.parts[-2]
        s = statistics(sft(path))
        analysis["density"][f"{kind}/{what}/{method}"] = {
            "nnz": s.nnz, "groups": {g: {"density": v.density, "nnz": v.nnz, "share_of_k": v.nnz / s.nnz if s.nnz else 0.0}
                                     for g, v in s.groups.items()},
        }
    scores = collect_scores(out)
    pairs = {(s["task_sft"], s["language_sft"]) for s in scores if s["language_sft"] and s["seed"] == seed}
    for task_rel, lang_rel in sorted(pairs):
        report = overlap(sft(out / lang_rel), sft(out / task_rel))
        key = f"{Path(lang_rel).parts[-3]}-{Path(lang_rel).parts[-2]} vs task {Path(task_rel).parts[-3]}"
        analysis["overlap"][key] = {
            "total": report.total.to_dict(),
            "groups": {g: c.to_dict() for g, c in report.groups.items()},
        }
        loaded.clear()
    return analysis


def _group_key(group: str) -> tuple[int, int]:
    """embeddings, layer.0 … layer.N, then anything else (the order of ``sftkit.arithmetic`` groups)."""
    if group == "embeddings":
        return (0, 0)
    if group.startswith("layer.") and group[6:].isdigit():
        return (1, int(group[6:]))
    return (2, 0)


def _plots(analysis: dict[str, Any], folder: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for name, key, value in (("overlap_per_layer.png", "overlap", "jaccard"), ("density_per_layer.png", "density", "density")):
        series = analysis.get(key) or {}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(9, 4.5))
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
        # One x position per layer group over all series (task SFTs have no embedding group).
        groups = sorted({g for data in series.values() for g in data["groups"]}, key=_group_key)
        position = {g: i for i, g in enumerate(groups)}
        for label, data in series.items():
            mine = sorted(data["groups"], key=_group_key)
            ax.plot([position[g] for g in mine], [data["groups"][g][value] for g in mine], marker="o", label=label)
        ax.set_xticks(range(len(groups)), groups, rotation=60, fontsize=7)
        ax.set_ylabel("Jaccard(language mask, task mask)" if key == "overlap" else "density (nnz / entries)")
        ax.set_title(f"{'Mask overlap' if key == 'overlap' else 'SFT density'} per layer (seed {analysis['seed']})")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=120)
        plt.close(fig)
        written.append(name)
    return written


def _method_rows(methods: dict[str, Any], targets: Sequence[str]) -> list[str]:
    """One table row per method: its cell per target, then the average."""
    from experiments.xling import METHOD_LABELS

    return [f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(_fmt(cells.get(t)) for t in [*targets, "avg"]) + " |"
            for m, cells in methods.items()]


def render_markdown(
    table: dict[str, Any], timings: dict[str, Any], preset: str | None, plots: Sequence[str], verdicts: str = "",
    figures: str = "report", secondary: dict[str, Any] | None = None,
) -> str:

    lines = [f"Generated by `python -m experiments.xling report` from the run folder (preset `{preset}`)."]
    for dataset, data in table.items():
        targets = data["targets"]
        lines += ["", f"#### {DATASET_NAMES.get(dataset, dataset)}", ""]
        lines.append("| method | " + " | ".join(targets) + " | avg |")
        lines.append("| --- " * (len(targets) + 2) + "|")
        lines += _method_rows(data["methods"], targets)
        if data["metric"] == "accuracy" and secondary and dataset in secondary:
            # Accuracy hides a classifier that predicts one class; macro-F1 shows it (1/6 ≈ 16.7 for
            # three balanced classes).
            lines += ["", "Macro-F1 × 100 of the same predictions (≈ 16.7 means a single class is predicted):", ""]
            lines.append("| method | " + " | ".join(targets) + " | avg |")
            lines.append("| --- " * (len(targets) + 2) + "|")
            lines += _method_rows(secondary[dataset]["methods"], targets)
        paper = PAPER.get(dataset)
        if paper:
            lines += ["", f"Paper (XLM-R base, full scale, their language set; average {paper['metric']}): "
                      f"DeFT-X {paper['DeFT-X']}, LT-SFT {paper['LT-SFT']}, MAD-X {paper['MAD-X']}. "
                      "Not comparable number for number: other base model, scale and languages."]
    if verdicts:
        lines += ["", "#### Does DeFT-X beat LT-SFT here?", "", verdicts]
    lines += ["", "#### Wall-clock per stage", "", "| stage | units | seconds |", "| --- | --- | --- |"]
    for stage, info in sorted(timings["stages"].items()):
        lines.append(f"| {stage} | {info['units']} | {info['seconds']:.0f} |")
    lines.append(f"| total | | {timings['total_seconds']:.0f} |")
    if timings.get("seconds_per_seed"):
        lines += ["", "Seconds per seed (sum of that seed's units; shared units such as language SFTs count for the seed "
                  "that trained them): " + ", ".join(f"seed {k}: {v:.0f} s ({v / 60:.1f} min)"
                                                     for k, v in timings["seconds_per_seed"].items()) + "."]
    if timings.get("seconds_per_step"):
        lines += ["", "Seconds per optimizer step (phase wall time / steps, over units):", "",
                  "| phase | units | median | min | max |", "| --- | --- | --- | --- | --- |"]
        for key, v in timings["seconds_per_step"].items():
            lines.append(f"| {key} | {v['units']} | {v['median']:.2f} | {v['min']:.2f} | {v['max']:.2f} |")
    for plot in plots:
        lines += ["", f"![{plot}]({figures}/{plot})"]
    return "\n".join(lines) + "\n"


def _update_results_md(path: Path, body: str) -> None:
    text = path.read_text(encoding="utf-8") if path.is_file() else f"# Results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(path, f"{head}{BEGIN}\n{body}{END}{tail}")


def write_report(out: Path, results_md: Path | None = None, *, analyse: bool = True) -> dict[str, Any]:
    """Write ``<out>/report/`` and (when given) the tables into ``results_md``; return every number."""
    if not (out / "scores").is_dir():
        raise ConfigError(f"{out}/scores does not exist; run `python -m experiments.xling ... --out {out}` first")
    scores = collect_scores(out)
    table = aggregate(scores)
    timings = collect_timings(out)
    run = json.loads((out / "run.json").read_text(encoding="utf-8")) if (out / "run.json").is_file() else {}
    preset_fields = (run.get("identity") or {}).get("preset", {})
    preset = preset_fields.get("name")
    changed = _changed_fields(preset_fields)
    if changed:
        preset = f"{preset}, modified: {', '.join(changed)}"
    manifest_path = out / "data" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    analysis = analyse_sfts(out) if analyse else {}
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    plots = _plots(analysis, folder)
    comparisons = {
        name: compare(scores, method, "lt-sft") for name, method in (("deft-x vs lt-sft", "deft-x"),
                                                                   ("deft-x-rank vs lt-sft", "deft-x-rank"),
                                                                   ("deft-x-nores vs lt-sft", "deft-x-nores"))
    }
    verdicts = verdict(comparisons["deft-x vs lt-sft"], "DeFT-X (energy 0.9)", "LT-SFT")
    macro_f1 = aggregate([{**s, "value": s["macro_f1"]} for s in scores])
    everything = {
        "preset": preset, "run": run, "scores": scores, "table": table, "timings": timings, "analysis": analysis,
        "data": manifest, "paper": PAPER, "plots": plots, "comparisons": comparisons, "table_macro_f1": macro_f1,
    }
    atomic_write_text(folder / "results.json", json.dumps(everything, indent=1, sort_keys=True, default=_jsonable) + "\n")
    body = render_markdown(table, timings, preset, plots, verdicts, secondary=macro_f1)
    atomic_write_text(folder / "results.md", body)
    if results_md is not None:
        # The figures and the JSON of every number go beside the markdown, so the docs stand alone.
        figures = results_md.parent / "results"
        figures.mkdir(parents=True, exist_ok=True)
        for plot in plots:
            atomic_write_bytes(figures / plot, (folder / plot).read_bytes())
        atomic_write_text(figures / "xling.json", (folder / "results.json").read_text(encoding="utf-8"))
        _update_results_md(results_md, render_markdown(table, timings, preset, plots, verdicts, figures="results", secondary=macro_f1))
    return everything


def _changed_fields(fields: dict[str, Any]) -> list[str]:
    """``field=value`` for every preset field of a run that differs from the stock preset of its name."""
    from experiments.presets import PRESETS

    stock = PRESETS.get(fields.get("name", ""))
    if stock is None:
        return []
    reference = json.loads(json.dumps(stock.to_dict()))
    changed = []
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(reference.get(key), dict):
            changed += [f"{key}.{k}={v}" for k, v in value.items() if reference[key].get(k) != v]
        elif key in reference and reference[key] != value:
            changed.append(f"{key}={value}")
    return changed


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.xling report")
    parser.add_argument("--out", type=Path, default=Path("runs/xling"), help="the run folder")
    parser.add_argument(
        "--results-md", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "results.md",
        help="markdown file whose marked section receives the tables ('-' for none)",
    )
    parser.add_argument("--no-analysis", action="store_true", help="skip the per-layer SFT analysis (loads every SFT)")
    args = parser.parse_args(argv)
    target = None if str(args.results_md) == "-" else args.results_md
    write_report(args.out, target, analyse=not args.no_analysis)
    print(f"wrote {args.out / 'report'}" + (f" and {target}" if target else ""))
    return 0
