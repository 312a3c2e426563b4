"""The [MASK]-absorbing process: forward statistics, the bound's closed forms, the sampler."""

import math

import pytest
import torch

from textdiff.diffusion.absorbing import MaskProcess
from textdiff.diffusion.absorbing import filter_probs as _filter
from textdiff.diffusion.schedules import KEEP_SCHEDULES, get_keep_schedule

V, MASK = 12, 12  # 12 real tokens, [MASK] is id 12


class Uniform:
    """Predicts the uniform distribution over the V real tokens."""

    embed_dim, device = 4, torch.device("cpu")

    def __init__(self):
        self.calls = 0

    def embed(self, ids):
        return torch.zeros(*ids.shape, 4)

    def __call__(self, x, t):
        self.calls += 1
        return torch.zeros(*x.shape[:2], V + 1)


class Knows(Uniform):
    """Knows the sentence: all mass on the true token at every position."""

    def __init__(self, ids):
        super().__init__()
        self.ids = ids

    def __call__(self, x, t):
        self.calls += 1
        out = torch.full((*x.shape[:2], V + 1), -1e4)
        return out.scatter(-1, self.ids[: x.shape[0], :, None], 0.0)


class Noisy(Uniform):
    """A deterministic function of the (masked) input: random logits seeded by the input."""

    def __init__(self):
        super().__init__()
        self.table = torch.randn(V + 1, 4, generator=torch.Generator().manual_seed(0))
        self.proj = torch.randn(4, V + 1, generator=torch.Generator().manual_seed(1))

    def embed(self, ids):
        return self.table[ids]

    def __call__(self, x, t):
        self.calls += 1
        return 3 * torch.tanh(x.cumsum(1)) @ self.proj


@pytest.mark.parametrize("name", sorted(KEEP_SCHEDULES))
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_masked_fraction_matches_one_minus_alpha(name, t):
    p = MaskProcess(name, mask_id=MASK)
    ids = torch.randint(0, V, (400, 100), generator=torch.Generator().manual_seed(0))
    z = p.q_sample(ids, t, generator=torch.Generator().manual_seed(1))
    frac = (z == MASK).float().mean().item()
    q = 1 - get_keep_schedule(name).alpha(t).item()
    se = math.sqrt(q * (1 - q) / ids.numel())
    assert abs(frac - q) < 5 * se
    assert torch.equal(z[z != MASK], ids[z != MASK])  # unmasked positions keep their word


def test_ends_of_time():
    p = MaskProcess("linear", mask_id=MASK)
    ids = torch.randint(0, V, (50, 20))
    assert torch.equal(p.q_sample(ids, 0.0), ids)
    assert torch.all(p.q_sample(ids, 1.0) == MASK)


def test_weight_is_one_over_t_for_the_linear_schedule():
    t = torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64)
    assert torch.allclose(get_keep_schedule("linear").weight(t), 1 / t)


@pytest.mark.parametrize("name", sorted(KEEP_SCHEDULES))
def test_uniform_denoiser_bound_is_n_log_v(name):
    n = 16
    sched = get_keep_schedule(name)
    # analytic: E[#masked | t] = n (1 − α), so the integrand is −α'(t) n log V; integrate it
    t = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    integrand = sched.weight(t[1:]) * n * (1 - sched.alpha(t[1:])) * math.log(V)
    assert torch.trapezoid(integrand, t[1:]).item() == pytest.approx(n * math.log(V), rel=1e-3)
    # the Monte-Carlo estimator converges to it
    p = MaskProcess(name, mask_id=MASK)
    ids = torch.randint(0, V, (2000, n), generator=torch.Generator().manual_seed(0))
    b = p.nll_bound(Uniform(), ids, num_t=4, generator=torch.Generator().manual_seed(1))
    mean, se = b.total.mean().item(), b.total.std().item() / math.sqrt(len(ids))
    assert abs(mean - n * math.log(V)) < 4 * se
    assert torch.all(b.variance >= 0)


def test_oracle_has_zero_bound_and_zero_loss():
    p = MaskProcess("linear", mask_id=MASK)
    ids = torch.randint(0, V, (8, 10))
    b = p.nll_bound(Knows(ids), ids, num_t=5)
    assert torch.allclose(b.total, torch.zeros(8, dtype=torch.float64), atol=1e-6)
    assert p.loss(Knows(ids), ids).loss.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("steps", [5, 64])
def test_oracle_sampler_reproduces_the_sentence(steps):
    p = MaskProcess("cosine", mask_id=MASK)
    ids = torch.randint(0, V, (6, 10))
    out = p.sample(
        Knows(ids),
        (6, 10),
        steps=steps,
        generator=torch.Generator().manual_seed(0),
        return_trajectory=True,
    )
    assert torch.equal(out.ids, ids)
    masks = [(z == MASK).sum().item() for z in out.trajectory]
    assert masks == sorted(masks, reverse=True) and masks[-1] == 0  # masks only ever leave


def test_cached_sampler_equals_uncached_with_fewer_calls():
    p = MaskProcess("linear", mask_id=MASK)
    runs = {}
    for cache in (False, True):
        model = Noisy()
        out = p.sample(
            model, (4, 8), steps=100, cache=cache, generator=torch.Generator().manual_seed(3)
        )
        runs[cache] = (out, model.calls)
    (plain, plain_calls), (cached, cached_calls) = runs[False], runs[True]
    assert torch.equal(plain.ids, cached.ids)
    assert plain_calls == 100 and cached_calls < 100
    assert cached.nfe == cached_calls and cached.info["nfe_saved"] == 100 - cached_calls


def test_top_p_and_temperature_filter():
    logp = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.allclose(_filter(logp, 1.0, 1.0), logp.exp())
    kept = _filter(logp, 1.0, 0.7)  # the smallest set reaching 0.7: {0, 1}
    assert torch.allclose(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    cold = _filter(logp, 0.01, 1.0)
    assert cold[0, 0] > 0.999


def test_mask_sampler_refuses_gaussian_options():
    p = MaskProcess("linear", mask_id=MASK)
    with pytest.raises(ValueError, match="clamp does not apply to the 'ancestral' sampler"):
        p.sample(Uniform(), (1, 3), steps=2, clamp=True)
    with pytest.raises(ValueError, match="unknown sampler 'ddim' for mask noise"):
        p.sample(Uniform(), (1, 3), steps=2, sampler="ddim")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("exclude", [None, 3])
def test_token_nll_is_cross_entropy_with_its_gradient(dtype, exclude):
    """The losses' shared NLL against autograd through F.cross_entropy: the same values, the
    gradient to float32 rounding (bf16: the same bf16), zero gradient at the excluded column
    (targets elsewhere), and the caller's logits left as they were."""
    import torch.nn.functional as F

    from textdiff.diffusion.base import token_nll

    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(4, 6, 50, generator=gen) * 3).to(dtype)
    target = torch.randint(4, 50, (4, 6), generator=gen)
    weight = torch.rand(4, 6, generator=gen)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    nll = token_nll(a, target, exclude)
    x = b.float()
    if exclude is not None:
        x = x.clone()
        x[..., exclude] = float("-inf")
    ref = F.cross_entropy(x.flatten(0, 1), target.flatten(), reduction="none").view(4, 6)
    (nll * weight).sum().backward()
    (ref * weight).sum().backward()
    assert nll.dtype == torch.float32 and torch.equal(nll, ref)
    assert a.grad.dtype == dtype
    if dtype == torch.bfloat16:
        assert torch.equal(a.grad, b.grad)
    else:
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-6)
        assert not torch.allclose(a.grad, torch.zeros_like(a.grad))
    if exclude is not None:
        assert torch.all(a.grad[..., exclude] == 0)
        assert torch.isinf(token_nll(logits, torch.full_like(target, exclude), exclude)).all()
    assert torch.equal(a.detach(), logits)  # not written into


def test_token_nll_gradient_matches_finite_differences():
    from textdiff.diffusion.base import token_nll

    logits = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 4, 6])
    assert torch.autograd.gradcheck(lambda x: token_nll(x, target, 2), (logits,))
