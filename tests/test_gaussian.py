"""The Gaussian process against closed forms, Bayes' rule and Monte Carlo."""

import math

import pytest
import torch

from textdiff.diffusion.gaussian import GaussianProcess
from textdiff.diffusion.schedules import SCHEDULES, get_schedule

TIMES = [0.0, 0.05, 0.3, 0.7, 1.0]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_is_float64_decreasing_and_bounded(name):
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    a = get_schedule(name).alpha_bar(t)
    assert a.dtype == torch.float64
    assert torch.all(a[1:] <= a[:-1])
    assert 0 < a[-1] < 1e-3 and 0.98 < a[0] < 1


def test_linear_schedule_is_the_limit_of_ddpm_betas():
    T = 1000
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    discrete = torch.cumprod(1 - betas, 0)  # ᾱ_1 .. ᾱ_T of DDPM
    cont = get_schedule("linear").alpha_bar(torch.arange(1, T + 1, dtype=torch.float64) / T)
    # log ᾱ agrees to within the O(β) difference between a sum and its integral
    assert torch.allclose(cont.log(), discrete.log(), rtol=0.02, atol=0.02)


def test_sqrt_schedule_is_diffusion_lm_formula():
    t = torch.tensor([0.0, 0.25, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(get_schedule("sqrt").alpha_bar(t), 1 - torch.sqrt(t + 1e-4))


@pytest.mark.parametrize("t", TIMES)
def test_q_sample_moments_match_closed_form(t):
    p = GaussianProcess("cosine")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor([[[1.5, -2.0, 0.3]]]).expand(200_000, 1, 3)
    x_t, _ = p.q_sample(x0.double(), t, generator=gen)
    a = p.alpha_bar(t).item()
    n = x_t.shape[0]
    mean_se = math.sqrt((1 - a) / n)
    assert torch.allclose(x_t.mean(0), a**0.5 * x0[0].double(), atol=5 * mean_se + 1e-12)
    var_se = (1 - a) * math.sqrt(2 / n)
    assert torch.allclose(
        x_t.var(0), torch.full((1, 3), 1 - a, dtype=torch.float64), atol=5 * var_se + 1e-12
    )


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("t,s", [(0.5, 0.4), (0.9, 0.1), (0.02, 0.0), (1.0, 0.5)])
def test_posterior_matches_bayes_rule_numerically(name, t, s):
    """q(h_s | h_t, x0) ∝ q(h_t | h_s) q(h_s | x0), integrated on a fine 1-D grid."""
    p = GaussianProcess(name)
    a_t, a_s = p.alpha_bar(t).item(), p.alpha_bar(s).item()
    a_ts = a_t / a_s
    x0, x_t = (
        torch.tensor([[[0.8]]], dtype=torch.float64),
        torch.tensor([[[-0.4]]], dtype=torch.float64),
    )
    mean, var = p.posterior(x_t, x0, t, s)
    sd = var.sqrt().item()
    grid = torch.linspace(
        mean.item() - 12 * sd, mean.item() + 12 * sd, 200_001, dtype=torch.float64
    )
    log_lik = -((x_t.item() - a_ts**0.5 * grid) ** 2) / (2 * (1 - a_ts))
    log_prior = -((grid - a_s**0.5 * x0.item()) ** 2) / (2 * (1 - a_s))
    w = torch.softmax(log_lik + log_prior, 0)
    num_mean = (w * grid).sum()
    num_var = (w * (grid - num_mean) ** 2).sum()
    assert num_mean.item() == pytest.approx(mean.item(), rel=1e-6, abs=1e-9)
    assert num_var.item() == pytest.approx(var.item(), rel=1e-4)


def test_posterior_in_eps_form():
    """μ̃ = (h_t − β/√(1 − ᾱ_t) ε) / √α for consecutive grid points (DESIGN.md §2)."""
    p = GaussianProcess("linear")
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64)
    t, s = 0.6, 0.59
    x_t, eps = p.q_sample(x0, t, generator=gen)
    a_t, a_s = p.alpha_bar(t), p.alpha_bar(s)
    alpha, beta = a_t / a_s, 1 - a_t / a_s
    mean, _ = p.posterior(x_t, x0, t, s)
    assert torch.allclose(mean, (x_t - beta / (1 - a_t).sqrt() * eps) / alpha.sqrt())


def test_conversions_round_trip():
    p = GaussianProcess("sqrt")
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 7, 16, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64)
    x_t, eps = p.q_sample(x0, t, generator=gen)
    assert torch.allclose(p.eps_from_x0(x_t, x0, t), eps, atol=1e-9)
    assert torch.allclose(p.x0_from_eps(x_t, eps, t), x0, atol=1e-9)
    score = p.score_from_eps(eps, t)
    # the score of q(h_t | x0) is −(h_t − √ᾱ x0) / (1 − ᾱ)
    a = p.alpha_bar(t)[:, None, None]
    assert torch.allclose(score, -(x_t - a.sqrt() * x0) / (1 - a), atol=1e-9)


def test_prior_kl_matches_monte_carlo():
    p = GaussianProcess("linear")
    gen = torch.Generator().manual_seed(3)
    x0 = 3 * torch.randn(1, 4, 3, generator=gen, dtype=torch.float64)
    a = p.alpha_bar(1.0).item()
    n = 400_000
    x1, _ = p.q_sample(x0.expand(n, 4, 3), 1.0, generator=gen)
    log_q = -((x1 - a**0.5 * x0) ** 2) / (2 * (1 - a)) - 0.5 * math.log(1 - a)
    log_p = -(x1**2) / 2
    mc = (log_q - log_p).flatten(1).sum(1)
    se = mc.std() / n**0.5
    assert abs(mc.mean() - p.prior_kl(x0)[0]) < 5 * se + 1e-9


@pytest.mark.parametrize("t,s", [(0.5, 0.49), (0.001, 0.0), (1.0, 0.2)])
def test_vlb_weight_is_the_kl_between_posteriors(t, s):
    p = GaussianProcess("sqrt")
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(1, 3, 4, generator=gen, dtype=torch.float64)
    x0_hat = x0 + 0.1 * torch.randn(1, 3, 4, generator=gen, dtype=torch.float64)
    x_t, _ = p.q_sample(x0, t, generator=gen)
    m1, var = p.posterior(x_t, x0, t, s)
    m2, _ = p.posterior(x_t, x0_hat, t, s)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, var.sqrt()), torch.distributions.Normal(m2, var.sqrt())
    ).sum()
    expected = p.vlb_weight(t, s) * (x0 - x0_hat).pow(2).sum()
    assert kl.item() == pytest.approx(expected.item(), rel=1e-6)


def test_oracle_loss_has_zero_mse(oracle_factory):
    table = torch.randn(10, 4)
    ids = torch.randint(0, 10, (3, 6))
    p = GaussianProcess("sqrt")
    terms = p.loss(oracle_factory(table, ids, p), ids, generator=torch.Generator().manual_seed(0))
    assert terms.terms["mse"].item() == 0.0
    assert terms.floats()["loss"] == pytest.approx(
        sum(terms.floats()[k] for k in ("mse", "prior", "rounding")), rel=1e-6
    )


def test_evidence_logits_are_the_gaussian_log_likelihood_up_to_a_constant():
    p = GaussianProcess("sqrt", prediction="posterior")
    gen = torch.Generator().manual_seed(5)
    table = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    x_t = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.1, 0.6], dtype=torch.float64)
    a = p.alpha_bar(t)[:, None, None, None]
    log_lik = -((x_t[:, :, None, :] - a.sqrt() * table) ** 2).sum(-1) / (2 * (1 - a[..., 0]))
    ev = p.evidence_logits(x_t, t, table).double()
    diff = ev - log_lik  # constant in v
    assert torch.allclose(diff, diff[..., :1].expand_as(diff), atol=1e-4)


def test_posterior_prediction_lands_on_rows_at_low_noise_and_follows_logits_at_high():
    p = GaussianProcess("sqrt", prediction="posterior")
    gen = torch.Generator().manual_seed(6)
    table = 3 * torch.randn(50, 16, generator=gen)
    ids = torch.randint(0, 50, (4, 9), generator=gen)
    x_t, _ = p.q_sample(table[ids], 0.001, generator=gen)
    zeros = torch.zeros(4, 9, 50)
    assert torch.allclose(p.predict_x0(zeros, x_t, 0.001, table), table[ids], atol=1e-3)
    x_1, _ = p.q_sample(table[ids], 1.0, generator=gen)
    logits = torch.randn(4, 9, 50, generator=gen)
    expected = logits.softmax(-1) @ table  # at t = 1 the evidence is gone
    assert torch.allclose(p.predict_x0(logits, x_1, 1.0, table), expected, atol=0.05)


def test_posterior_temperature_interpolates_between_the_mean_row_and_the_argmax_row():
    p = GaussianProcess("sqrt", prediction="posterior")
    gen = torch.Generator().manual_seed(7)
    table = torch.randn(30, 8, generator=gen)
    x_t = torch.randn(3, 5, 8, generator=gen)
    logits = torch.randn(3, 5, 30, generator=gen)
    t = 0.6
    assert torch.equal(
        p.predict_x0(logits, x_t, t, table, temperature=1.0), p.predict_x0(logits, x_t, t, table)
    )
    full = logits + p.evidence_logits(x_t, t, table)
    argmax_row = table[full.argmax(-1)]
    cold = p.predict_x0(logits, x_t, t, table, temperature=1e-4)
    assert torch.allclose(cold, argmax_row, atol=1e-5)
    half = p.predict_x0(logits, x_t, t, table, temperature=0.5)
    assert torch.allclose(half, (2 * full).softmax(-1) @ table, atol=1e-5)


def test_temperature_needs_a_posterior_to_sharpen():
    p = GaussianProcess("sqrt", prediction="x0")
    x = torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match="prediction='posterior'"):
        p.predict_x0(x, x, 0.5, temperature=0.5)
