from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import sftkit.denoising as denoise_module
from sftkit.denoising import DenoiseConfig, denoise, denoise_matrix, select_rank
from sftkit.errors import ConfigError
from sftkit.extraction import select_mask, topk_mask


def planted_spectrum(m: int, n: int, singular_values: list[float], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(singular_values), generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(singular_values), generator=gen, dtype=torch.float64))
    return ((u * torch.tensor(singular_values, dtype=torch.float64)) @ v.T).to(torch.float32)


def truncated(matrix: torch.Tensor, r: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return ((u[:, :r] * s[:r]) @ vh[:r]).float()


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    inter = int(torch.isin(a, b).sum())
    return inter / (a.numel() + b.numel() - inter)


SPECTRUM = [10.0, 6.0, 3.0, 1.0, 0.5, 0.3, 0.2, 0.1]  # energies 100, 36, 9, 1, ... (total 146.39)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"energy": 0.9, "rank": 4}, {"energy": 0.0}, {"energy": 1.5}, {"rank": 0}, {"rank": 2.5},
     {"rank": 4, "residual_keep": -0.1}, {"rank": 4, "residual_keep": 1.2}, {"rank": 4, "svd": "qr"},
     {"rank": 4, "precision": "float16"}, {"rank": 4, "oversample": -1}, {"rank": 4, "max_rank": 0}],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        DenoiseConfig(**kwargs)  # type: ignore[arg-type]


# "sketch": randomized SVD; "gram": a sketch cap of 1 forces the lowrank path onto its exact Gram fallback.
PATHS = {"exact": {"svd": "exact"}, "sketch": {"svd": "lowrank", "oversample": 2}, "gram": {"svd": "lowrank", "max_rank": 1}}


@pytest.fixture
def only_path(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Make the routes a path must not take fail, so each parametrisation tests the route it names."""

    def forbid(path: str) -> None:
        def fail(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"path {path!r} took a route it should not")

        if path != "gram":
            monkeypatch.setattr(denoise_module, "_gram_low_rank", fail)
        if path != "sketch":
            monkeypatch.setattr(torch, "svd_lowrank", fail)

    return forbid


@pytest.mark.parametrize("path", list(PATHS))
def test_fixed_rank_recovers_low_rank_part(path: str, only_path: Callable[[str], None]) -> None:
    only_path(path)
    exact_rank3 = planted_spectrum(60, 40, [5.0, 3.0, 2.0])
    torch.testing.assert_close(denoise_matrix(exact_rank3, DenoiseConfig(rank=3, **PATHS[path])), exact_rank3, atol=1e-5, rtol=0)
    noisy = planted_spectrum(60, 40, SPECTRUM)
    for r in (1, 2):
        # residual_keep=0 is exactly the best rank-r approximation (Eckart–Young).
        out = denoise_matrix(noisy, DenoiseConfig(rank=r, **PATHS[path]))
        torch.testing.assert_close(out, truncated(noisy, r), atol=1e-4, rtol=0)
        torch.testing.assert_close(denoise_matrix(noisy.T, DenoiseConfig(rank=r, **PATHS[path])), out.T, atol=1e-4, rtol=0)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(("energy", "expected_rank"), [(0.6, 1), (0.9, 2), (0.98, 3), (0.995, 4)])
def test_energy_threshold_picks_planted_rank(
    path: str, energy: float, expected_rank: int, only_path: Callable[[str], None]
) -> None:
    only_path(path)
    matrix = planted_spectrum(80, 50, SPECTRUM, seed=1)
    # A first sketch of 1 + 2 columns makes the sketch path grow q until the energy is reached.
    config = DenoiseConfig(energy=energy, initial_rank=1, **PATHS[path])  # type: ignore[arg-type]
    out = denoise_matrix(matrix, config)
    torch.testing.assert_close(out, truncated(matrix, expected_rank), atol=1e-4, rtol=0)


def test_gram_route_for_high_ranks(only_path: Callable[[str], None]) -> None:
    only_path("gram")  # rank + oversample above the sketch cap (min(m, n) // 4) must not sketch
    matrix = planted_spectrum(90, 40, [float(x) for x in range(40, 0, -1)], seed=6)
    for r in (5, 30):  # 30 > 40 / 2 projects out the discarded directions instead
        torch.testing.assert_close(denoise_matrix(matrix, DenoiseConfig(rank=r, svd="lowrank")), truncated(matrix, r),
                                   atol=1e-3, rtol=0)
    wide = matrix.T  # the Gram route works on the short side and hands back a transposed result
    low = denoise_matrix(wide, DenoiseConfig(rank=5, svd="lowrank"))
    kept = denoise_matrix(wide, DenoiseConfig(rank=5, svd="lowrank", residual_keep=0.1))
    assert int((kept != low).sum()) == round(0.1 * wide.numel())


def test_flat_spectrum_energy_search_stops_sketching_early(monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = planted_spectrum(40, 90, [float(x) for x in range(40, 0, -1)], seed=7)
    s = torch.linalg.svdvals(matrix.double())
    expected = select_rank(s, 0.9, float((s**2).sum()))
    assert expected is not None and expected > 10
    sketches: list[int] = []
    real = torch.svd_lowrank

    def counting(a: torch.Tensor, q: int, niter: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sketches.append(q)
        return real(a, q=q, niter=niter)

    monkeypatch.setattr(torch, "svd_lowrank", counting)
    config = DenoiseConfig(energy=0.9, svd="lowrank", initial_rank=2, oversample=2)
    torch.testing.assert_close(denoise_matrix(matrix, config), truncated(matrix, expected), atol=1e-3, rtol=0)
    # One sketch of 4 shows that > 10 components are missing: straight to the exact route, no regrowth.
    assert sketches == [4]


def test_select_rank() -> None:
    s = torch.tensor(SPECTRUM)
    total = float((s.double() ** 2).sum())
    assert select_rank(s, 0.6, total) == 1
    assert select_rank(s, 1.0, total) == len(SPECTRUM)
    assert select_rank(s[:2], 0.99, total) is None
    assert select_rank(s, 0.5, 0.0) == 0


def test_residual_keep_adds_back_largest_residual_entries() -> None:
    matrix = planted_spectrum(50, 30, SPECTRUM, seed=2)
    low = denoise_matrix(matrix, DenoiseConfig(rank=2))
    out = denoise_matrix(matrix, DenoiseConfig(rank=2, residual_keep=0.1))
    changed = (out != low).reshape(-1)
    k = round(0.1 * matrix.numel())
    assert int(changed.sum()) == k
    assert torch.equal(out.reshape(-1)[changed], matrix.reshape(-1)[changed])
    residual = (matrix - low).abs().reshape(-1)
    assert float(residual[changed].min()) >= float(residual[~changed].max())
    assert torch.equal(denoise_matrix(matrix, DenoiseConfig(rank=2, residual_keep=1.0)), matrix)


def test_vectors_pass_through_and_dict_api() -> None:
    bias = torch.randn(7)
    weight = planted_spectrum(20, 10, SPECTRUM[:5])
    out = denoise({"b": bias, "w": weight, "z": torch.zeros(6, 4)}, DenoiseConfig(rank=1))
    assert list(out) == ["b", "w", "z"]
    assert torch.equal(out["b"], bias) and out["b"] is not bias
    torch.testing.assert_close(out["w"], truncated(weight, 1), atol=1e-5, rtol=0)
    assert torch.equal(out["z"], torch.zeros(6, 4))
    assert denoise_matrix(weight.to(torch.bfloat16), DenoiseConfig(rank=1)).dtype == torch.float32
    conv = torch.randn(4, 3, 2)
    assert denoise_matrix(conv, DenoiseConfig(rank=1)).shape == conv.shape
    with pytest.raises(ConfigError, match="^w: .*NaN"):
        denoise({"w": torch.tensor([[1.0, float("nan")], [0.0, 1.0]])}, DenoiseConfig(rank=1))
    with pytest.raises(ConfigError, match="NaN"):
        denoise_matrix(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), DenoiseConfig(rank=1))


def low_rank_plus_noise(m: int, n: int, rank: int, noise: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    signal = torch.randn(m, rank, generator=gen) @ torch.randn(rank, n, generator=gen) / rank**0.5
    return signal + noise * torch.randn(m, n, generator=gen)


@pytest.mark.parametrize("config", [{"rank": 10}, {"energy": 0.8, "residual_keep": 0.02}])
def test_lowrank_and_exact_svd_pick_nearly_the_same_mask(config: dict[str, object]) -> None:
    delta = low_rank_plus_noise(2000, 300, rank=10, noise=0.3, seed=3)
    k = delta.numel() // 10
    masks = {}
    for svd in ("exact", "lowrank"):
        masks[svd] = select_mask({"w": delta}, k, DenoiseConfig(svd=svd, **config))["w"]  # type: ignore[arg-type]
    assert jaccard(masks["exact"], masks["lowrank"]) >= 0.95
    again = select_mask({"w": delta}, k, DenoiseConfig(svd="lowrank", **config))["w"]  # type: ignore[arg-type]
    assert torch.equal(again, masks["lowrank"])  # seeded sketch: same δ, same mask


def test_auto_uses_lowrank_above_threshold() -> None:
    delta = low_rank_plus_noise(300, 200, rank=5, noise=0.01, seed=4)
    exact = denoise_matrix(delta, DenoiseConfig(rank=5, svd="exact"))
    auto_small = denoise_matrix(delta, DenoiseConfig(rank=5))
    auto_large = denoise_matrix(delta, DenoiseConfig(rank=5, lowrank_threshold=1000))
    lowrank = denoise_matrix(delta, DenoiseConfig(rank=5, svd="lowrank"))
    assert torch.equal(auto_small, exact)
    assert torch.equal(auto_large, lowrank)
    torch.testing.assert_close(lowrank, exact, atol=1e-3, rtol=0)


@pytest.mark.parametrize("config", [DenoiseConfig(rank=1), DenoiseConfig(energy=0.5), DenoiseConfig(rank=1, svd="lowrank")])
def test_planted_signal_support_recovered_better_than_magnitude(config: DenoiseConfig) -> None:
    """δ = rank-1 signal on a block of rows + large isolated spikes: spikes win a plain top-K, not DeFT-X."""
    gen = torch.Generator().manual_seed(5)
    m, n, signal_rows = 200, 100, 20

    def bounded(size: int) -> torch.Tensor:  # magnitudes in [0.5, 1.5], random signs
        return (0.5 + torch.rand(size, generator=gen)) * torch.where(torch.rand(size, generator=gen) < 0.5, -1.0, 1.0)

    delta = torch.zeros(m, n)
    delta[:signal_rows] = torch.outer(bounded(signal_rows), bounded(n))
    spikes = signal_rows * n + torch.randperm((m - signal_rows) * n, generator=gen)[:100]
    delta.view(-1)[spikes] = 4.0 * torch.where(torch.rand(100, generator=gen) < 0.5, -1.0, 1.0)
    support = torch.arange(signal_rows * n)
    k = support.numel()

    plain = select_mask({"w": delta}, k)["w"]
    deftx = select_mask({"w": delta}, k, config)["w"]
    recall_plain = int(torch.isin(plain, support).sum()) / k
    recall_deftx = int(torch.isin(deftx, support).sum()) / k
    assert recall_plain <= 0.96  # every spike outranks the weakest signal entries
    assert recall_deftx >= 0.99
    assert torch.equal(plain, topk_mask({"w": delta}, k)["w"])
