"""A classifier of noised word latents, for plug-and-play control (Diffusion-LM, §5).

``LatentClassifier(h_t, t) → logits`` (B, K): a small bidirectional Transformer over
``[h_t ; e]`` (the same input layout as the denoiser, without self-conditioning), with one logit
per label — independent labels (sigmoid), so a sentence may carry several (e.g. the slots
``food[Japanese]`` and ``area[riverside]`` of an E2E meaning representation). ``pooling``
``"max"`` (what :func:`~textdiff.infra.classify.train_classifier` trains) scores each label at
every position and pools with a smooth maximum, "the sentence says it somewhere":
``logit_k = log Σ_i exp(s_ik) − log L`` over the L positions' scores ``s_ik``, which lies
between their mean and their maximum;
``"mean"`` averages the positions' states before one head (the config's default, so classifiers
saved before the field existed load as they were trained). It is
trained on latents ``h_t ~ q(h_t | E[w])`` of one diffusion model's word table ``E`` at random
``t`` (:mod:`textdiff.infra.classify`), so it reads that model's latents at every step of
sampling; ``config.table_fingerprint`` records which table, and :func:`check_table` refuses
another. Saved and loaded like a model: ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from .config import ModelConfig
from .modeling import Block, init_weights, position_phases, sinusoidal

POOLINGS = ("max", "mean")


class LatentClassifierConfig(PretrainedConfig):
    """The classifier's labels, the latent it reads (``embed_dim``, ``seq_len``, the table's
    fingerprint) and its network size."""

    model_type = "textdiff-classifier"

    def __init__(
        self,
        labels: list[str] | None = None,
        embed_dim: int = 16,
        seq_len: int = 48,
        pos_dim: int = 32,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        table_fingerprint: str = "",
        pooling: str = "mean",
        **kwargs,
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
        self.pooling = pooling
        self.labels = list(labels or [])
        self.embed_dim, self.seq_len, self.pos_dim = embed_dim, seq_len, pos_dim
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.table_fingerprint = table_fingerprint
        super().__init__(**kwargs)


class LatentClassifier(PreTrainedModel):
    """``(h_t, t) → logits`` over :attr:`labels` (module docstring)."""

    config_class = LatentClassifierConfig
    main_input_name = "x_t"

    def __init__(self, config: LatentClassifierConfig):
        super().__init__(config)
        if not config.labels:
            raise ValueError("a latent classifier needs at least one label")
        D = config.hidden_size
        block = ModelConfig(hidden_size=D, num_heads=config.num_heads, dropout=0.0)
        self.in_proj = nn.Linear(config.embed_dim + config.pos_dim, D)
        self.time_mlp = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        self.blocks = nn.ModuleList(Block(block) for _ in range(config.num_layers))
        self.ln_out = nn.LayerNorm(D)
        self.head = nn.Linear(D, len(config.labels))
        self.post_init()

    @property
    def labels(self) -> list[str]:
        return self.config.labels

    def label_index(self, label: str) -> int:
        """The index of ``label``, or of the one label equal to it but for spaces (a raw E2E
        value ``less than £20`` is ``less than £ 20`` in the tokenized training text); a
        ValueError lists the labels when there is none."""
        if label in self.config.labels:
            return self.config.labels.index(label)
        squeezed = "".join(label.split())
        bare = [i for i, x in enumerate(self.config.labels) if "".join(x.split()) == squeezed]
        if len(bare) != 1:
            raise ValueError(
                f"{label!r} is not a label of this classifier; its labels: "
                f"{', '.join(self.config.labels)}"
            )
        return bare[0]

    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Logits (B, K) for latents ``x_t`` (B, L, d) at times ``t`` (B,) in [0, 1]."""
        B, L, _ = x_t.shape
        cfg = self.config
        e = sinusoidal(torch.arange(L, device=x_t.device), cfg.pos_dim).to(x_t.dtype)
        h = self.in_proj(torch.cat([x_t, e.expand(B, L, cfg.pos_dim)], -1))
        temb = sinusoidal(t.reshape(B) * 1000.0, h.shape[-1]).to(h.dtype)
        h = h + self.time_mlp(temb)[:, None, :]
        phases = position_phases(L, cfg.hidden_size // cfg.num_heads, x_t.device, h.dtype)
        for block in self.blocks:
            h = block(h, None, phases)
        h = self.ln_out(h)
        if cfg.pooling == "mean":
            return self.head(h.mean(1))
        return self.head(h).logsumexp(1) - math.log(L)  # a smooth max over positions (B, K)


def table_fingerprint(table: Tensor) -> str:
    """A short SHA-256 of a word table's float32 bytes: which latents a classifier reads."""
    data = table.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def check_table(classifier: LatentClassifier, table: Tensor) -> None:
    """Refuse a classifier trained on another model's latents."""
    if classifier.config.table_fingerprint != table_fingerprint(table):
        raise ValueError(
            "this classifier was trained on the latents of another model (its word table "
            "differs); train one for this model with textdiff.infra.classify.train_classifier"
        )
