"""Data for the cross-lingual experiments: the on-disk layout, the leakage filter, prepared files.

The layout is the one of ``../shared/data`` (see docs/results.md): NusaX sentiment folders per
language, NusaWrites unlabeled text, AmericasNLI ``{dev,test}/<lang>.tsv``, AmericasNLP 2021
``<lang>-spanish/`` text, and SICK. Any NusaX language folder or AmericasNLI language file in that
layout works without a code change: language text is found by file name, not by a list of languages.

Rule enforced here (the zero-shot result is meaningless otherwise): no language SFT trains on a
sentence of any test or dev split. :class:`LeakageFilter` holds every normalised test/dev sentence of
every dataset present and drops equal unlabeled lines; what it dropped is counted per source file.
"""

from __future__ import annotations

import csv
import os
import random
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.errors import ConfigError

NUSAX_CODES = {
    "english": "eng", "indonesian": "ind", "javanese": "jav", "sundanese": "sun", "acehnese": "ace",
    "balinese": "ban", "banjarese": "bjn", "buginese": "bug", "madurese": "mad", "minangkabau": "min",
    "ngaju": "nij", "toba_batak": "bbc",
}
"""NusaX folder → ISO 639-3 code (used for NusaWrites file names and SFT metadata); unknown folders use their name."""

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_SPACE = re.compile(r"\s+")
_SPLIT_PART = re.compile(r"(^|[^a-z0-9])(test|dev)([^a-z0-9]|$)", re.IGNORECASE)


def normalise(text: str) -> str:
    """The key two sentences are compared by: NFKC, case-folded, punctuation and spacing removed.

    Loose on purpose: a test sentence that reappears with other quotes or spacing is still the same sentence.
    """
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def clean_line(text: str) -> str:
    """One line of text: inner line breaks and tabs become spaces (one example per line in .txt/.tsv files)."""
    return _SPACE.sub(" ", text).strip()


def nusax_code(folder: str) -> str:
    return NUSAX_CODES.get(folder, folder)


# ------------------------------------------------------------------------------------------- readers


def _read_table(path: Path, delimiter: str, quoting: int = csv.QUOTE_MINIMAL) -> Iterator[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        yield from csv.DictReader(handle, delimiter=delimiter, quoting=quoting)


def _read_column(path: Path, column: str) -> list[str]:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    quoting = csv.QUOTE_NONE if path.suffix == ".tsv" else csv.QUOTE_MINIMAL
    return [clean_line(row.get(column) or "") for row in _read_table(path, delimiter, quoting)]


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        return [clean_line(line) for line in handle]


def read_sick(path: Path) -> list[dict[str, str]]:
    """SICK rows as ``premise, hypothesis, label (lowercase), split`` (TRAIN / TRIAL / TEST)."""
    rows = []
    for row in _read_table(path, "\t", csv.QUOTE_NONE):
        rows.append({
            "premise": clean_line(row["sentence_A"]), "hypothesis": clean_line(row["sentence_B"]),
            "label": row["entailment_label"].strip().lower(), "split": row["SemEval_set"].strip().upper(),
        })
    return rows


# ------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """Where each dataset lives under ``data_dir`` (the layout of ``../shared/data``)."""

    root: Path

    @property
    def nusax(self) -> Path:
        return self.root / "nusax" / "sentiment"

    @property
    def nusa_writes(self) -> Path:
        return self.root / "nusa-writes"

    @property
    def anli(self) -> Path:
        return self.root / "americasnli"

    @property
    def americasnlp(self) -> Path:
        return self.root / "americasnlp2021"

    @property
    def sick(self) -> Path:
        return self.root / "sick" / "SICK.txt"

    def nusax_split(self, folder: str, split: str) -> Path:
        return self.nusax / folder / f"{split}.csv"

    def anli_split(self, language: str, split: str) -> Path:
        return self.anli / split / f"{language}.tsv"

    def check_nusax(self, folders: Sequence[str]) -> None:
        for folder in folders:
            for split in ("train", "valid", "test"):
                if not self.nusax_split(folder, split).is_file():
                    raise ConfigError(
                        f"{self.nusax_split(folder, split)} is missing; --nusax-languages names NusaX folders under {self.nusax}"
                    )

    def check_anli(self, languages: Sequence[str]) -> None:
        if languages and not self.sick.is_file():
            raise ConfigError(f"{self.sick} is missing; AmericasNLI transfer trains its task SFT on SICK (English NLI)")
        for language in languages:
            if not self.anli_split(language, "test").is_file():
                raise ConfigError(
                    f"{self.anli_split(language, 'test')} is missing; --anli-languages names files under {self.anli / 'test'}"
                )


# ------------------------------------------------------------------------------------ leakage filter


@dataclass
class LeakageFilter:
    """Every normalised test/dev sentence of every dataset present; :meth:`keep` says if a line may train."""

    sentences: set[str] = field(default_factory=set)
    sources: dict[str, int] = field(default_factory=dict)
    """Test/dev file → number of sentences it contributed."""

    def add(self, source: str, texts: Iterable[str]) -> None:
        keys = {normalise(t) for t in texts}
        keys.discard("")
        self.sentences |= keys
        self.sources[source] = len(keys)

    def keep(self, text: str) -> bool:
        return normalise(text) not in self.sentences


def build_leakage_filter(layout: Layout) -> LeakageFilter:
    """All test and dev sentences found under the layout, whatever languages this run uses.

    NusaX ``test.csv`` of every folder, AmericasNLI dev and test (premise and hypothesis) of every
    language, the SICK test split, and NusaWrites' own test files.
    """
    leak = LeakageFilter()
    if layout.nusax.is_dir():
        for test in sorted(layout.nusax.glob("*/test.csv")):
            leak.add(str(test.relative_to(layout.root)), _read_column(test, "text"))
    for split in ("dev", "test"):
        for file in sorted((layout.anli / split).glob("*.tsv")) if (layout.anli / split).is_dir() else []:
            texts = _read_column(file, "premise") + _read_column(file, "hypothesis")
            leak.add(str(file.relative_to(layout.root)), texts)
    if layout.sick.is_file():
        rows = [r for r in read_sick(layout.sick) if r["split"] == "TEST"]
        leak.add("sick/SICK.txt (TEST)", [r["premise"] for r in rows] + [r["hypothesis"] for r in rows])
    if layout.nusa_writes.is_dir():
        for file in sorted(layout.nusa_writes.glob("nusa_*-test.csv")):
            column = "text" if "alinea" in file.name else "tgt_text"
            leak.add(str(file.relative_to(layout.root)), _read_column(file, column))
    return leak


# ------------------------------------------------------------------------------------- text sources


@dataclass(frozen=True)
class TextSource:
    """One file of unlabeled text: a table column (``column``) or plain lines (``column=None``)."""

    path: Path
    column: str | None = None
    sick_splits: tuple[str, ...] = ()
    """For SICK: the splits whose sentences are used (its test split never is)."""

    def read(self) -> list[str]:
        if self.sick_splits:
            rows = [r for r in read_sick(self.path) if r["split"] in self.sick_splits]
            return [r["premise"] for r in rows] + [r["hypothesis"] for r in rows]
        if self.column is None:
            return _read_lines(self.path)
        return _read_column(self.path, self.column)


def _is_split_file(path: Path, root: Path) -> bool:
    """Named like a test or dev split (``test.csv``, ``nusa_kalimat-mt-jav-test.csv``, ``dev/…``)."""
    return any(_SPLIT_PART.search(part) for part in path.relative_to(root).parts)


def nusax_text_sources(layout: Layout, folder: str) -> list[TextSource]:
    """NusaX train+valid text of ``folder``, plus NusaWrites train/valid files of its code when present."""
    sources = [TextSource(layout.nusax_split(folder, split), "text") for split in ("train", "valid")]
    code = nusax_code(folder)
    if layout.nusa_writes.is_dir():
        for file in sorted(layout.nusa_writes.glob(f"nusa_*-{code}-*.csv")):
            if _is_split_file(file, layout.nusa_writes):
                continue
            sources.append(TextSource(file, "text" if "alinea" in file.name else "tgt_text"))
    return sources


def anli_text_sources(layout: Layout, language: str) -> list[TextSource]:
    """Every AmericasNLP 2021 file whose name ends in ``.<language>`` (train, parallel, dictionary), no dev/test."""
    if not layout.americasnlp.is_dir():
        return []
    files = sorted(p for p in layout.americasnlp.rglob(f"*.{language}") if p.is_file())
    return [TextSource(p) for p in files if not _is_split_file(p, layout.americasnlp)]


def english_text_sources(layout: Layout) -> list[TextSource]:
    """English unlabeled text: NusaX English train+valid and SICK train+trial sentences (never SICK test)."""
    sources = [TextSource(layout.nusax_split("english", s), "text") for s in ("train", "valid")]
    sources = [s for s in sources if s.path.is_file()]
    if layout.sick.is_file():
        sources.append(TextSource(layout.sick, sick_splits=("TRAIN", "TRIAL")))
    return sources


# ------------------------------------------------------------------------------------------- writing


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_language_text(
    sources: Sequence[TextSource],
    output: Path,
    leak: LeakageFilter,
    *,
    root: Path,
    max_lines: int | None = None,
) -> dict[str, Any]:
    """Filter, de-duplicate and write the unlabeled text of one language (one line per text).

    Returns what happened per source (lines read, dropped as test/dev sentences, duplicates) so the
    report can state exactly what the leakage filter removed. ``max_lines`` keeps a fixed random
    sample (seed 0, the same for every run seed) when the corpus is larger than the training will see.
    """
    seen: set[str] = set()
    lines: list[str] = []
    per_source = []
    for source in sources:
        read = dropped = duplicates = 0
        for text in source.read():
            if not text:
                continue
            read += 1
            if not leak.keep(text):
                dropped += 1
                continue
            if text in seen:
                duplicates += 1
                continue
            seen.add(text)
            lines.append(text)
        per_source.append({
            "file": str(source.path.relative_to(root)) if source.path.is_relative_to(root) else str(source.path),
            **({"column": source.column} if source.column else {}),
            "lines": read, "leaked_dropped": dropped, "duplicates": duplicates,
        })
    if not lines:
        names = ", ".join(str(s.path) for s in sources) or "no files found"
        raise ConfigError(f"no unlabeled text left for {output.stem} ({names}); add text files for this language")
    available = len(lines)
    if max_lines is not None and len(lines) > max_lines:
        lines = random.Random(0).sample(lines, max_lines)
    atomic_write_text(output, "\n".join(lines) + "\n")
    return {
        "file": str(output), "sources": per_source, "lines_available": available, "lines_written": len(lines),
        "leaked_dropped": sum(s["leaked_dropped"] for s in per_source),
    }


def write_tsv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, str]]) -> int:
    """A TSV read back by sftkit without quote processing (tabs/newlines inside fields become spaces)."""
    body = ["\t".join(columns)]
    for row in rows:
        body.append("\t".join(clean_line(str(row[c])) for c in columns))
    atomic_write_text(path, "\n".join(body) + "\n")
    return len(body) - 1


def _limited(rows: list[dict[str, str]], limit: int | None) -> list[dict[str, str]]:
    if limit is None or len(rows) <= limit:
        return rows
    return random.Random(0).sample(rows, limit)


def write_nusax_split(layout: Layout, folder: str, split: str, output: Path, limit: int | None = None) -> int:
    path = layout.nusax_split(folder, split)
    rows = [{"text": clean_line(r["text"]), "label": r["label"].strip()} for r in _read_table(path, ",")]
    return write_tsv(output, ("text", "label"), _limited(rows, limit))


def balanced(rows: list[dict[str, str]], limit: int | None = None, key: str = "label") -> list[dict[str, str]]:
    """Every label equally often: each class sampled (seed 0) down to the rarest class's count, or to
    ``limit // classes``; the result is shuffled so batches mix the classes.

    SICK is 57 % neutral and 14 % contradiction while AmericasNLI is balanced; a classifier trained on
    SICK's prior falls back to "neutral" for every pair in a language it cannot read.
    """
    by_label: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_label.setdefault(row[key], []).append(row)
    if not by_label:
        return []
    per_class = min(len(group) for group in by_label.values())
    if limit is not None:
        per_class = min(per_class, limit // len(by_label))
    rng = random.Random(0)
    chosen = [row for label in sorted(by_label) for row in rng.sample(by_label[label], per_class)]
    rng.shuffle(chosen)
    return chosen


def write_sick_split(
    layout: Layout, splits: Sequence[str], output: Path, limit: int | None = None, *, balance: bool = False
) -> int:
    """SICK rows of ``splits`` as an NLI TSV; ``balance`` gives every label the same count (see :func:`balanced`)."""
    rows = [r for r in read_sick(layout.sick) if r["split"] in splits]
    chosen = balanced(rows, limit) if balance else _limited(rows, limit)
    return write_tsv(output, ("premise", "hypothesis", "label"), chosen)


def write_anli_split(layout: Layout, language: str, split: str, output: Path, limit: int | None = None) -> int:
    path = layout.anli_split(language, split)
    rows = [
        {"premise": r["premise"], "hypothesis": r["hypothesis"], "label": r["label"].strip()}
        for r in _read_table(path, "\t", csv.QUOTE_NONE)
    ]
    return write_tsv(output, ("premise", "hypothesis", "label"), _limited(rows, limit))


# ------------------------------------------------------------------------------ offline sample layout


def write_sample_layout(dest: Path, *, anli_language: str = "smp") -> Path:
    """A miniature data layout from sftkit's bundled sample corpus, for the smoke test without ../shared.

    NusaX English/Javanese/Sundanese come from the real sample rows. There is no NLI data in the
    package, so the SICK and AmericasNLI files are *synthetic* pairs built from those sentences
    (entailment = same sentence, contradiction = negated, neutral = another sentence): they exercise
    the pipeline, they measure nothing.
    """
    from sftkit.data import sample_path

    nusax = dest / "nusax" / "sentiment"
    eng_train = list(_read_table(sample_path("eng-train"), ","))
    eng_valid = list(_read_table(sample_path("eng-validation"), ","))
    _write_csv(nusax / "english" / "train.csv", eng_train[:60])
    _write_csv(nusax / "english" / "valid.csv", eng_valid[:20])
    _write_csv(nusax / "english" / "test.csv", eng_valid[20:40])
    for code, folder in (("jav", "javanese"), ("sun", "sundanese")):
        text = [t for t in _read_lines(sample_path(f"{code}-text")) if t]
        test = list(_read_table(sample_path(f"{code}-test"), ","))
        _write_csv(nusax / folder / "train.csv", [{"text": t, "label": "neutral"} for t in text[:80]])
        _write_csv(nusax / folder / "valid.csv", [{"text": t, "label": "neutral"} for t in text[80:100]])
        _write_csv(nusax / folder / "test.csv", test[:30])
    english = [clean_line(r["text"]) for r in eng_train]
    javanese = [t for t in _read_lines(sample_path("jav-text")) if t]

    def pairs(sentences: list[str], start: int, count: int) -> list[dict[str, str]]:
        rows = []
        for i in range(start, start + count):
            s, other = sentences[i % len(sentences)], sentences[(i + 7) % len(sentences)]
            kind = i % 3
            hypothesis = s if kind == 0 else ("not " + s if kind == 1 else other)
            rows.append({"premise": s, "hypothesis": hypothesis, "label": ("entailment", "contradiction", "neutral")[kind]})
        return rows

    sick_rows = [
        {"pair_ID": str(i), "sentence_A": r["premise"], "sentence_B": r["hypothesis"],
         "entailment_label": r["label"].upper(), "SemEval_set": split}
        for i, (r, split) in enumerate(
            [(r, "TRAIN") for r in pairs(english, 0, 60)] + [(r, "TRIAL") for r in pairs(english, 60, 15)]
            + [(r, "TEST") for r in pairs(english, 75, 15)]
        )
    ]
    write_tsv(dest / "sick" / "SICK.txt", ("pair_ID", "sentence_A", "sentence_B", "entailment_label", "SemEval_set"), sick_rows)
    anli_rows = [{"id": str(i), "language": anli_language, **r} for i, r in enumerate(pairs(javanese, 200, 45))]
    columns = ("id", "language", "premise", "hypothesis", "label")
    write_tsv(dest / "americasnli" / "test" / f"{anli_language}.tsv", columns, anli_rows[:30])
    write_tsv(dest / "americasnli" / "dev" / f"{anli_language}.tsv", columns, anli_rows[30:])
    text_dir = dest / "americasnlp2021" / f"{anli_language}-spanish"
    # The first two lines repeat test premises: the leakage filter must drop them.
    leaked = [anli_rows[0]["premise"], anli_rows[1]["hypothesis"]]
    atomic_write_text(text_dir / f"train.{anli_language}", "\n".join(leaked + javanese[:150]) + "\n")
    return dest


def _write_csv(path: Path, rows: Sequence[dict[str, str]]) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["text", "label"], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
