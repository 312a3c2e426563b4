"""The denoiser network's own settings (docs/math.md §1): the ``model:`` section of an experiment
and the network fields of a model's ``config.json``. The network is given this and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..schema import ConfigError, check_positive


@dataclass
class ModelConfig:
    """The denoiser network (docs/math.md §1)."""

    vocab_size: int = 0  # set from the tokenizer when 0
    # n: every sentence is padded / truncated to this many tokens; auto: the 99th percentile of
    # the training texts' tokenized lengths + [EOS], rounded up to a multiple of 8 (logged)
    seq_len: int | Literal["auto"] = 64
    # d: word-table width (Diffusion-LM: 16 for E2E's 821 words, 128 for ROCStories' ~11k);
    # auto: 16 · (V / 821)^0.8 rounded to a multiple of 8, within [16, 256] (README: own data)
    embed_dim: int | Literal["auto"] = 16
    # every word row scaled to this L2 norm (None: free, as Diffusion-LM). Free rows start near
    # norm √d and grow; the wider the table, the later in the schedule the noise hides words,
    # until it happens only at its noisiest end. A fixed norm keeps it where the training
    # times and sampling steps are (README: own data)
    embed_norm: float | None = None
    pos_dim: int = 32  # d_p: sinusoidal position features concatenated to the word part
    hidden_size: int = 256  # D: Transformer width
    num_layers: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0  # feed-forward width = mlp_ratio * D
    dropout: float = 0.1
    # embedding: head D→d, a clean-embedding (or noise) prediction; logits: head D→V (mask
    # noise, or Gaussian noise with process.prediction=posterior); auto: chosen from the process
    output: Literal["auto", "embedding", "logits"] = "auto"
    # tied read-out logits = readout_scale · x · Eᵀ (the rounding term −log p(w | h_0)); auto:
    # with model.embed_norm and Gaussian noise, the exact posterior over rows of one norm given
    # h_0 ~ N(√ᾱ_0 E_w, (1 − ᾱ_0) I), i.e. √ᾱ_0 / (1 − ᾱ_0) (99.5 for sqrt); else 1
    readout_scale: float | Literal["auto"] = 1.0
    # the denoiser also reads its own previous x̂_0 (Chen et al., 2022): H_t = [h_t ; x̂_0' ; e]
    self_conditioning: bool = False
    # rotary phases on each head's queries and keys (Su et al., 2021): attention scores see
    # relative offsets directly; the concatenated sinusoidal e is kept either way
    rotary: bool = False

    def check(self) -> None:
        sizes = [name for name in ("seq_len", "embed_dim") if getattr(self, name) != "auto"]
        check_positive(
            self,
            *sizes,
            "pos_dim",
            "hidden_size",
            "num_layers",
            "num_heads",
            "mlp_ratio",
        )
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads "
                f"({self.num_heads})"
            )
        if self.pos_dim % 2:
            raise ConfigError(f"model.pos_dim must be even (sin/cos pairs), got {self.pos_dim}")
        if self.rotary and (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(
                "model.rotary needs an even head width (hidden_size / num_heads), got "
                f"{self.hidden_size // self.num_heads}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        self._check_sizes()

    def _check_sizes(self) -> None:
        """What the positivity checks let through but no network can be built or trained with."""
        if self.seq_len != "auto" and self.seq_len < 2:
            raise ConfigError(f"model.seq_len must be ≥ 2 (a word and [EOS]), got {self.seq_len}")
        if int(self.mlp_ratio * self.hidden_size) < 1:
            raise ConfigError(
                f"model.mlp_ratio {self.mlp_ratio} × model.hidden_size {self.hidden_size} gives a "
                f"feed-forward layer of 0 units; raise model.mlp_ratio to at least "
                f"{1 / self.hidden_size:.3g}"
            )
        if self.embed_norm is not None and not self.embed_norm > 0:
            raise ConfigError(f"model.embed_norm must be positive (or null), got {self.embed_norm}")
        if self.readout_scale != "auto" and not self.readout_scale > 0:
            raise ConfigError(f"model.readout_scale must be positive, got {self.readout_scale}")


def auto_embed_dim(vocab_size: int) -> int:
    """``model.embed_dim: auto``: ``16 · (V / 821)^0.8``, rounded to a multiple of 8, within
    [16, 256] — the power law through Diffusion-LM's two choices (d = 16 for E2E's 821 words,
    128 for ROCStories' ~11k)."""
    d = 16 * (vocab_size / 821) ** 0.8
    return int(min(256, max(16, 8 * round(d / 8))))


def auto_seq_len(lengths, percentile: float = 99.0, cap: int = 1024) -> int:
    """``model.seq_len: auto``: the ``percentile`` of the texts' token ``lengths`` plus one
    position for [EOS], rounded up to a multiple of 8 (at most ``cap``)."""
    ordered = sorted(lengths)
    if not ordered:
        return 8
    k = min(len(ordered) - 1, max(0, int(round(percentile / 100 * len(ordered))) - 1))
    return int(min(cap, -(-(ordered[k] + 1) // 8) * 8))
