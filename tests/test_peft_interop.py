"""PEFT interop: an SFT exported as a Super-Tuning adapter gives PEFT the sftkit logits, and reads back."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from sftkit.compose import apply
from sftkit.delta import SFT, SparseDelta
from sftkit.errors import ConfigError, FormatError, MissingParameterError
from sftkit.interop.peft import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    coalesce,
    export_peft,
    import_peft,
    pad_support,
    plan_export,
    shared_sparsity,
)
from sftkit.metadata import SFTMetadata
from sftkit.naming import canonical_parameters
from sftkit.testing import tiny_classifier, tiny_masked_lm

HAVE_PEFT = importlib.util.find_spec("peft") is not None
requires_peft = pytest.mark.skipif(not HAVE_PEFT, reason="peft is not installed; pip install 'sftkit[peft]'")

LINEAR_WEIGHTS = (
    "encoder.layer.0.attention.self.query.weight",
    "encoder.layer.0.intermediate.dense.weight",
    "encoder.layer.1.attention.output.dense.weight",
    "encoder.layer.1.output.dense.weight",
)
# Parameters Super-Tuning cannot adapt: a tied embedding, a bias of an adapted Linear, a LayerNorm,
# an untied embedding, and the MLM bias that a parent module re-registers from its child.
RESIDUAL = (
    "embeddings.word_embeddings.weight",
    "encoder.layer.0.intermediate.dense.bias",
    "encoder.layer.1.output.LayerNorm.weight",
    "embeddings.position_embeddings.weight",
    "lm_head.bias",
)


def random_sft(model: nn.Module, names: tuple[str, ...], seed: int = 0, dense: tuple[str, ...] = ()) -> SFT:
    """Sparse deltas of varying density on ``names`` and random dense replacements for ``dense``."""
    gen = torch.Generator().manual_seed(seed)
    params = canonical_parameters(model)
    deltas = {}
    for i, name in enumerate(names):
        shape = tuple(params[name].parameter.shape)
        density = 0.02 + 0.05 * i
        mask = torch.rand(shape, generator=gen) < density
        mask.view(-1)[0] = True  # never empty
        deltas[name] = SparseDelta.from_dense(torch.randn(shape, generator=gen) * 0.1, mask)
    replacements = {n: torch.randn(params[n].parameter.shape, generator=gen) for n in dense}
    return SFT(deltas, replacements, SFTMetadata(kind="task", task="probe", method="test"))


def composed_reference(model: nn.Module, sft: SFT) -> nn.Module:
    """A copy of ``model`` with ``sft`` composed by sftkit's composer (the behaviour PEFT must match)."""
    clone = copy.deepcopy(model)
    apply(clone, [sft], revertible=False)
    return clone


def logits(model: nn.Module) -> torch.Tensor:
    ids = torch.tensor([[0, 5, 17, 42, 99, 7, 2], [0, 64, 3, 118, 2, 1, 1]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=(ids != 1).long()).logits


def peft_logits(fresh_base: nn.Module, adapter: Path) -> torch.Tensor:
    from peft import PeftModel

    return logits(PeftModel.from_pretrained(fresh_base, str(adapter)).eval())


@requires_peft
def test_linear_weights_export_matches_composition_and_roundtrips(tmp_path: Path) -> None:
    base = tiny_classifier(seed=0)
    sft = random_sft(base, LINEAR_WEIGHTS)
    out = export_peft(sft, base, tmp_path / "adapter")

    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["peft_type"] == "SUPERTUNING" and config["modules_to_save"] is None
    assert sorted(config["target_modules"]) == sorted(
        f"roberta.{n.removesuffix('.weight')}" for n in LINEAR_WEIGHTS
    )
    stored = load_file(str(out / WEIGHTS_NAME))
    assert {t.dtype for k, t in stored.items() if k.endswith("indices")} == {torch.int32}
    lengths = {
        k.removeprefix("base_model.model.roberta.").replace("supertuning_indices", "weight"): t.numel()
        for k, t in stored.items()
        if k.endswith("indices")
    }
    assert any(lengths[n] > sft.deltas[n].nnz for n in LINEAR_WEIGHTS)  # padding was exercised

    expected = logits(composed_reference(base, sft))
    assert not torch.allclose(expected, logits(base), atol=1e-4)  # the SFT really changes the output
    torch.testing.assert_close(peft_logits(tiny_classifier(seed=0), out), expected, atol=1e-5, rtol=0)

    back = import_peft(out)
    assert back == sft
    full_names = SFT({f"roberta.{n}": d for n, d in sft.deltas.items()}, {}, sft.metadata)
    assert import_peft(export_peft(full_names, base, tmp_path / "full-names")) == sft  # names canonicalised
    assert back.metadata.task == "probe" and back.metadata.provenance["format"] == "peft-supertuning"


@requires_peft
def test_residual_parameters_are_materialized_exactly(tmp_path: Path) -> None:
    base = tiny_masked_lm(seed=0)
    sft = random_sft(base, LINEAR_WEIGHTS + RESIDUAL, seed=3)
    plan = plan_export(sft, base)
    assert "roberta.encoder.layer.0.intermediate.dense" in plan.materialized  # bias delta → whole Linear
    assert {"roberta.embeddings.word_embeddings", "lm_head.decoder"} <= set(plan.materialized)  # tied
    assert "lm_head" not in plan.materialized  # only re-registers lm_head.decoder.bias

    out = export_peft(sft, base, tmp_path / "adapter")
    expected = logits(composed_reference(base, sft))
    torch.testing.assert_close(peft_logits(tiny_masked_lm(seed=0), out), expected, atol=1e-5, rtol=0)

    back = import_peft(out)
    targets = {f"{m.removeprefix('roberta.')}.weight" for m in plan.targets}
    assert SFT(back.deltas) == SFT({n: sft.deltas[n] for n in targets})
    assert "embeddings.word_embeddings.weight" in back.dense  # tied copies fold to one canonical tensor
    torch.testing.assert_close(logits(composed_reference(base, back)), expected, atol=1e-5, rtol=0)


@requires_peft
def test_dense_head_from_saved_base_path(tmp_path: Path) -> None:
    base = tiny_classifier(seed=0)
    base.save_pretrained(tmp_path / "base")
    head = (
        "classifier.dense.weight",
        "classifier.dense.bias",
        "classifier.out_proj.weight",
        "classifier.out_proj.bias",
    )
    sft = random_sft(base, LINEAR_WEIGHTS[:2], seed=5, dense=head)
    out = export_peft(sft, str(tmp_path / "base"), tmp_path / "adapter")
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    assert sorted(config["modules_to_save"]) == ["classifier.dense", "classifier.out_proj"]
    expected = logits(composed_reference(base, sft))
    torch.testing.assert_close(peft_logits(tiny_classifier(seed=0), out), expected, atol=1e-5, rtol=0)
    assert import_peft(out) == sft  # dense replacements come back as dense

    head_only = SFT({}, sft.dense, sft.metadata)  # PEFT needs an adapted module: a no-op placeholder
    out = export_peft(head_only, base, tmp_path / "head-only")
    expected = logits(composed_reference(base, head_only))
    torch.testing.assert_close(peft_logits(tiny_classifier(seed=0), out), expected, atol=1e-5, rtol=0)
    assert import_peft(out) == head_only


@requires_peft
def test_without_materialize_drops_with_one_notice_or_refuses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = tiny_masked_lm(seed=0)
    sft = random_sft(base, LINEAR_WEIGHTS + RESIDUAL, seed=7)
    with caplog.at_level(logging.WARNING, logger="sftkit"):
        out = export_peft(sft, base, tmp_path / "adapter", materialize=False)
    notices = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(notices) == 1 and "\n" not in notices[0] and "5 parameter(s)" in notices[0]
    assert "embeddings.word_embeddings.weight" in notices[0]

    expressible = SFT({n: d for n, d in sft.deltas.items() if n in LINEAR_WEIGHTS}, {}, sft.metadata)
    expected = logits(composed_reference(base, expressible))
    assert not torch.allclose(expected, logits(composed_reference(base, sft)), atol=1e-4)  # the drop shows
    torch.testing.assert_close(peft_logits(tiny_masked_lm(seed=0), out), expected, atol=1e-5, rtol=0)
    assert import_peft(out) == expressible

    with pytest.raises(ConfigError, match="cannot carry 5 parameter"):
        export_peft(sft, base, tmp_path / "strict", materialize=False, strict=True)
    assert not (tmp_path / "strict").exists()


@requires_peft
def test_head_the_base_lacks_is_skipped_like_the_composer_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    task = random_sft(tiny_classifier(seed=0), LINEAR_WEIGHTS, dense=("classifier.out_proj.bias",))
    mlm = tiny_masked_lm(seed=0)
    with caplog.at_level(logging.WARNING, logger="sftkit"):
        out = export_peft(task, mlm, tmp_path / "adapter")
    assert [r.getMessage() for r in caplog.records if "not in the base model" in r.getMessage()]
    expected = logits(composed_reference(mlm, task))  # the composer skips the head too
    torch.testing.assert_close(peft_logits(tiny_masked_lm(seed=0), out), expected, atol=1e-5, rtol=0)
    with pytest.raises(MissingParameterError, match="classifier.out_proj.bias"):
        export_peft(task, mlm, tmp_path / "strict", strict=True)


@requires_peft
def test_imports_a_peft_trained_shira_adapter(tmp_path: Path) -> None:
    from peft import ShiraConfig, get_peft_model

    targets = ["roberta.encoder.layer.0.attention.self.value", "roberta.encoder.layer.1.intermediate.dense"]
    peft_model = get_peft_model(
        tiny_classifier(seed=0), ShiraConfig(r=2, target_modules=targets, init_weights=False)
    )
    peft_model.save_pretrained(str(tmp_path / "shira"))
    expected = logits(peft_model.eval())

    base = tiny_classifier(seed=0)
    sft = import_peft(tmp_path / "shira", base=base)
    assert sorted(sft.deltas) == sorted(f"{t.removeprefix('roberta.')}.weight" for t in targets)
    torch.testing.assert_close(logits(composed_reference(base, sft)), expected, atol=1e-5, rtol=0)


@requires_peft
def test_imports_a_supertuning_adapter_saved_without_indices(tmp_path: Path) -> None:
    from peft import SupertuningConfig, get_peft_model

    config = SupertuningConfig(
        target_modules=["query", "output.dense"],
        sparsity=0.9,
        init_weights=False,
        save_precomputed_indices=False,
    )
    peft_model = get_peft_model(tiny_classifier(seed=0), config)
    peft_model.save_pretrained(str(tmp_path / "magnitude"))
    expected = logits(peft_model.eval())
    assert not any("indices" in k for k in load_file(str(tmp_path / "magnitude" / WEIGHTS_NAME)))

    with pytest.raises(FormatError, match="pass base="):
        import_peft(tmp_path / "magnitude")
    base = tiny_classifier(seed=0)
    sft = import_peft(tmp_path / "magnitude", base=base)
    assert len(sft) == 6  # query and attention/output dense of both layers
    torch.testing.assert_close(logits(composed_reference(base, sft)), expected, atol=1e-5, rtol=0)


def test_foreign_adapter_without_header_needs_base(tmp_path: Path) -> None:
    base = tiny_classifier(seed=0)
    sft = random_sft(base, LINEAR_WEIGHTS)
    out = export_peft(sft, base, tmp_path / "adapter")
    save_file(load_file(str(out / WEIGHTS_NAME)), str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    with pytest.raises(FormatError, match="pass base="):
        import_peft(out)
    assert import_peft(out, base=tiny_classifier(seed=0)) == sft


def test_errors_are_one_line(tmp_path: Path) -> None:
    base = tiny_classifier(seed=0)
    sft = random_sft(base, LINEAR_WEIGHTS[:1])
    out = export_peft(sft, base, tmp_path / "adapter")

    def one_line(exc_info: pytest.ExceptionInfo[BaseException]) -> None:
        assert "\n" not in str(exc_info.value)

    with pytest.raises(FormatError, match="adapter_config.json: missing") as info:
        import_peft(tmp_path)
    one_line(info)

    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(FormatError, match="peft_type 'LORA' is not a sparse method") as info:
        import_peft(lora)
    one_line(info)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / CONFIG_NAME).write_text((out / CONFIG_NAME).read_text())
    torch.save(load_file(str(out / WEIGHTS_NAME)), pickled / "adapter_model.bin")
    with pytest.raises(FormatError, match="allow_pickle_weights=True"):
        import_peft(pickled)
    assert import_peft(pickled, base=base, allow_pickle_weights=True) == sft

    wider = tiny_classifier(seed=0, hidden_size=48)
    with pytest.raises(FormatError, match=r"shape \[32, 32\] in the SFT but \[48, 48\] in the base") as info:
        export_peft(sft, wider, tmp_path / "wider")
    one_line(info)
    with pytest.raises(
        FormatError, match=r"shape \[32, 32\] in the adapter but \[16, 16\] in the base"
    ) as info:
        import_peft(out, base=tiny_classifier(seed=0, hidden_size=16))
    one_line(info)
    save_file(load_file(str(out / WEIGHTS_NAME)), str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    with pytest.raises(FormatError, match="index out of range") as info:
        import_peft(out, base=tiny_classifier(seed=0, hidden_size=16))
    one_line(info)

    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        export_peft(sft, base, stray)
    assert (stray / "notes.txt").read_text() == "keep me"


def test_reexport_replaces_the_directory_atomically(tmp_path: Path) -> None:
    base = tiny_classifier(seed=0)
    first = random_sft(base, LINEAR_WEIGHTS, seed=1)
    second = random_sft(base, LINEAR_WEIGHTS[:1], seed=2)
    export_peft(first, base, tmp_path / "adapter")
    export_peft(second, base, tmp_path / "adapter")
    assert import_peft(tmp_path / "adapter") == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging or retired directories left


def test_half_precision_values_come_back_in_their_dtype(tmp_path: Path) -> None:
    base = tiny_classifier(seed=0)
    sft = random_sft(base, LINEAR_WEIGHTS)
    half = SFT({n: d.to(torch.bfloat16) for n, d in sft.deltas.items()}, {}, sft.metadata)
    out = export_peft(half, base, tmp_path / "adapter")
    assert (
        load_file(str(out / WEIGHTS_NAME))[
            "base_model.model.roberta.encoder.layer.0.attention.self.query.supertuning_values"
        ].dtype
        == torch.float32
    )  # what PEFT's parameter holds
    assert import_peft(out) == half


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 5000)), min_size=1, max_size=6))
def test_shared_sparsity_allocates_enough_in_every_layer(pairs: list[tuple[int, int]]) -> None:
    layers = {f"m{i}": (min(a, b), max(a, b)) for i, (a, b) in enumerate(pairs)}
    sparsity = shared_sparsity(layers)
    assert 0.0 <= sparsity < 1.0
    sizes = {m: int(numel * (1 - sparsity)) for m, (nnz, numel) in layers.items()}
    assert all(nnz <= sizes[m] <= numel for m, (nnz, numel) in layers.items())
    densest = max(layers.values(), key=lambda p: p[0] / p[1])
    assert int(densest[1] * (1 - sparsity)) - densest[0] <= 1  # no gratuitous padding


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.integers(0, 50), st.integers(0, 2**16))
def test_padding_is_invisible_after_coalesce(numel: int, extra: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    nnz = int(torch.randint(1, numel + 1, (1,), generator=gen))
    indices = torch.randperm(numel, generator=gen)[:nnz].sort().values
    values = torch.randn(nnz, generator=gen)
    values[0] = 0.0  # an explicit zero survives the round trip
    padded_idx, padded_val = pad_support(indices, values, nnz + extra)
    assert padded_idx.numel() == nnz + extra
    dense = torch.zeros(numel).scatter_add(0, padded_idx, padded_val)
    assert torch.equal(dense, SparseDelta((numel,), indices, values).to_dense())
    order = torch.randperm(nnz + extra, generator=gen)
    back = coalesce(padded_idx[order], padded_val[order], (numel,), "t")
    assert torch.equal(back.indices, indices) and torch.equal(back.values, values)
