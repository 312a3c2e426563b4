"""The denoiser network (docs/math.md §1) as a ``transformers`` model.

``(x_t, t) → prediction``: the word part ``x_t`` (B, L, d) is concatenated on the feature axis with
fixed sinusoidal positions ``e`` (L, d_p) — ``H_t = [h_t ; e]`` — projected to the width ``D``,
given a time embedding, run through a bidirectional pre-LayerNorm Transformer encoder and read out
as a clean-embedding prediction (B, L, d) or token logits (B, L, V). The network knows nothing of
the noise; the forward process interprets its output. ``logits(x) = s · x · Eᵀ`` is the tied
read-out of any embedding-space vector.

With ``rotary``, each head's queries and keys are also rotated by their position (Su et al.,
2021), so attention scores see relative offsets directly; ``e`` stays concatenated either way.

Attention is written as two matmuls (no SDPA): on CPUs with bf16 matmul units this is the form
whose bf16 backward is fast, and on others it is as fast as SDPA at these lengths.

Importing this module registers ``model_type: textdiff`` with ``transformers``' ``AutoConfig`` and
``AutoModel`` (``import textdiff`` arranges the same, without importing torch, for whenever
``transformers``' Auto classes are first imported). A saved folder also names its classes in
``config.json`` ``auto_map`` and ships a two-line ``textdiff_auto.py`` importing them, so
``AutoModel.from_pretrained(folder, trust_remote_code=True)`` works where textdiff is installed
but not imported.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from ..diffusion.registry import get_process_spec
from ..diffusion.settings import ProcessConfig, SampleConfig, saved_sample_settings
from ..schema import from_dict
from .config import ModelConfig
from .dropout import Dropout


def sinusoidal_angles(positions: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """``p ω_k`` for ``k < dim / 2``, ``ω_k = max_period^(−2k/dim)``: (N,) -> (N, dim / 2)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
    return positions.double()[:, None] * freqs.to(positions.device)[None]


def sinusoidal(positions: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer sinusoids: ``[sin(p ω_k), cos(p ω_k)]``, ``ω_k = max_period^(−2k/dim)``.
    (N,) -> (N, dim), float32."""
    angles = sinusoidal_angles(positions, dim, max_period)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()


AUTO_MODULE = "textdiff_auto"  # the file of a saved folder that names its classes (auto_map)
AUTO_MAP = {
    "AutoConfig": f"{AUTO_MODULE}.TextDiffusionConfig",
    "AutoModel": f"{AUTO_MODULE}.TextDiffusionModel",
}
AUTO_SOURCE = '''"""The classes transformers' Auto classes load this model with (config.json
auto_map); they come from textdiff: pip install textdiff."""

from textdiff.models.modeling import TextDiffusionConfig, TextDiffusionModel

__all__ = ["TextDiffusionConfig", "TextDiffusionModel"]
'''


@torch.no_grad()
def init_weights(module: nn.Module) -> None:
    """textdiff's initialisation (the denoiser's and the latent classifier's): linear layers
    N(0, 0.02) with zero bias, word rows N(0, 1) (unit scale, as Diffusion-LM), LayerNorm 1 / 0."""
    if isinstance(module, nn.Linear):
        module.weight.normal_(0.0, 0.02)
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, nn.Embedding):
        module.weight.normal_(0.0, 1.0)
    elif isinstance(module, nn.LayerNorm):
        module.weight.fill_(1.0)
        module.bias.zero_()


class TextDiffusionConfig(PretrainedConfig):
    """Saved as ``config.json``: the network (:class:`ModelConfig` fields), the forward process
    (``process``), generation defaults (``sample``), the special token ids and ``auto_map``."""

    model_type = "textdiff"

    def __init__(
        self,
        process: dict[str, Any] | None = None,
        sample: dict[str, Any] | None = None,
        mask_token_id: int | None = None,
        **kwargs,
    ):
        names = {f.name for f in fields(ModelConfig)}
        net = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        for key, value in asdict(from_dict(ModelConfig, net, "model")).items():
            setattr(self, key, value)
        self.process = asdict(from_dict(ProcessConfig, process, "process"))
        self.sample = asdict(from_dict(SampleConfig, saved_sample_settings(sample), "sample"))
        self.mask_token_id = mask_token_id
        kwargs["auto_map"] = dict(AUTO_MAP)
        super().__init__(**kwargs)

    @classmethod
    def from_parts(
        cls, model: ModelConfig, process: ProcessConfig, sample: SampleConfig, **token_ids
    ) -> TextDiffusionConfig:
        return cls(process=asdict(process), sample=asdict(sample), **asdict(model), **token_ids)

    def model_config(self) -> ModelConfig:
        return ModelConfig(**{f.name: getattr(self, f.name) for f in fields(ModelConfig)})


def rotary_tables(angles: Tensor) -> tuple[Tensor, Tensor]:
    """The tables :func:`rotate` reads, from the angles ``θ`` (L, dh / 2): each pair's
    ``(cos θ, cos θ)`` and ``(−sin θ, sin θ)``, (L, dh) each."""
    cos, sin = angles.cos(), angles.sin()
    return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)


def position_phases(length: int, head_dim: int, device, dtype: torch.dtype) -> tuple:
    """:func:`rotary_tables` for positions ``0 … length − 1`` and heads of ``head_dim``, in
    ``dtype``: what the denoiser (cached) and the latent classifier hand their blocks."""
    angles = sinusoidal_angles(torch.arange(length, device=device), head_dim)
    return tuple(z.to(dtype) for z in rotary_tables(angles))


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair ``(x_{2k}, x_{2k+1})`` of the last axis by the angle of its position:
    ``x`` (..., L, dh), ``cos`` / ``sin`` (L, dh) from :func:`rotary_tables`. Then
    ``rotate(q)_i · rotate(k)_j`` depends on ``i − j`` only.

    Written as ``x · cos + swap(x) · sin`` (``swap`` exchanges each pair): the products and sums
    of ``(x_{2k} cos − x_{2k+1} sin, x_{2k} sin + x_{2k+1} cos)``, bit for bit, in three
    contiguous passes rather than over strided halves (a third less time under bf16 autocast).
    """
    return x * cos + x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2) * sin


class Block(nn.Module):
    """Pre-LN Transformer encoder block, attention as plain matmuls."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, self.heads = cfg.hidden_size, cfg.num_heads
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.fc1 = nn.Linear(D, int(cfg.mlp_ratio * D))
        self.fc2 = nn.Linear(int(cfg.mlp_ratio * D), D)
        self.drop = Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, attn_bias: Tensor | None = None, phases: tuple | None = None
    ) -> Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, D // self.heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, H, L, D/H)
        if phases is not None:
            q, k = rotate(q, *phases), rotate(k, *phases)
        scores = (q * (D // self.heads) ** -0.5) @ k.transpose(-1, -2)  # (B, H, L, L)
        if attn_bias is not None:
            scores = scores + attn_bias
        attn = scores.softmax(-1) @ v  # (B, H, L, D/H)
        x = x + self.drop(self.proj(attn.transpose(1, 2).reshape(B, L, D)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class TextDiffusionModel(PreTrainedModel):
    """Word table ``E``, the denoiser ``(x_t, t) → prediction`` and the tied read-out."""

    config_class = TextDiffusionConfig
    base_model_prefix = "textdiff"
    main_input_name = "x_t"
    _no_split_modules = ["Block"]

    def __init__(self, config: TextDiffusionConfig):
        super().__init__(config)
        cfg = config.model_config()
        cfg.check()
        if cfg.output == "auto":
            raise ValueError("model.output must be resolved to 'embedding' or 'logits'")
        if cfg.readout_scale == "auto":  # ExperimentConfig.network_config resolves it
            raise ValueError("model.readout_scale must be resolved to a number")
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (it comes from the tokenizer)")
        D = cfg.hidden_size
        self.embed_dim, self.pos_dim, self.seq_len = cfg.embed_dim, cfg.pos_dim, cfg.seq_len
        self.readout_scale, self.embed_norm = cfg.readout_scale, cfg.embed_norm
        self.word_embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.self_conditioning = cfg.self_conditioning
        self.rotary, self.head_dim = cfg.rotary, cfg.hidden_size // cfg.num_heads
        in_dim = cfg.embed_dim * (2 if cfg.self_conditioning else 1) + cfg.pos_dim
        self.in_proj = nn.Linear(in_dim, D)
        self.time_mlp = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.ln_out = nn.LayerNorm(D)
        out_dim = cfg.embed_dim if cfg.output == "embedding" else cfg.vocab_size
        self.head = nn.Linear(D, out_dim)
        self._positions: dict[tuple, Tensor | tuple[Tensor, Tensor]] = {}
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module)

    def positions(self, length: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The fixed sinusoidal position part ``e`` (L, d_p); never noised, never trained."""
        key = (length, device, dtype)
        if key not in self._positions:
            pos = torch.arange(length, device=device)
            self._positions[key] = sinusoidal(pos, self.pos_dim).to(device, dtype)
        return self._positions[key]

    def embed(self, ids: Tensor) -> Tensor:
        """``h_0 = E[w]``: (B, L) -> (B, L, d)."""
        if self.embed_norm is None:
            return self.word_embedding(ids)
        return F.embedding(ids, self.word_table())

    def word_table(self) -> Tensor:
        """The word table ``E`` (V, d): the parameter ``W``, or with ``model.embed_norm`` ``r``
        its rows scaled to that norm, ``E_v = r · W_v / ‖W_v‖`` (the gradient reaches ``W``)."""
        weight = self.word_embedding.weight
        if self.embed_norm is None:
            return weight
        return weight * (self.embed_norm / weight.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    def logits(self, x: Tensor) -> Tensor:
        """Tied read-out ``s · x · Eᵀ``: (..., d) -> (..., V)."""
        return (self.readout_scale * x) @ self.word_table().to(x.dtype).T

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        x0_prev: Tensor | None = None,
        attention_mask: Tensor | None = None,
        start: int = 0,
    ) -> Tensor:
        """Predict from the noised word part ``x_t`` (B, L, d) at times ``t`` (B,) in [0, 1].

        ``x0_prev`` (B, L, d) is the previous clean-embedding estimate for a self-conditioned
        model (zeros when absent; ignored otherwise). ``attention_mask`` (B, L), optional, hides
        positions whose value is False from all others. Returns (B, L − start, d) or
        (B, L − start, V) per ``config.output``: every position is read, the first ``start``
        (a clean condition, say) are not predicted.
        """
        B, L, _ = x_t.shape
        if L > self.seq_len:
            raise ValueError(f"sequence length {L} exceeds the model's seq_len {self.seq_len}")
        e = self.positions(L, x_t.device, x_t.dtype).expand(B, L, self.pos_dim)
        parts = [x_t]
        if self.self_conditioning:
            parts.append(torch.zeros_like(x_t) if x0_prev is None else x0_prev.to(x_t.dtype))
        h = self.in_proj(torch.cat([*parts, e], dim=-1))  # (B, L, D): H_t = [h_t ; e]
        temb = sinusoidal(t.reshape(B) * 1000.0, h.shape[-1]).to(h.dtype)
        h = self.drop(h + self.time_mlp(temb)[:, None, :])
        bias = None
        if attention_mask is not None:
            bias = torch.zeros(B, 1, 1, L, dtype=h.dtype, device=h.device)
            bias = bias.masked_fill(~attention_mask.bool()[:, None, None, :], float("-inf"))
        phases = self.rotary_phases(L, h.device, h.dtype) if self.rotary else None
        for block in self.blocks:
            h = block(h, bias, phases)
        return self.head(self.ln_out(h[:, start:] if start else h))

    def rotary_phases(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple:
        """Cached :func:`position_phases`, (L, head_dim) each."""
        key = ("rotary", length, device, dtype)
        if key not in self._positions:
            self._positions[key] = position_phases(length, self.head_dim, device, dtype)
        return self._positions[key]

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """``transformers``' save, plus ``textdiff_auto.py``, the module ``auto_map`` names."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            path = Path(save_directory) / f"{AUTO_MODULE}.py"
            path.write_text(AUTO_SOURCE, encoding="utf-8")

    def num_flops_per_token(self, training: bool = True) -> float:
        """Matmul FLOPs per token (forward ×3 with backward), attention included."""
        cfg = self.config.model_config()
        D, L = cfg.hidden_size, cfg.seq_len
        per_layer = 2 * (4 * D * D + 2 * D * int(cfg.mlp_ratio * D)) + 4 * L * D
        out_dim = cfg.embed_dim if cfg.output == "embedding" else cfg.vocab_size
        in_dim = cfg.embed_dim * (2 if cfg.self_conditioning else 1) + cfg.pos_dim
        fwd = cfg.num_layers * per_layer + 2 * in_dim * D + 2 * D * out_dim
        return fwd * (3 if training else 1)


def ar_config(
    model: ModelConfig, process: ProcessConfig, sample: SampleConfig, **token_ids
) -> PretrainedConfig:
    """A GPT-2-architecture causal LM of the same width, depth, heads and length as ``model``
    (the autoregressive baseline); the process and sample settings ride along in its config.
    The output head is not tied to the input table, so every tensor is saved once."""
    from transformers import GPT2Config

    cfg = GPT2Config(
        vocab_size=model.vocab_size,
        n_positions=model.seq_len,
        n_embd=model.hidden_size,
        n_layer=model.num_layers,
        n_head=model.num_heads,
        n_inner=int(model.mlp_ratio * model.hidden_size),
        resid_pdrop=model.dropout,
        embd_pdrop=model.dropout,
        attn_pdrop=model.dropout,
        bos_token_id=token_ids.get("eos_token_id"),
        tie_word_embeddings=False,
        **token_ids,
    )
    cfg.process, cfg.sample = asdict(process), asdict(sample)
    return cfg


def make_config(
    model: ModelConfig, process: ProcessConfig, sample: SampleConfig, **token_ids
) -> PretrainedConfig:
    """The saved config of a model: a textdiff denoiser, or a causal LM (the AR baseline) —
    whatever network the process's registry entry names."""
    network = get_process_spec(process.noise).network
    if network == "causal-lm":
        token_ids.pop("mask_token_id", None)
        return ar_config(model, process, sample, **token_ids)
    return TextDiffusionConfig.from_parts(model, process, sample, **token_ids)


MODEL_CLASSES = {"textdiff": "TextDiffusionModel", "gpt2": "GPT2LMHeadModel"}


def model_class(model_type: str) -> type[PreTrainedModel]:
    """The class that loads a saved ``config.json`` of ``model_type``."""
    if model_type not in MODEL_CLASSES:
        raise ValueError(
            f"model type {model_type!r} is not a textdiff model ({sorted(MODEL_CLASSES)})"
        )
    if model_type == "gpt2":
        from transformers import GPT2LMHeadModel

        return GPT2LMHeadModel
    return TextDiffusionModel


def sequence_length(config: PretrainedConfig) -> int:
    """Tokens per sequence of either kind of model."""
    return getattr(config, "seq_len", None) or config.n_positions


def process_settings(config: PretrainedConfig) -> ProcessConfig:
    """The process settings saved in a model's config (old key names mapped)."""
    return from_dict(ProcessConfig, config.process, "process")


def token_ids(config: PretrainedConfig) -> dict[str, int | None]:
    """The special token ids a process needs, from a model's config."""
    return {
        "pad": config.pad_token_id,
        "eos": config.eos_token_id,
        "mask": getattr(config, "mask_token_id", None),
    }


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModel`` load ``model_type: textdiff``. Idempotent; registers
    with whichever of ``transformers``' Auto modules has finished importing (the other is
    registered when it has: see ``textdiff/__init__.py``)."""
    configs = sys.modules.get("transformers.models.auto.configuration_auto")
    if configs is not None and hasattr(configs, "AutoConfig"):
        configs.AutoConfig.register("textdiff", TextDiffusionConfig, exist_ok=True)
    models = sys.modules.get("transformers.models.auto.modeling_auto")
    if models is not None and hasattr(models, "AutoModel"):
        models.AutoModel.register(TextDiffusionConfig, TextDiffusionModel, exist_ok=True)


# binds the modules if one is being imported right now (then it registers when it is complete)
import transformers.models.auto.configuration_auto  # noqa: E402, F401
import transformers.models.auto.modeling_auto  # noqa: E402, F401

register_auto_classes()
