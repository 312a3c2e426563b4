"""The process registry: a new kind of noise, defined and registered in this file alone, trains
through the normal trainer and samples through the normal pipeline."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from textdiff import TextDiffusionPipeline
from textdiff.diffusion.base import ForwardProcess, LossTerms, Sampler
from textdiff.diffusion.registry import PROCESSES, ProcessSpec, get_process_spec, register_process
from textdiff.infra.config import ConfigError, load_config
from textdiff.infra.trainer import train

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


class UniformProcess(ForwardProcess):
    """Uniform-state noise: each token is kept with probability ``1 − t``, else replaced by a
    token drawn uniformly from the vocabulary. The network reads ``[E[z_t] ; e]`` and ``t`` and
    predicts the clean tokens; its cross-entropy at ``t`` is the loss and the bound's term (a
    toy: a proper uniform-state bound is longer)."""

    name = "uniform"
    default_sampler = "renoise"
    sample_options = {"temperature": 1.0}

    def corrupt(self, ids, t, generator):
        V = self.vocab
        keep = torch.rand(ids.shape, generator=generator) < (1 - t)[:, None]
        return torch.where(keep, ids, torch.randint(0, V, ids.shape, generator=generator))

    def log_probs(self, model, z, t):
        return model(model.embed(z), t.float()).float().log_softmax(-1)

    def loss(self, model, ids, *, generator=None, t=None, clean=None):
        self.vocab = model.word_table().shape[0]
        t = torch.rand(ids.shape[0], generator=generator) if t is None else t
        nll = F.nll_loss(
            self.log_probs(model, self.corrupt(ids, t, generator), t).transpose(1, 2), ids
        )
        return LossTerms(nll, {"ce": nll.detach()})

    def bound_terms(self, model, ids, u, *, generator=None, clean=None):
        self.vocab = model.word_table().shape[0]
        logp = self.log_probs(model, self.corrupt(ids, u, generator), u)
        return {"ce": -logp.gather(-1, ids[..., None])[..., 0].sum(1).double()}

    def predict_ids(self, model, ids, t, *, rounder=None, generator=None, clean=None):
        self.vocab = model.word_table().shape[0]
        tt = torch.full((ids.shape[0],), float(t))
        z = self.corrupt(ids, tt, generator)
        return self.log_probs(model, z, tt).argmax(-1), torch.ones_like(ids, dtype=torch.bool)

    def prior(self, run, shape):
        self.vocab = run.model.word_table().shape[0]
        return (run.noise.uniform(shape) * self.vocab).long().clamp(max=self.vocab - 1)

    def predict(self, run, z, t, prev):
        t_b = torch.full((z.shape[0],), float(t))
        return (self.log_probs(run.model, z, t_b) / run.options["temperature"]).softmax(-1)

    def finish(self, run, z, x0):
        return z, None


def renoise_step(process, z, probs, t, s, run):
    """Draw clean tokens from the network, then corrupt them to time ``s``."""
    B, L = z.shape
    rows = torch.arange(B).repeat_interleave(L)
    x0 = run.noise.categorical(probs.reshape(B * L, -1), rows).view(B, L)
    keep = run.noise.uniform((B, L)) < (1 - float(s))
    fresh = (run.noise.uniform((B, L)) * process.vocab).long().clamp(max=process.vocab - 1)
    return torch.where(keep, x0, fresh), x0


UniformProcess.samplers = {"renoise": Sampler(renoise_step)}


@pytest.fixture
def uniform_registered():
    spec = register_process(
        ProcessSpec("uniform", UniformProcess, lambda p, ids: UniformProcess(), conditional=False)
    )
    yield spec
    del PROCESSES["uniform"]


def test_registered_process_is_checked_by_the_config(uniform_registered, tmp_path):
    assert get_process_spec("uniform") is uniform_registered
    with pytest.raises(ConfigError, match=r"unknown sample.sampler 'ddpm'.*\['auto', 'renoise'\]"):
        load_config(TINY, ["process.noise=uniform", "sample.sampler=ddpm"])
    with pytest.raises(ConfigError, match="top_p does not apply to uniform models"):
        load_config(TINY, ["process.noise=uniform", "sample.top_p=0.5"])
    with pytest.raises(ConfigError, match="needs model.output=logits"):
        load_config(TINY, ["process.noise=uniform", "model.output=embedding"])


def test_registered_process_trains_and_samples_through_trainer_and_pipeline(
    uniform_registered, tmp_path, e2e_dir
):
    out = tmp_path / "run"
    cfg = load_config(
        TINY,
        [
            "process.noise=uniform",
            f"train.output_dir={out}",
            "train.max_steps=6",
            "train.eval_every=6",
            "train.save_every=6",
            "sample.steps=5",
        ],
    )
    result = train(cfg, progress=False)
    assert result.last_eval["ce"] > 0 and "acc_t0.5" in result.last_eval
    assert len(result.last_eval["samples"]) == 2
    pipe = TextDiffusionPipeline.from_pretrained(result.model_dir)
    assert isinstance(pipe.process, UniformProcess)
    out = pipe.generate(3, num_steps=4, seed=0, return_ids=True, temperature=0.5)
    assert out.ids.shape == (3, 32) and out.nfe == 4 and len(out.texts) == 3
    assert out.texts == pipe.generate(3, num_steps=4, seed=0, temperature=0.5)
    with pytest.raises(ValueError, match="top_p does not apply"):
        pipe.generate(1, top_p=0.5)
