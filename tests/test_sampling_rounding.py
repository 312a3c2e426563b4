"""Samplers with an oracle denoiser, and FAISS rounding against exact torch search."""

import pytest
import torch

from textdiff.diffusion.gaussian import GaussianProcess
from textdiff.diffusion.gaussian_samplers import GAUSSIAN_SAMPLERS
from textdiff.diffusion.rounding import Rounder, torch_nearest


@pytest.mark.parametrize("sampler", sorted(GAUSSIAN_SAMPLERS))
@pytest.mark.parametrize("clamp", [False, True])
@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_oracle_lands_on_the_data(oracle_factory, sampler, clamp, prediction):
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(50, 8, generator=gen)
    ids = torch.randint(0, 50, (4, 12), generator=gen)
    p = GaussianProcess("sqrt", prediction=prediction)
    oracle = oracle_factory(table, ids, p)
    out = p.sample(
        oracle,
        (4, 12),
        steps=25,
        sampler=sampler,
        clamp=clamp,
        rounder=Rounder(table),
        generator=gen,
        return_trajectory=True,
    )
    assert torch.equal(out.ids, ids)
    assert torch.allclose(out.x0, table[ids], atol=1e-4)
    corrections = 24 if sampler == "pc" else 0  # one corrector call after each step but the last
    assert len(out.trajectory) == out.nfe == oracle.calls == 25 + corrections


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_oracle_trajectory_ends_at_the_clean_latent(oracle_factory, sampler):
    """Not only the last prediction: the latent itself is driven to √ᾱ(0)·x0."""
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(30, 8, generator=gen)
    ids = torch.randint(0, 30, (64, 10), generator=gen)
    p = GaussianProcess("sqrt")
    latents = []

    class Recording(oracle_factory):
        def __call__(self, x_t, t):
            latents.append(x_t)
            return super().__call__(x_t, t)

    p.sample(Recording(table, ids, p), (64, 10), steps=40, sampler=sampler, generator=gen)
    x_last = latents[-1]  # the latent at the last grid time before 0
    t_last = torch.tensor(1 / 40, dtype=torch.float64)
    a = p.alpha_bar(t_last).item()
    resid = (x_last - a**0.5 * table[ids]) / (1 - a) ** 0.5
    # what remains is exactly N(0, 1) noise (DDPM) or the deterministic DDIM ε (bounded)
    assert resid.std().item() == pytest.approx(1.0, abs=0.05)
    assert Rounder(table).round(x_last / a**0.5).eq(ids).float().mean() > 0.9


def test_sampling_is_reproducible_with_a_seed(oracle_factory):
    table = torch.randn(20, 4)
    ids = torch.randint(0, 20, (2, 5))
    p = GaussianProcess("cosine")
    runs = [
        p.sample(
            oracle_factory(table, ids, p),
            (2, 5),
            steps=10,
            sampler="ddpm",
            generator=torch.Generator().manual_seed(7),
            return_trajectory=True,
        )
        for _ in range(2)
    ]
    assert all(
        torch.equal(a, b) for a, b in zip(runs[0].trajectory, runs[1].trajectory, strict=True)
    )


def test_unknown_sampler_is_refused(oracle_factory):
    p = GaussianProcess()
    with pytest.raises(ValueError, match="choose one of"):
        p.sample(
            oracle_factory(torch.randn(3, 2), torch.zeros(1, 2, dtype=torch.long)),
            (1, 2),
            steps=3,
            sampler="euler",
        )


@pytest.mark.parametrize("V,d", [(7, 3), (821, 16), (5000, 64)])
def test_faiss_rounding_equals_torch_search(V, d):
    gen = torch.Generator().manual_seed(V)
    table = torch.randn(V, d, generator=gen)
    x = table[torch.randint(0, V, (3000,), generator=gen)] + 0.5 * torch.randn(
        3000, d, generator=gen
    )
    rounder = Rounder(table, chunk_size=1000)  # several chunks
    faiss_ids = rounder.round(x)
    assert torch.equal(faiss_ids, torch_nearest(x, table, query_tile=512, vocab_tile=300))
    brute = torch.cdist(x.double(), table.double()).argmin(1)
    assert (faiss_ids == brute).float().mean() > 0.999  # fp32 ties aside


def test_rounding_keeps_shape_and_clamps_to_rows():
    table = torch.randn(40, 6)
    rounder = Rounder(table)
    x = torch.randn(3, 5, 6)
    ids = rounder.round(x)
    assert ids.shape == (3, 5)
    assert torch.equal(rounder.clamp(x), table[ids])
    assert torch.equal(rounder.round(table), torch.arange(40))  # every row rounds to itself
    assert torch.all(rounder.margin(x) >= 0)


def test_rounder_rebuilds_only_when_weights_change():
    table = torch.randn(40, 6)
    rounder = Rounder(table)
    assert not rounder.update(table.clone())
    table[3] += 10.0
    assert rounder.update(table)
    assert rounder.round(table[3:4]).item() == 3


def test_hnsw_index_is_a_close_approximation():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(20_000, 16, generator=gen)
    x = table[:2000] + 0.05 * torch.randn(2000, 16, generator=gen)
    approx = Rounder(table, index="hnsw").round(x)
    assert (approx == torch.arange(2000)).float().mean() > 0.98


def test_unknown_index_is_refused():
    with pytest.raises(ValueError, match="flat"):
        Rounder(torch.randn(3, 2), index="ivf")


def test_langevin_corrector_keeps_the_marginal_of_gaussian_data():
    """Data x0 ~ N(0, I): the exact x̂_0 at time s is √ᾱ x_s / v with v = ᾱ + 1 − ᾱ = 1, and
    q(h_s) = N(0, I). Twenty corrector steps from exact samples of q(h_s) must keep their
    variance: step sizes set from per-row norms inflated it by ~9% here (L·d = 32); norms
    averaged over the batch, as score-SDE, keep it within 3%."""
    from textdiff.diffusion.base import Run
    from textdiff.diffusion.gaussian_samplers import langevin_step
    from textdiff.diffusion.noise import Noise

    p = GaussianProcess("sqrt")
    s, after = torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.505, dtype=torch.float64)
    a = p.alpha_bar(s).item()
    gen = torch.Generator().manual_seed(0)
    run = Run(None, Noise(gen), options={"snr": 0.1})
    ratios = []
    for _ in range(16):
        x = torch.randn(64, 4, 8, generator=gen, dtype=torch.float64)
        for _ in range(20):
            x, _ = langevin_step(p, x, a**0.5 * x, s, s, run, after=after)
        ratios.append(x.var().item())
    assert sum(ratios) / len(ratios) == pytest.approx(1.0, abs=0.03)
