"""The autoregressive baseline as a process: next-token cross-entropy, exact NLL, sampling.

It lets the same trainer, checkpoints, pipeline, evaluation and sampling loop drive a causal
language model (``transformers`` GPT-2 architecture, built from a config, no hub weights), so
textdiff can measure its diffusion bounds against an autoregressive model of the same size on the
same tokens. The sequence ``w_1..w_k [EOS]`` is predicted from ``[EOS] w_1..w_k`` (the end token
doubles as the start token, as in GPT-2); padding after ``[EOS]`` is neither input nor target, so
the token count is the one the diffusion perplexities use (real tokens plus ``[EOS]``).

A row may start with a condition (data-to-text: ``[MR ; sentence]``, the MR in the first
``condition_len`` positions, passed as ``clean=``): it is read but not scored, so the model
learns ``p(sentence | MR)``; at sampling the known condition is fed first.

In the sampling loop a "time" is a position: the plan has one entry per position after the
condition (the length, not ``steps``, sets the number of network calls) and ends early once every
row has produced ``[EOS]``; the key/value cache lives in the run's memory. ``ancestral`` draws
each token, ``greedy`` takes the most likely one.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from .absorbing import filter_probs
from .base import ForwardProcess, LossTerms, Run, Sampler, token_nll


class AutoregressiveObjective(ForwardProcess):
    """``−log p(w) = −Σ_i log p_θ(w_i | w_<i)`` over the real tokens and ``[EOS]``."""

    name = "autoregressive"
    samplers: dict[str, Sampler] = {}  # filled in below the class
    default_sampler = "ancestral"
    sample_options = {"temperature": 1.0, "top_p": 1.0}
    exact_bound = True
    eval_times = (0.0,)  # teacher-forced accuracy does not depend on a noise level

    def __init__(self, *, eos_id: int, pad_id: int):
        self.eos_id, self.pad_id = eos_id, pad_id

    def _logits(self, model, ids: Tensor) -> Tensor:
        """Teacher-forced next-token logits (B, L, V): position ``i`` reads ``[EOS] w_<i``."""
        start = torch.full_like(ids[:, :1], self.eos_id)
        inputs = torch.cat([start, ids[:, :-1]], dim=1)  # (B, L)
        return model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits

    def _counted(self, ids: Tensor, clean: Tensor | None) -> Tensor:
        """The scored positions: real tokens and [EOS], outside the condition (``clean``)."""
        counted = ids != self.pad_id
        return counted if clean is None else counted & ~clean

    def _token_nll(self, model, ids: Tensor, clean=None) -> tuple[Tensor, Tensor]:
        """Per-position NLL (B, L) and the mask of counted positions."""
        # read along V, the last dim: over a (B, V, L) transpose it is twice the time on CPU
        return token_nll(self._logits(model, ids), ids), self._counted(ids, clean)

    def loss(self, model, ids: Tensor, *, generator=None, t=None, clean=None) -> LossTerms:
        """Mean next-token cross-entropy per counted token."""
        nll, counted = self._token_nll(model, ids, clean)
        loss = (nll * counted).sum() / counted.sum().clamp(min=1)
        return LossTerms(loss, {"nll": loss.detach()})

    def bound_terms(self, model, ids: Tensor, u: Tensor, *, generator=None, clean=None) -> dict:
        """The exact NLL per sequence (it does not depend on ``u``)."""
        nll, counted = self._token_nll(model, ids, clean)
        return {"nll": (nll * counted).sum(1).double()}

    def predict_ids(
        self, model, ids: Tensor, t: float = 0.0, *, rounder=None, generator=None, clean=None
    ):
        """Teacher-forced argmax predictions and the counted positions."""
        return self._logits(model, ids).argmax(-1), self._counted(ids, clean)

    # ------------------------------------------------------------------ sampling
    def prior(self, run: Run, shape: tuple[int, int]) -> Tensor:
        """Rows of padding to be written left to right after the known condition; the first
        input is ``[EOS]`` and the condition."""
        B, device = shape[0], run.model.device
        ids = torch.full(shape, self.pad_id, dtype=torch.long, device=device)
        start = _condition_length(run.known)
        if start:
            ids[:, :start] = run.known.ids[:, :start].to(device)
        first = torch.full((B, 1), self.eos_id, dtype=torch.long, device=device)
        run.memory.update(
            token=torch.cat([first, ids[:, :start]], 1),
            done=torch.zeros(B, dtype=torch.bool, device=device),
            past=None,
            start=start,
            length=shape[1],
        )
        return ids

    def predict(self, run: Run, ids: Tensor, position, prev) -> Tensor:
        """The next-token distribution after the tokens so far (one cached network call)."""
        m = run.memory
        result = run.model(input_ids=m["token"], past_key_values=m["past"], use_cache=True)
        m["past"] = result.past_key_values
        log_probs = result.logits[:, -1].float().log_softmax(-1)
        return filter_probs(log_probs, run.options["temperature"], run.options["top_p"])

    def finish(self, run: Run, ids: Tensor, x0) -> tuple[Tensor, None]:
        return ids, None


def _condition_length(known) -> int:
    """The length of the known prefix (a data-to-text condition); other known tokens are
    refused: an autoregressive model cannot fill gaps."""
    if known is None:
        return 0
    prefix = int(known.mask[0].long().cumprod(0).sum())
    expected = torch.arange(known.mask.shape[1]) < prefix
    if prefix == 0 or not bool((known.mask.cpu() == expected).all()):
        raise ValueError("the autoregressive baseline cannot hold tokens fixed (templates)")
    return prefix


def next_token_step(
    process: AutoregressiveObjective, ids: Tensor, probs: Tensor, i, _, run: Run, greedy=False
):
    """Draw the token of position ``i`` (the most likely one if ``greedy``; ``[EOS]`` at the
    last position); rows that have ended get padding."""
    B, L = ids.shape
    done = run.memory["done"]
    if i == L - 1:  # the last position can only end the sentence
        nxt = torch.full((B,), process.eos_id, dtype=torch.long, device=ids.device)
    elif greedy:
        nxt = probs.argmax(-1)
    else:
        nxt = run.noise.categorical(probs, torch.arange(B))
    ids = ids.clone()
    ids[:, i] = torch.where(done, torch.full_like(nxt, process.pad_id), nxt)
    run.memory.update(done=done | (nxt == process.eos_id), token=nxt[:, None])
    return ids, ids


class PositionSampler(Sampler):
    """One step per position, until every row has ended (the ``steps`` asked for are ignored)."""

    def plan(self, process, steps: int, run: Run):
        for i in range(run.memory["start"], run.memory["length"]):
            yield i, i + 1, self.step
            if bool(run.memory["done"].all()):
                return


AutoregressiveObjective.samplers = {
    "ancestral": PositionSampler(next_token_step),
    "greedy": PositionSampler(partial(next_token_step, greedy=True)),
}
