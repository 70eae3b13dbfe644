"""What a Hub push/pull round trip of a language SFT costs, against composable-sft's format.

An XLM-R-base-sized language SFT (K = 7,667,712 random entries over XLM-R-base's parameter shapes,
random float32 values) is pushed and pulled through the real ``huggingface_hub`` client against the
loopback FakeHub (tests/fakehub.py), once as an sftkit repo (``sftkit push`` / ``sftkit pull``:
upload, then download + checksum verification + registration) and once as the raw composable-sft
``pytorch_diff.bin`` of the same SFT (upload the file, download it, and download + ``torch.load`` it as
composable-sft does; the baseline). A push also decodes every index set once before publishing. Bytes on the wire
come from the server's request log. A third row pulls the composable-sft repo through sftkit, which
converts it on the way in.

    python benchmarks/bench_registry.py            # full size (about a minute; ~1.5 GiB RAM)
    python benchmarks/bench_registry.py --quick    # K / 20, for a smoke run

Writes benchmarks/results/registry.json and prints a table plus what ``sftkit search --hub`` shows.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fakehub import FakeHub  # noqa: E402

from sftkit.cli._output import format_table, human_bytes  # noqa: E402
from sftkit.delta import SFT, SparseDelta  # noqa: E402
from sftkit.format import save_file  # noqa: E402
from sftkit.metadata import SFTMetadata  # noqa: E402
from sftkit.naming import canonical_parameters  # noqa: E402

K_XLMR_BASE = 7_667_712


def xlmr_base_shapes() -> dict[str, tuple[int, ...]]:
    """Canonical parameter names and shapes of XLM-R base (built on the meta device: no memory)."""
    config = XLMRobertaConfig(vocab_size=250002, max_position_embeddings=514, type_vocab_size=1)
    with torch.device("meta"):
        model = XLMRobertaForMaskedLM(config)
    return {name: tuple(p.parameter.shape) for name, p in canonical_parameters(model).items() if p.in_base}


def random_sft(shapes: dict[str, tuple[int, ...]], k: int, seed: int = 0) -> SFT:
    """K entries spread over the tensors in proportion to their size, at random positions, N(0, 1e-3²) values."""
    gen = torch.Generator().manual_seed(seed)
    numels = {n: int(torch.Size(s).numel()) for n, s in shapes.items()}
    total = sum(numels.values())
    quota = {n: k * m // total for n, m in numels.items()}
    biggest = max(numels, key=numels.__getitem__)
    quota[biggest] += k - sum(quota.values())
    deltas = {}
    for name, shape in shapes.items():
        want = quota[name]
        if want == 0:
            continue
        picked = torch.unique(torch.randint(numels[name], (int(want * 1.1) + 16,), generator=gen))
        while picked.numel() < want:
            extra = torch.randint(numels[name], (want,), generator=gen)
            picked = torch.unique(torch.cat([picked, extra]))
        keep = torch.randperm(picked.numel(), generator=gen)[:want]
        indices = picked[keep].sort().values
        deltas[name] = SparseDelta(shape, indices, torch.randn(want, generator=gen) * 1e-3)
    meta = SFTMetadata(kind="language", language="quy", method="lt-sft", hyperparameters={"num_params": k})
    meta.base.name = "xlm-roberta-base"
    meta.base.architecture = "xlm-roberta"
    return SFT(deltas, {}, meta)


def measured(hub: FakeHub, action: Any) -> dict[str, float]:
    hub.reset_stats()
    start = time.perf_counter()
    action()
    seconds = time.perf_counter() - start
    stats = hub.stats
    return {"seconds": seconds, "bytes_up": stats.bytes_in, "bytes_down": stats.bytes_out, "requests": stats.requests}


def run(k: int, workdir: Path) -> dict[str, Any]:
    from huggingface_hub import HfApi, hf_hub_download

    from sftkit.registry import LocalRegistry, pull, push
    from sftkit.registry.community import write_pytorch_diff

    t0 = time.perf_counter()
    sft = random_sft(xlmr_base_shapes(), k)
    sft_path = workdir / "quy.safetensors"
    save_file(sft, str(sft_path))
    diff_dir = workdir / "composable"
    diff_dir.mkdir()
    diff_path = write_pytorch_diff(sft, diff_dir / "pytorch_diff.bin")
    config = {"_name_or_path": "xlm-roberta-base", "model_type": "xlm-roberta"}
    (diff_dir / "config.json").write_text(json.dumps(config))
    print(f"built SFT (K={sft.nnz:,}) and both files in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    rows: dict[str, dict[str, float]] = {}
    with FakeHub() as hub, hub.patched_client(workdir / "hf"):
        api = HfApi()
        rows["sftkit push"] = measured(hub, lambda: push(sft_path, "bench/xlmr-lang-sft-quy", hub=True))
        rows["sftkit pull (download + verify + register)"] = measured(
            hub, lambda: pull("bench/xlmr-lang-sft-quy", registry=workdir / "reg")
        )

        def raw_push() -> None:
            api.create_repo("bench/xlmr-lang-sft-quy-small", exist_ok=True)
            api.upload_folder(repo_id="bench/xlmr-lang-sft-quy-small", folder_path=diff_dir)

        rows["baseline push pytorch_diff.bin"] = measured(hub, raw_push)
        rows["baseline pull pytorch_diff.bin (download)"] = measured(
            hub, lambda: hf_hub_download("bench/xlmr-lang-sft-quy-small", "pytorch_diff.bin", cache_dir=workdir / "raw")
        )
        def raw_pull_and_load() -> None:
            path = hf_hub_download("bench/xlmr-lang-sft-quy-small", "pytorch_diff.bin", cache_dir=workdir / "raw2")
            torch.load(path, weights_only=False)  # what composable-sft does when it loads an SFT

        rows["baseline pull pytorch_diff.bin + torch.load"] = measured(hub, raw_pull_and_load)
        rows["sftkit pull of the composable-sft repo (convert)"] = measured(
            hub, lambda: pull("bench/xlmr-lang-sft-quy-small", registry=workdir / "reg2")
        )
        from click.testing import CliRunner

        from sftkit.cli.main import main

        hub.reset_stats()
        start = time.perf_counter()
        search_out = CliRunner().invoke(main, ["search", "--hub", "--language", "quy"]).output
        search_cost = {"seconds": time.perf_counter() - start, "bytes_up": hub.stats.bytes_in,
                       "bytes_down": hub.stats.bytes_out, "requests": hub.stats.requests}
        rows["sftkit search --hub --language quy"] = search_cost
        pulled = LocalRegistry(workdir / "reg").get("bench/xlmr-lang-sft-quy")
        assert pulled.file is not None and pulled.file.read_bytes() == sft_path.read_bytes()

    return {
        "k": sft.nnz,
        "numel": sft.numel,
        "sftkit_file_bytes": sft_path.stat().st_size,
        "composable_sft_file_bytes": diff_path.stat().st_size,
        "rows": rows,
        "search_output": search_out,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="K / 20 for a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "registry.json")
    args = parser.parse_args()
    k = K_XLMR_BASE // 20 if args.quick else K_XLMR_BASE
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        result = run(k, Path(tmp))
    result["quick"] = args.quick
    table = format_table(
        [
            (name, human_bytes(r["bytes_up"]), human_bytes(r["bytes_down"]), int(r["requests"]), f"{r['seconds']:.2f}")
            for name, r in result["rows"].items()
        ],
        ["operation", "up", "down", "requests", "seconds"],
    )
    print(f"K = {result['k']:,} of {result['numel']:,} XLM-R-base parameters "
          f"(density {result['k'] / result['numel']:.2%})")
    print(f"file sizes: sftkit {human_bytes(result['sftkit_file_bytes'])}, "
          f"composable-sft pytorch_diff.bin {human_bytes(result['composable_sft_file_bytes'])} "
          f"({result['sftkit_file_bytes'] / result['composable_sft_file_bytes']:.2f}x)")
    print(table)
    print("\n$ sftkit search --hub --language quy")
    print(result["search_output"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
