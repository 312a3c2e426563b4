"""Gaussian diffusion on word embeddings (docs/math.md §2).

Notation: ``x0 = E[w]`` the clean embeddings (B, L, d); ``x_t`` the noised word part ``h_t``;
``ᾱ_t = ᾱ(t)`` from the schedule; for two times ``s < t``: ``α_{t|s} = ᾱ_t / ᾱ_s``,
``β_{t|s} = 1 − α_{t|s}``; ``SNR(t) = ᾱ_t / (1 − ᾱ_t)``. ``clean`` (B, L, bool) marks positions
that are never noised (partial noising: a data-to-text condition).

The chain starts at the latent ``h_0`` at ``t = 0``: ``q(h_0 | w) = N(√ᾱ(0) E[w], σ_0² I)`` with
``σ_0² = 1 − ᾱ(0)`` (0.01 for the sqrt schedule, 1e-4 for linear / cosine). Every transition of
the bound, the one that produces ``h_0`` included, is a KL between two Gaussians, and the bound
ends with the rounding term ``−log p_θ(w | h_0)``. The sampling steps are in
:mod:`textdiff.diffusion.gaussian_samplers`.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from .base import Denoiser, ForwardProcess, LossTerms, stratified_times, token_nll
from .gaussian_samplers import GAUSSIAN_SAMPLERS, GaussianSampling
from .schedules import Schedule, get_schedule

PREDICTIONS = ("x0", "eps", "posterior")
EPS_WEIGHTINGS = ("simple", "vlb")


def _mean(v: Tensor, over: Tensor | None) -> Tensor:
    """Mean of ``v`` (B, L, ...) over the positions where ``over`` (B, L) is True (all if None)."""
    if over is None:
        return v.mean()
    w = over.to(v.dtype).reshape(over.shape + (1,) * (v.dim() - over.dim()))  # (B, L, 1...)
    count = w.sum() * (v.numel() // over.numel())
    return (v * w).sum() / count.clamp(min=1)


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """A per-sequence (B,) or scalar float64 value as ``like``'s dtype, broadcastable to it."""
    v = v.to(device=like.device, dtype=like.dtype)
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))


class GaussianProcess(GaussianSampling, ForwardProcess):
    """``q(h_t | h_0)``, its posterior, prior KL and parameterization conversions, the
    Diffusion-LM loss and the terms of the NLL bound; the sampling primitives come from
    :class:`~textdiff.diffusion.gaussian_samplers.GaussianSampling`.

    Args:
        schedule: ``ᾱ(t)`` (an instance or a registered name).
        prediction: what the network outputs: ``"x0"`` (Diffusion-LM, default), ``"eps"``, or
            ``"posterior"`` (logits over words, read with the evidence: :meth:`predict_x0`).
        chain_length: ``T``, the number of steps of the discrete chain that the bound sums over
            and that ``eps_weighting="vlb"`` weights by (Diffusion-LM uses 2000); ``None`` is the
            continuous-time limit. Sampling picks its own, usually far fewer, steps.
        eps_weighting: for ``prediction="eps"``, ``"simple"`` (L_simple) or ``"vlb"`` (exact).
        pad_id, eos_id: the ids of [PAD] and [EOS] (needed to place a length first).
    """

    name = "gaussian"
    guidable = True
    samplers = GAUSSIAN_SAMPLERS
    default_sampler = "ddpm"
    sample_options = {"temperature": 1.0, "clamp": False}
    low_noise_terms = ("embedding", "rounding")  # the step t_1 → 0 and −log p(w | h_0)

    def __init__(
        self,
        schedule: Schedule | str = "sqrt",
        prediction: str = "x0",
        chain_length: int | None = 2000,
        eps_weighting: str = "simple",
        *,
        pad_id: int | None = None,
        eos_id: int | None = None,
    ):
        for name, value, valid in (
            ("prediction", prediction, PREDICTIONS),
            ("eps_weighting", eps_weighting, EPS_WEIGHTINGS),
        ):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; choose one of {valid}")
        if chain_length is not None and chain_length < 2:
            raise ValueError(f"chain_length must be ≥ 2 or None (continuous), got {chain_length}")
        self.schedule = get_schedule(schedule) if isinstance(schedule, str) else schedule
        self.prediction, self.chain_length = prediction, chain_length
        self.eps_weighting, self.pad_id, self.eos_id = eps_weighting, pad_id, eos_id

    # ---------------------------------------------------------------- closed forms, §2
    def alpha_bar(self, t: Tensor | float) -> Tensor:  # ᾱ(t), float64
        return self.schedule.alpha_bar(t)

    def q_sample(
        self,
        x0: Tensor,
        t: Tensor | float,
        eps: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Forward closed form ``h_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε`` (docs/math.md §2, "Forward").

        Returns ``(x_t, eps)``, both shaped like ``x0`` (B, L, d); ``t`` is a scalar or (B,).
        """
        if eps is None:
            eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        a = _bcast(self.alpha_bar(t), x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps, eps

    def posterior(
        self, x_t: Tensor, x0: Tensor, t: Tensor | float, s: Tensor | float
    ) -> tuple[Tensor, Tensor]:
        """``q(h_s | h_t, h_0) = N(μ̃, β̃ I)`` for ``s < t`` (docs/math.md §2, "Posterior"):

        ``μ̃ = √ᾱ_s β_{t|s} / (1 − ᾱ_t) · x0 + √α_{t|s} (1 − ᾱ_s) / (1 − ᾱ_t) · x_t``,
        ``β̃ = β_{t|s} (1 − ᾱ_s) / (1 − ᾱ_t)``. Returns ``(mean, variance)``; the variance is
        a per-sequence tensor broadcastable to ``x_t``.
        """
        a_t, a_s = self.alpha_bar(t), self.alpha_bar(s)
        a_ts = a_t / a_s
        b_ts = 1 - a_ts
        c0 = a_s.sqrt() * b_ts / (1 - a_t)
        ct = a_ts.sqrt() * (1 - a_s) / (1 - a_t)
        var = b_ts * (1 - a_s) / (1 - a_t)
        mean = _bcast(c0, x_t) * x0 + _bcast(ct, x_t) * x_t
        return mean, _bcast(var, x_t)

    def prior_kl(self, x0: Tensor, clean: Tensor | None = None) -> Tensor:
        """``L_T = KL(q(h_1 | x0) ‖ N(0, I))`` summed over positions and dims, per sequence (B,);
        leaving out the ``clean`` (B, L) positions if given.

        ``KL(N(μ, σ²) ‖ N(0, 1)) = ½ (μ² + σ² − 1 − log σ²)`` with ``μ = √ᾱ_1 x0``,
        ``σ² = 1 − ᾱ_1``.
        """
        a = self.alpha_bar(1.0)
        per_dim = 0.5 * (a * x0.double() ** 2 + (1 - a) - 1 - torch.log1p(-a))
        per_position = per_dim.sum(-1)  # (B, L)
        return (per_position if clean is None else per_position * (~clean).double()).sum(1)

    def x0_from_eps(self, x_t: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
        """``x̂_0 = (h_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t`` (docs/math.md §2, "Parameterizations")."""
        a = _bcast(self.alpha_bar(t), x_t)
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    def eps_from_x0(self, x_t: Tensor, x0: Tensor, t: Tensor | float) -> Tensor:
        """``ε̂ = (h_t − √ᾱ_t x̂_0) / √(1 − ᾱ_t)`` (docs/math.md §2, "Parameterizations")."""
        a = _bcast(self.alpha_bar(t), x_t)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    def score_from_eps(self, eps: Tensor, t: Tensor | float) -> Tensor:
        """``ŝ = ∇ log q(h_t) ≈ −ε̂ / √(1 − ᾱ_t)`` (docs/math.md §2; notes P5)."""
        return -eps / _bcast(1 - self.alpha_bar(t), eps).sqrt()

    def evidence_logits(self, x_t: Tensor, t: Tensor | float, table: Tensor) -> Tensor:
        """``log q(h_t,i | w_i = v)`` up to a constant in ``v``, for every word row ``E_v``:
        ``(√ᾱ_t h·E_v − ½ ᾱ_t ‖E_v‖²) / (1 − ᾱ_t)``. (B, L, d) -> (B, L, V)."""
        x, table = x_t.float(), table.float()
        a = _bcast(self.alpha_bar(t), x)
        # the (B, L, d) and (B, 1, V) factors are scaled, not the (B, L, V) product: two passes
        # over the large tensor (the product and one in-place add) instead of four. Under bf16
        # autocast the product is bf16: on a trained 4,000 × 56 table its posterior is within a
        # mean KL of 2·10⁻⁴ of float32's at every noise level, at 1.6x the speed
        scores = (x * (a.sqrt() / (1 - a))) @ table.T
        return scores.add_((-0.5 * a / (1 - a)) * table.pow(2).sum(1))

    def predict_x0(
        self,
        output: Tensor,
        x_t: Tensor,
        t: Tensor | float,
        table: Tensor | None = None,
        temperature: float = 1.0,
        banned: Tensor | None = None,
    ) -> Tensor:
        """The network's output read as ``x̂_0``, whatever it was trained to predict.

        ``prediction="posterior"``: the output (B, L, V) are logits that are added to the exact
        per-position evidence (:meth:`evidence_logits`), and ``x̂_0 = Σ_v p_v E_v`` is the mean
        word row under that posterior. At low noise the evidence alone names the word, so
        ``x̂_0`` lands on the row; at high noise it fades and the network's context decides.
        ``temperature`` τ divides those logits before the softmax (sampling only),
        ``x̂_0 = Σ_v softmax((output + evidence) / τ)_v E_v``: below 1 the mean row moves toward
        the most likely word's row, and as τ → 0 ``x̂_0`` becomes that row (a word row at every
        step, as ``clamp`` also gives). Other predictions have no posterior to sharpen.
        ``banned`` (bool, broadcastable to (B, L, V)) rules words out of the posterior.
        """
        if temperature != 1.0 and self.prediction != "posterior":
            raise ValueError(
                f"temperature applies to prediction='posterior' models (this one predicts "
                f"{self.prediction!r}); leave it at 1"
            )
        if self.prediction == "x0":
            return output.float()
        if self.prediction == "eps":
            return self.x0_from_eps(x_t, output.float(), t)
        logits = self.word_logits(output, x_t, t, table)  # a new tensor: changed in place
        if banned is not None:
            logits.masked_fill_(banned, float("-inf"))
        if temperature != 1.0:
            logits.div_(temperature)
        return logits.softmax(-1) @ table.float()

    def word_logits(self, output: Tensor, x_t: Tensor, t, table: Tensor) -> Tensor:
        """The posterior over words of a ``posterior`` model (B, L, V): output + evidence."""
        return self.evidence_logits(x_t, t, table).add_(output)  # the output read in its dtype

    def denoise(
        self,
        model: Denoiser,
        x_t: Tensor,
        t: Tensor,
        x0_prev: Tensor | None = None,
        temperature: float = 1.0,
        banned: Tensor | None = None,
        words: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``x̂_0`` at times ``t`` (B,). A self-conditioned model is given ``x0_prev``, or, when
        that is None, first its own estimate from zeros (two network calls). ``temperature``,
        ``banned``: see :meth:`predict_x0`. With ``words`` it also returns the word
        probabilities (B, L, V) at temperature 1: the posterior of a ``posterior`` model, the
        read-out of ``x̂_0`` otherwise."""
        t_net = t.float().to(x_t.device)
        table = model.word_table() if self.prediction == "posterior" else None
        read = partial(self.predict_x0, x_t=x_t, t=t, table=table, temperature=temperature)
        x0_hat = out = None
        if x0_prev is None:
            out = model(x_t, t_net)
            x0_hat = read(out, banned=banned)
        if getattr(model, "self_conditioning", False):
            prev = x0_hat if x0_prev is None else x0_prev
            out = model(x_t, t_net, x0_prev=prev)
            x0_hat = read(out, banned=banned)
        if not words:
            return x0_hat
        if self.prediction == "posterior":
            return x0_hat, self.word_logits(out, x_t, t, table).softmax(-1)
        return x0_hat, model.logits(x0_hat).float().softmax(-1)

    def vlb_weight(self, t: Tensor | float, s: Tensor | float) -> Tensor:
        """KL of one step ``t → s`` per unit of ``‖x0 − x̂_0‖²``: ``½ (SNR(s) − SNR(t))``.

        Equal to ``‖μ̃(x_t, x0) − μ̃(x_t, x̂_0)‖² / (2 β̃)`` divided by ``‖x0 − x̂_0‖²`` (docs/math.md
        §2, ``L_{t−1}``); times ``1 / SNR(t)`` it is the ε-weight
        ``β² / (2 σ² α (1 − ᾱ_t))`` of notes P2.4.
        """
        return 0.5 * (self.schedule.snr(s) - self.schedule.snr(t))

    # ---------------------------------------------------------------- training loss, §2
    def loss(
        self,
        model: Denoiser,
        ids: Tensor,
        *,
        generator: torch.Generator | None = None,
        t: Tensor | None = None,
        clean: Tensor | None = None,
    ) -> LossTerms:
        """Diffusion-LM's objective ``E_t ‖x̂_0(H_t, t) − x0‖² + ‖√ᾱ_1 x0‖² − log p_θ(w | h_0)``
        (docs/math.md §2, "Training objective"), each term a mean over positions (and dims).

        With ``prediction="posterior"`` the cross-entropy of the posterior over words is added
        (``posterior_ce``, the objective of CDCD, Dieleman et al., 2022): it trains the logits
        directly, as masked-language-model training does, and its minimiser's mean row is the
        minimiser of the MSE term. With ``prediction="eps"`` the first term is ``‖ε̂ − ε‖²``,
        weighted by ``T · ½ (SNR(t − 1/T)/SNR(t) − 1)`` (exact VLB, notes P2.4) if
        ``eps_weighting="vlb"``. Positions where ``clean`` (B, L) is True keep ``x_t = x0`` and
        every term averages over the other positions only (partial noising, DiffuSeq).
        """
        x0 = model.embed(ids)  # (B, L, d)
        t = stratified_times(ids.shape[0], generator=generator) if t is None else t
        x_t, eps = self.q_sample(x0, t, generator=generator)
        noised = None if clean is None else ~clean
        if clean is not None:
            x_t = torch.where(clean[..., None], x0, x_t)
        table = model.word_table() if self.prediction == "posterior" else None
        out = self._train_forward(model, x_t, t, table, generator)
        out = out if self.prediction == "posterior" else out.float()
        terms = {}
        if self.prediction == "posterior":  # logits (B, L, V): MSE of the mean row, plus CE
            log_post = self.word_logits(out, x_t, t, table).log_softmax(-1)
            mse = _mean((log_post.exp() @ table.float() - x0).pow(2), noised)
            nll = -log_post.gather(-1, ids[..., None])[..., 0]  # (B, L)
            terms["posterior_ce"] = _mean(nll, noised)
        elif self.prediction == "x0":
            mse = _mean((out - x0).pow(2), noised)
        elif self.eps_weighting == "simple":
            mse = _mean((out - eps).pow(2), noised)
        else:
            T = self.chain_length or 2000
            tt = (t * T).ceil().clamp(min=1) / T
            w = T * self.vlb_weight(tt, tt - 1.0 / T) / self.schedule.snr(tt)
            mse = _mean(_bcast(w, out) * (out - eps).pow(2), noised)
        prior = self.alpha_bar(1.0).float() * _mean(x0.pow(2), noised)
        h0, _ = self.q_sample(x0, 0.0, generator=generator)
        rounding = _mean(token_nll(model.logits(h0), ids), noised)  # logits (B, L, V)
        total = mse + prior + rounding + sum(terms.values())
        terms.update(mse=mse, prior=prior, rounding=rounding)
        return LossTerms(total, {k: v.detach() for k, v in terms.items()})

    def _train_forward(self, model, x_t: Tensor, t: Tensor, table, generator) -> Tensor:
        """The network output for the loss; a self-conditioned model reads its own no-gradient
        ``x̂_0`` (computed for those rows only) on the even rows, zeros on the odd ones: a
        random half, as the rows come shuffled and the stratified times alternate."""
        t = torch.as_tensor(t, dtype=torch.float64).expand(x_t.shape[0])
        t_net = t.float().to(x_t.device)
        if not getattr(model, "self_conditioning", False):
            return model(x_t, t_net)  # (B, L, d), or (B, L, V) for "posterior"
        x0_prev = torch.zeros_like(x_t)
        with torch.no_grad():
            even = x_t[0::2]
            x0_prev[0::2] = self.predict_x0(model(even, t_net[0::2]), even, t[0::2], table)
        return model(x_t, t_net, x0_prev=x0_prev)

    def predict_ids(
        self, model: Denoiser, ids: Tensor, t: float, *, rounder, generator=None, clean=None
    ) -> tuple[Tensor, Tensor]:
        """Noise ``ids`` to time ``t`` (not where ``clean``), predict ``x̂_0`` and round it.

        Returns the rounded ids (B, L) and the positions that were predicted (the noised ones).
        """
        x0 = model.embed(ids)
        x_t, _ = self.q_sample(x0, t, generator=generator)
        if clean is not None:
            x_t = torch.where(clean[..., None], x0, x_t)
        x0_hat = self.denoise(model, x_t, torch.full((ids.shape[0],), float(t)))
        predicted = torch.ones_like(ids, dtype=torch.bool) if clean is None else ~clean
        return rounder.round(x0_hat), predicted

    # ---------------------------------------------------------------- NLL bound, §2
    def bound_constant(self, model: Denoiser, ids: Tensor, clean: Tensor | None) -> dict:
        """``L_T``, exact (:meth:`prior_kl`)."""
        return {"prior": self.prior_kl(model.embed(ids).float(), clean)}

    def bound_terms(
        self, model: Denoiser, ids: Tensor, u: Tensor, *, generator=None, clean=None
    ) -> dict[str, Tensor]:
        """One replicate of ``Σ_{i=2}^{T} L_{i−1} + L_emb + L_round`` (docs/math.md §2, notes P2.3).

        The diffusion sum by one sample of the step ``i`` per sequence (unbiased:
        ``(T − 1) · L_{i−1}`` with ``i`` uniform on ``2..T``, read off the uniforms ``u``), each
        ``L_{i−1} = ½ (SNR(t_{i−1}) − SNR(t_i)) ‖x0 − x̂_0(h_{t_i}, t_i)‖²``; ``L_emb`` the same
        for the step ``t_1 → t_0 = 0`` that produces ``h_0``; ``L_round = −log p_θ(w | h_0)``.
        With ``chain_length=None`` the continuous-time limit ``½ ∫ −SNR'(t) ‖x0 − x̂_0‖² dt``
        replaces the sum and ``L_emb`` vanishes. ``clean`` positions stay ``x0`` and are left
        out of every term: the bound on ``−log p(noised part | clean part)``.
        """
        T, B, device = self.chain_length, ids.shape[0], ids.device
        x0 = model.embed(ids).float()  # (B, L, d)
        if T is None:
            t = u.clamp(min=1e-6)
            weight, times, s_emb = 0.5 * -self.schedule.snr_derivative(t), t, None
        else:
            t = (2 + (u * (T - 1)).floor().clamp(max=T - 2)) / T
            weight = (T - 1) * self.vlb_weight(t, t - 1.0 / T)
            times = torch.cat([t, torch.full((B,), 1.0 / T, dtype=torch.float64)])
            s_emb = self.vlb_weight(1.0 / T, 0.0)
        x_in = x0 if T is None else torch.cat([x0, x0])
        x_t, _ = self.q_sample(x_in, times, generator=generator)
        if clean is not None:
            held = clean if T is None else torch.cat([clean, clean])  # (B or 2B, L)
            x_t = torch.where(held[..., None], x_in, x_t)
        err = (self.denoise(model, x_t, times) - x_in).double().pow(2)
        if clean is None:
            err = err.flatten(1).sum(1)  # (B,) or (2B,)
        else:
            err = (err.sum(-1) * (~held).double()).sum(1)
        h0, _ = self.q_sample(x0, 0.0, generator=generator)
        logp = model.logits(h0).float().log_softmax(-1).gather(-1, ids[..., None])[..., 0]
        if clean is not None:
            logp = logp * (~clean).double()
        emb = (
            torch.zeros(B, dtype=torch.float64, device=device) if s_emb is None else s_emb * err[B:]
        )
        rounding = -logp.double().flatten(1).sum(1)
        return {"diffusion": weight.to(device) * err[:B], "embedding": emb, "rounding": rounding}
