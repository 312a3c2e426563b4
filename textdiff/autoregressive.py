"""The autoregressive baseline as a "process": next-token cross-entropy, exact NLL, sampling.

It lets the same trainer, checkpoints, pipeline and evaluation drive a causal language model
(``transformers`` GPT-2 architecture, built from a config, no hub weights), so textdiff can
measure its diffusion bounds against an autoregressive model of the same size on the same
tokens. The sequence ``w_1..w_k [EOS]`` is predicted from ``[EOS] w_1..w_k`` (the end token doubles
as the start token, as in GPT-2); padding after ``[EOS]`` is neither input nor target, so the
token count is the one the diffusion perplexities use (real tokens plus ``[EOS]``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .process import BoundTerms, ForwardProcess, LossTerms, Progress, SampleOutput


class AutoregressiveObjective(ForwardProcess):
    """``−log p(w) = −Σ_i log p_θ(w_i | w_<i)`` over the real tokens and ``[EOS]``."""

    name = "autoregressive"
    eval_times = (0.0,)  # teacher-forced accuracy does not depend on a noise level

    def __init__(self, *, eos_id: int, pad_id: int):
        self.eos_id, self.pad_id = eos_id, pad_id

    def _token_nll(self, model, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Per-position NLL (B, L) and the mask of counted positions (real tokens + [EOS])."""
        start = torch.full_like(ids[:, :1], self.eos_id)
        inputs = torch.cat([start, ids[:, :-1]], dim=1)  # (B, L)
        logits = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits.float()
        nll = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
        return nll, ids != self.pad_id

    def loss(self, model, ids: Tensor, *, generator=None, t=None, clean=None) -> LossTerms:
        """Mean next-token cross-entropy per counted token."""
        _no_clean(clean)
        nll, counted = self._token_nll(model, ids)
        loss = (nll * counted).sum() / counted.sum().clamp(min=1)
        return LossTerms(loss, {"nll": loss.detach()})

    def nll_bound(
        self, model, ids: Tensor, *, num_t: int = 1, generator=None, clean=None
    ) -> BoundTerms:
        """The exact NLL per sequence (no Monte Carlo: the variance is zero)."""
        _no_clean(clean)
        nll, counted = self._token_nll(model, ids)
        total = (nll * counted).sum(1).double()
        return BoundTerms(total, {"nll": total}, 1, variance=torch.zeros_like(total))

    def predict_ids(self, model, ids: Tensor, t: float = 0.0, *, rounder=None, generator=None):
        """Teacher-forced argmax predictions and the counted positions."""
        start = torch.full_like(ids[:, :1], self.eos_id)
        inputs = torch.cat([start, ids[:, :-1]], dim=1)
        logits = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits
        return logits.argmax(-1), ids != self.pad_id

    @torch.no_grad()
    def sample(
        self,
        model,
        shape: tuple[int, int],
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
        return_trajectory: bool = False,
        sampler: str = "auto",
        temperature: float = 1.0,
        top_p: float = 1.0,
        clamp: bool = False,
        rounder=None,
        constrain=None,
        known=None,
    ) -> SampleOutput:
        """Ancestral sampling token by token with the key/value cache, until every row has
        produced ``[EOS]`` or ``L`` tokens; the rest of each row is padding. ``steps`` is
        ignored (the length sets the number of network calls)."""
        from .absorbing import _filter

        if clamp:
            raise ValueError("clamp applies to Gaussian noise only")
        if known is not None:
            raise ValueError("the autoregressive baseline cannot hold tokens fixed (templates)")
        B, L = shape
        device = model.device
        out = torch.full((B, L), self.pad_id, dtype=torch.long, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        token = torch.full((B, 1), self.eos_id, dtype=torch.long, device=device)
        past, nfe = None, 0
        positions = range(L)
        for i in progress(positions) if progress is not None else positions:
            result = model(input_ids=token, past_key_values=past, use_cache=True)
            past, nfe = result.past_key_values, nfe + 1
            probs = _filter(result.logits[:, -1].float().log_softmax(-1), temperature, top_p)
            if i == L - 1:  # the last position can only end the sentence
                nxt = torch.full((B,), self.eos_id, dtype=torch.long, device=device)
            else:
                nxt = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(device)
            out[:, i] = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            done |= nxt == self.eos_id
            if bool(done.all()):
                break
            token = nxt[:, None]
        return SampleOutput(ids=out, nfe=nfe)


def _no_clean(clean) -> None:
    if clean is not None:
        raise ValueError("the autoregressive baseline has no partial noising (clean=)")
