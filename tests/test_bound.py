"""The Gaussian NLL bound's estimators against the exact sum over every step."""

import math

import pytest
import torch

from textdiff.diffusion.gaussian import GaussianProcess


class Biased:
    """Knows x0 but misses it by ``f(t) · u``: the per-step error is deterministic, so the
    diffusion sum has an exact value to compare the estimators with."""

    embed_dim, device = 4, torch.device("cpu")

    def __init__(self, table, ids):
        self.table, self.ids = table, ids
        self.u = torch.tensor([1.0, -2.0, 0.5, 0.0])

    @staticmethod
    def f(t):
        return 0.3 + torch.sin(3 * t)

    def embed(self, ids):
        return self.table[ids]

    def logits(self, x):
        return -torch.cdist(x.reshape(-1, 4), self.table).pow(2).reshape(*x.shape[:-1], -1)

    def __call__(self, x_t, t):
        err = self.f(t.double())[:, None, None] * self.u  # (B, 1, d)
        return (self.table[self.ids.repeat(len(t) // len(self.ids), 1)] + err).float()


def exact_diffusion_sum(p, T, L):
    t = torch.arange(2, T + 1, dtype=torch.float64) / T
    per_step = p.vlb_weight(t, t - 1 / T) * Biased.f(t).pow(2) * 5.25 * L  # ‖u‖² = 5.25
    return per_step.sum().item()


@pytest.fixture
def setup():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(10, 4, generator=gen)
    ids = torch.randint(0, 10, (3, 5), generator=gen)
    return table, ids


def test_one_sample_per_stratum_is_the_exact_sum(setup):
    table, ids = setup
    T = 50
    p = GaussianProcess("sqrt", chain_length=T)
    b = p.nll_bound(Biased(table, ids), ids, num_t=T - 1, generator=torch.Generator())
    exact = exact_diffusion_sum(p, T, ids.shape[1])
    assert torch.allclose(
        b.terms["diffusion"], torch.full((3,), exact, dtype=torch.float64), rtol=1e-5
    )
    emb = p.vlb_weight(1 / T, 0.0) * Biased.f(torch.tensor(1 / T, dtype=torch.float64)) ** 2
    assert torch.allclose(b.terms["embedding"], (emb * 5.25 * 5).expand(3), rtol=1e-5)
    assert torch.allclose(b.terms["prior"], p.prior_kl(table[ids].double()))
    total = sum(b.terms.values())
    assert torch.allclose(b.total, total)
    assert torch.allclose(b.by_time.sum(1), b.total - b.terms["prior"])
    # by_time: stratum k holds step k + 2, in order; the embedding and rounding terms (t ≈ 0
    # costs; here made deterministic: a read-out of zeros costs log 10 a position) stratum 0
    flat = Biased(table, ids)
    flat.logits = lambda x: torch.zeros(*x.shape[:-1], 10)
    b = p.nll_bound(flat, ids, num_t=T - 1, generator=torch.Generator())
    t = torch.arange(2, T + 1, dtype=torch.float64) / T
    per_step = p.vlb_weight(t, t - 1 / T) * Biased.f(t).pow(2) * 5.25 * ids.shape[1]
    expected = per_step.clone()
    expected[0] += emb * 5.25 * 5 + 5 * math.log(10)
    assert torch.allclose(b.by_time, expected.expand(3, -1), rtol=1e-5)


def test_fewer_strata_are_unbiased(setup):
    table, ids = setup
    T = 200
    p = GaussianProcess("cosine", chain_length=T)
    gen = torch.Generator().manual_seed(1)
    estimates = torch.stack(
        [
            p.nll_bound(Biased(table, ids), ids, num_t=3, generator=gen).terms["diffusion"]
            for _ in range(300)
        ]
    ).flatten()
    exact = exact_diffusion_sum(p, T, ids.shape[1])
    se = estimates.std().item() / math.sqrt(len(estimates))
    assert abs(estimates.mean().item() - exact) < 4 * se


def test_continuous_time_estimator_matches_the_integral(setup):
    table, ids = setup
    p = GaussianProcess("linear", chain_length=None)
    gen = torch.Generator().manual_seed(2)
    b = torch.stack(
        [
            p.nll_bound(Biased(table, ids), ids, num_t=16, generator=gen).terms["diffusion"]
            for _ in range(40)
        ]
    ).flatten()
    # ½ ∫ −SNR'(t) ‖f(t) u‖² L dt by the trapezoid rule on a fine grid
    t = torch.linspace(1e-6, 1, 400_001, dtype=torch.float64)
    integrand = 0.5 * -p.schedule.snr_derivative(t) * Biased.f(t).pow(2) * 5.25 * ids.shape[1]
    integral = torch.trapezoid(integrand, t).item()
    se = b.std().item() / math.sqrt(len(b))
    assert abs(b.mean().item() - integral) < 4 * se + 1e-3 * integral
    assert torch.all(p.nll_bound(Biased(table, ids), ids, num_t=4).terms["embedding"] == 0)


def test_more_steps_tighten_toward_the_continuous_bound(setup):
    """For a fixed denoiser the discrete diffusion sum approaches the integral as T grows."""
    table, ids = setup
    t = torch.linspace(1e-6, 1, 400_001, dtype=torch.float64)
    p = GaussianProcess("sqrt", chain_length=None)
    integral = torch.trapezoid(
        0.5 * -p.schedule.snr_derivative(t) * Biased.f(t).pow(2) * 5.25 * 5, t
    )
    gaps = [
        abs(exact_diffusion_sum(GaussianProcess("sqrt", chain_length=T), T, 5) - integral)
        for T in (100, 1000, 10000)
    ]
    assert gaps[0] > gaps[1] > gaps[2]
