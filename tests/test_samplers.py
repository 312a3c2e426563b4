"""The fast samplers: mask confidence / threshold / length-first / remasking, DPM-Solver, and
per-sample seeding (a sentence does not depend on the batch it was generated in)."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from textdiff import TextDiffusionPipeline
from textdiff.diffusion.absorbing import MaskProcess
from textdiff.diffusion.absorbing_samplers import MASK_SAMPLERS
from textdiff.diffusion.gaussian import GaussianProcess
from textdiff.diffusion.registry import get_process_spec
from textdiff.infra.config import ModelConfig, ProcessConfig, SampleConfig
from textdiff.models.modeling import (
    make_config,
    model_class,
)
from textdiff.models.tokenization import train_tokenizer

V, MASK, PAD, EOS = 12, 12, 0, 1  # ids 0..11 are real tokens ([PAD], [EOS] among them)


class Knows:
    """A mask denoiser that knows the sentence: all mass on the true token everywhere."""

    embed_dim, device = 4, torch.device("cpu")

    def __init__(self, ids):
        self.ids, self.calls = ids, 0

    def embed(self, ids):
        return torch.zeros(*ids.shape, 4)

    def __call__(self, x, t):
        self.calls += 1
        out = torch.full((*x.shape[:2], V + 1), -1e4)
        return out.scatter(-1, self.ids[: x.shape[0], :, None], 0.0)


def sentences(B=6, L=12, seed=0):
    """Random content (ids 2..11), [EOS] at a random position, [PAD] after it."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (B, L), generator=gen)
    ends = torch.randint(3, L, (B,), generator=gen)
    pos = torch.arange(L)
    ids = torch.where(pos == ends[:, None], EOS, ids)
    return torch.where(pos > ends[:, None], PAD, ids)


def mask_process():
    return MaskProcess("cosine", mask_id=MASK, pad_id=PAD, eos_id=EOS)


OPTIONS = [
    {},
    {"length_first": True},
    {"remask_steps": 3, "remask_fraction": 0.25},
    {"length_first": True, "remask_steps": 2},
]


@pytest.mark.parametrize("sampler", sorted(MASK_SAMPLERS))
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "length", "remask", "both"])
def test_mask_oracle_lands_on_the_data_with_every_sampler(sampler, options):
    ids = sentences()
    model = Knows(ids)
    out = mask_process().sample(
        model,
        ids.shape,
        steps=8,
        sampler=sampler,
        generator=torch.Generator().manual_seed(0),
        **options,
    )
    assert torch.equal(out.ids, ids)
    assert out.nfe == model.calls


def test_threshold_near_zero_reveals_everything_in_one_call():
    ids = sentences()
    model = Knows(ids)
    gen = torch.Generator().manual_seed(0)
    out = mask_process().sample(
        model, ids.shape, steps=16, sampler="threshold", threshold=1e-9, generator=gen
    )
    assert model.calls == out.nfe == 1 and torch.equal(out.ids, ids)
    model = Knows(ids)  # a threshold no token reaches reveals one position per row and call
    out = mask_process().sample(
        model, ids.shape, steps=100, sampler="threshold", threshold=1.5, generator=gen
    )
    assert out.nfe == ids.shape[1] and torch.equal(out.ids, ids)


def test_confidence_reveals_exactly_k_positions_a_step():
    """With L free positions and keep-schedule α, the masks left after a step to ``s`` are
    ``round(L (1 − α(s)))``: the trajectory's mask counts follow that exactly."""
    ids = sentences(B=5, L=20)
    p = mask_process()
    out = p.sample(
        Knows(ids),
        ids.shape,
        steps=7,
        sampler="confidence",
        return_trajectory=True,
        generator=torch.Generator().manual_seed(1),
    )
    grid = torch.linspace(1, 0, 8, dtype=torch.float64)
    expected = [round(20 * (1 - p.schedule.alpha(s).item())) for s in grid[1:]]
    expected = [min(e, 20 - (i + 1)) for i, e in enumerate(expected)]  # at least one a step
    for z, masks in zip(out.trajectory, expected, strict=True):
        assert ((z == MASK).sum(1) == masks).all()


@pytest.mark.parametrize("c", [0.0, 1.0, 2.0])
def test_confidence_temperature_orders_reveals_by_gumbel_max(c):
    """Positions whose predictions are uniform over 1, 2 and 4 tokens have confidences 0, −log 2
    and −log 4; with Gumbel noise of scale ``c · t`` on them, the first position revealed (at
    t = 1) is position i with probability ∝ m_i^(−1/c) (the Gumbel-max trick); with c = 0 always
    the certain one."""

    class Spread(Knows):
        def __call__(self, x, t):
            self.calls += 1
            out = torch.full((*x.shape[:2], V + 1), -1e4)
            for i, m in enumerate((1, 2, 4)):
                out[:, i, 2 : 2 + m] = 0.0
            return out

    B = 4000
    out = mask_process().sample(
        Spread(None),
        (B, 3),
        steps=3,
        sampler="confidence",
        confidence_temperature=c,
        return_trajectory=True,
        generator=torch.Generator().manual_seed(0),
    )
    first = out.trajectory[0] != MASK
    assert (first.sum(1) == 1).all()  # one reveal at the first step
    share = first.double().mean(0)
    if c == 0:
        assert share.tolist() == [1.0, 0.0, 0.0]
        return
    expected = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64) ** (-1 / c)
    expected /= expected.sum()
    se = (expected * (1 - expected) / B).sqrt()
    assert ((share - expected).abs() < 4 * se).all(), (share, expected)


@pytest.mark.parametrize("tau", [1.0, 0.5, 0.25])
def test_length_first_draws_the_length_from_the_models_eos_distribution(tau):
    """A denoiser whose [EOS] probability is 3/4 at position 3 and 1/4 at position 7: the placed
    lengths follow it — sharpened to ``p^(1/τ)`` by ``length_temperature`` τ (3^(1/τ) : 1) —
    and no [PAD] or [EOS] appears before the [EOS]."""

    class TwoLengths(Knows):
        def __call__(self, x, t):
            self.calls += 1
            out = torch.zeros(*x.shape[:2], V + 1)
            out[:, :, EOS] = -1e4
            out[:, [3, 7]] = -1e4  # positions 3 and 7: [EOS] or token 5, with odds 3 : 1 and 1 : 3
            out[:, 3, EOS] = out[:, 7, 5] = math.log(3)
            out[:, 3, 5] = out[:, 7, EOS] = 0.0
            return out

    B = 4000
    out = mask_process().sample(
        TwoLengths(None),
        (B, 10),
        steps=4,
        sampler="confidence",
        length_first=True,
        length_temperature=tau,
        generator=torch.Generator().manual_seed(0),
    )
    ends = (out.ids == EOS).float().argmax(1)
    assert set(ends.tolist()) == {3, 7}
    odds = 3 ** (1 / tau)
    assert (ends == 3).float().mean().item() == pytest.approx(odds / (odds + 1), abs=0.02)
    pos = torch.arange(10)
    assert ((out.ids == PAD) == (pos > ends[:, None])).all()  # [PAD] exactly after [EOS]


def test_length_first_places_the_sentence_length_after_a_condition_ending_in_eos():
    """Data-to-text: the condition's own [EOS] (held, never noised) is not the sentence's; the
    sentence's [EOS] is still placed from the model's distribution, and [PAD] follows it."""
    from textdiff.diffusion.base import Known
    from textdiff.diffusion.guidance import condition_positions

    class EndsAtSix(Knows):
        def __call__(self, x, t):
            self.calls += 1
            out = torch.zeros(*x.shape[:2], V + 1)
            out[:, :, EOS] = -1e4
            out[:, 6, EOS] = 1e4  # the sentence ends at position 6 (3 words after the condition)
            return out

    B, L, C = 8, 10, 3
    cond = torch.full((B, L), MASK)
    cond[:, :C] = torch.tensor([4, 5, EOS])  # a two-word condition and its [EOS]
    known = Known(cond, condition_positions(B, L, C), condition_positions(B, L, C))
    out = mask_process().sample(
        EndsAtSix(None),
        (B, L),
        steps=4,
        sampler="confidence",
        length_first=True,
        known=known,
        generator=torch.Generator().manual_seed(0),
    )
    assert (out.ids[:, :C] == cond[:, :C]).all()
    assert (out.ids[:, 6] == EOS).all() and (out.ids[:, 7:] == PAD).all()
    assert not ((out.ids[:, C:6] == EOS) | (out.ids[:, C:6] == PAD)).any()


def test_remasking_costs_exactly_its_extra_calls():
    ids = sentences()
    runs = {}
    for extra in (0, 3):
        model = Knows(ids)
        gen = torch.Generator().manual_seed(0)
        out = mask_process().sample(
            model,
            ids.shape,
            steps=6,
            sampler="confidence",
            remask_steps=extra,
            generator=gen,
            cache=False,
        )
        runs[extra] = out.nfe
        assert torch.equal(out.ids, ids)
    assert runs[3] == runs[0] + 3


# ------------------------------------------------------------------------------- DPM-Solver


class GaussianData:
    """The exact x̂_0 for data x0 ~ N(0, σ² I): ``E[x0 | x_t] = √ᾱ σ² x_t / (ᾱ σ² + 1 − ᾱ)``;
    it records every latent it is given."""

    embed_dim, device, sigma2 = 4, torch.device("cpu"), 0.25

    def __init__(self, process):
        self.process, self.seen = process, []

    def __call__(self, x_t, t):
        self.seen.append((x_t.double(), float(t[0])))
        a = self.process.alpha_bar(t.double())[:, None, None]
        return (a.sqrt() * self.sigma2 * x_t / (a * self.sigma2 + 1 - a)).float()


def ode_error(process, sampler, steps, **options):
    """Distance between the latent of the last network call and the exact probability-flow
    ODE solution from the same start, ``x_t = (v_t / v_1) x_1`` with ``v² = ᾱ σ² + 1 − ᾱ``."""
    model = GaussianData(process)
    process.sample(
        model,
        (64, 6),
        steps=steps,
        sampler=sampler,
        generator=torch.Generator().manual_seed(0),
        **options,
    )
    (x1, _), (x_last, t_last) = model.seen[0], model.seen[-1]
    v = lambda t: (process.alpha_bar(t) * model.sigma2 + 1 - process.alpha_bar(t)).sqrt()  # noqa: E731
    exact = v(t_last) / v(1.0) * x1
    return ((x_last - exact).norm() / exact.norm()).item()


@pytest.mark.parametrize("schedule", ["sqrt", "cosine", "linear"])
def test_dpm_solver_converges_to_the_closed_form_ode_solution(schedule):
    p = GaussianProcess(schedule)
    errors = [ode_error(p, "dpm-solver", n) for n in (10, 20, 40, 80)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.002
    assert errors[-1] < errors[-2] / 2.4  # faster than first order (which halves it)
    assert ode_error(p, "dpm-solver", 20) < ode_error(p, "dpm-solver", 20, order=1) / 3
    assert ode_error(p, "dpm-solver", 20) < ode_error(p, "ddim", 20)


def test_half_log_snr_grid_is_uniform_in_lambda_and_spans_the_chain():
    from textdiff.diffusion.gaussian_samplers import half_log_snr_grid

    p = GaussianProcess("sqrt")
    t = half_log_snr_grid(p, 12, {})
    assert t[0] == 1.0 and t[-1] == 0.0 and (t[:-1] > t[1:]).all()
    lam = p.schedule.half_log_snr(t)
    assert torch.allclose(lam.diff(), lam.diff()[:1].expand(12), atol=1e-6)


# ------------------------------------------------------------------------ per-sample seeding


def random_pipe(noise, condition_len=0, tok=None, prediction="x0", **sample):
    """A randomly initialised tiny model of ``noise`` (10 positions, or ``condition_len`` more)."""
    texts = ["the eagle is a pub near the river .", "a cheap coffee shop ."]
    tok = tok or train_tokenizer(texts, min_frequency=1)
    torch.manual_seed(0)
    schedule = "sqrt" if noise == "gaussian" else "linear"
    process = ProcessConfig(
        noise=noise,
        schedule=schedule,
        chain_length=100,
        condition_len=condition_len,
        prediction=prediction,
    )
    spec = get_process_spec(noise)
    net = ModelConfig(
        vocab_size=len(tok),
        seq_len=10 + condition_len,
        embed_dim=8,
        pos_dim=8,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        dropout=0.0,
        output=spec.output(process),
    )
    ids = dict(
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        mask_token_id=tok.mask_token_id,
    )
    config = make_config(net, process, SampleConfig(steps=8, **sample), **ids)
    return TextDiffusionPipeline(model_class(config.model_type)(config), tok, precision="fp32")


CASES = [
    ("gaussian", "ddpm", {}),
    ("gaussian", "ddim", {}),
    ("gaussian", "dpm-solver", {}),
    ("gaussian", "dpm-solver-sde", {}),
    ("mask", "ancestral", {}),
    ("mask", "confidence", {}),
    ("mask", "threshold", {}),
    ("autoregressive", "ancestral", {}),
]


@pytest.mark.parametrize(
    ("noise", "sampler", "extra"), CASES, ids=[f"{n}-{s}" for n, s, _ in CASES]
)
def test_a_sample_does_not_depend_on_its_batch(noise, sampler, extra):
    pipe = random_pipe(noise, sampler=sampler)
    together = pipe.generate(6, seed=11, batch_size=6, return_ids=True, **extra).ids
    apart = pipe.generate(6, seed=11, batch_size=1, return_ids=True, **extra).ids
    in_threes = pipe.generate(6, seed=11, batch_size=4, return_ids=True, **extra).ids
    assert torch.equal(together, apart) and torch.equal(together, in_threes)
    assert torch.equal(pipe.generate(1, seed=11, return_ids=True, **extra).ids, together[:1])
    assert not torch.equal(together[0], together[1])  # and the samples do differ


def test_mask_sampler_options_reach_a_batch_invariant_run():
    pipe = random_pipe("mask", sampler="confidence")
    options = dict(seed=3, return_ids=True)
    a = pipe.generate(5, batch_size=5, **options).ids
    b = pipe.generate(5, batch_size=2, **options).ids
    assert torch.equal(a, b)


def test_model_folders_from_before_per_sample_seeding_keep_one_shared_generator(tmp_path):
    legacy = Path(__file__).parent / "legacy" / "mask"
    pipe = TextDiffusionPipeline.from_pretrained(legacy, precision="fp32")
    assert pipe.sample_defaults.seeding == "shared"
    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)  # saved again: the setting is now written down
    assert json.loads((folder / "config.json").read_text())["sample"]["seeding"] == "shared"
    fresh = random_pipe("mask")
    assert fresh.sample_defaults.seeding == "per-sample"
    shutil.rmtree(folder)


@pytest.mark.parametrize("sampler", ["ddpm", "dpm-solver"])
def test_gaussian_length_first_places_the_oracles_length_and_lands_on_the_data(
    oracle_factory, sampler
):
    """An oracle's word probabilities put [EOS] where the sentence has it: length_first holds
    it there from the first call, and the sample is the sentence."""
    from textdiff.diffusion.rounding import Rounder

    gen = torch.Generator().manual_seed(0)
    table = torch.randn(V, 8, generator=gen)
    ids = sentences(B=5, L=12)
    p = GaussianProcess("sqrt", pad_id=PAD, eos_id=EOS)
    oracle = oracle_factory(table, ids, p)
    out = p.sample(
        oracle,
        ids.shape,
        steps=10,
        sampler=sampler,
        rounder=Rounder(table),
        generator=gen,
        length_first=True,
    )
    assert torch.equal(out.ids, ids) and out.nfe == oracle.calls == 11  # one call for length


def test_gaussian_length_first_keeps_pad_and_eos_out_of_the_sentence():
    """A random posterior model: with the length placed first, [PAD] and [EOS] appear exactly
    at and after the placed end, nowhere before it."""
    pipe = random_pipe("gaussian", prediction="posterior")
    out = pipe.generate(16, seed=0, return_ids=True, sampler_options={"length_first": True})
    tok = pipe.tokenizer
    ends = (out.ids == tok.eos_token_id).float().argmax(1)
    pos = torch.arange(out.ids.shape[1])
    assert ((out.ids == tok.eos_token_id).sum(1) == 1).all()
    assert ((out.ids == tok.pad_token_id) == (pos > ends[:, None])).all()
