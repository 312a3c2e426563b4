"""``TextDiffusionPipeline``: a trained model folder in, sentences out.

A model folder holds ``config.json`` (network, process and generation defaults),
``model.safetensors`` and the tokenizer files. Nothing is ever unpickled: weights load only from
safetensors.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .absorbing import MaskProcess
from .gaussian import GaussianProcess
from .modeling import TextDiffusionModel
from .process import ForwardProcess
from .rounding import Rounder

logger = logging.getLogger(__name__)


class ModelFolderError(ValueError):
    """A model folder is missing files or its files do not fit together."""


def build_process(config) -> ForwardProcess:
    """The forward process a :class:`TextDiffusionConfig` describes."""
    p = config.process_config()
    if p.noise == "mask":
        if config.mask_token_id is None:
            raise ModelFolderError("mask noise needs config.mask_token_id (the [MASK] token id)")
        return MaskProcess(p.schedule, mask_id=config.mask_token_id)
    return GaussianProcess(p.schedule, p.prediction, p.num_steps, p.eps_weighting)


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 matmuls are native here (CUDA with bf16, or a CPU with AVX-512-BF16 / AMX).
    Elsewhere bf16 is emulated and far slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def autocast(device: torch.device | str, precision: str):
    """``torch.autocast`` for ``precision`` (``auto`` / ``fp32`` / ``bf16``) on ``device``."""
    device = torch.device(device)
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_supported(device))
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@dataclass
class GenerationOutput:
    """Generated ``texts``; ``ids`` (N, L); per-batch trajectories when asked for; ``nfe`` the
    number of network calls made; ``info`` sampler statistics."""

    texts: list[str]
    ids: Tensor
    trajectory: list[list[Tensor]] | None
    nfe: int
    info: dict[str, float]


class TextDiffusionPipeline:
    """Generates text with a trained denoiser, its forward process and tokenizer."""

    def __init__(self, model: TextDiffusionModel, tokenizer, precision: str = "auto"):
        self.model, self.tokenizer, self.precision = model.eval(), tokenizer, precision
        self.process = build_process(model.config)
        self._rounder: Rounder | None = None

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, device: str | torch.device = "cpu", precision: str = "auto"
    ) -> TextDiffusionPipeline:
        """Load a model folder written by :meth:`save_pretrained` or by training."""
        from .tokenization import load_tokenizer

        folder = Path(folder)
        check_model_folder(folder)
        model = TextDiffusionModel.from_pretrained(folder, use_safetensors=True).to(device)
        tokenizer = load_tokenizer(str(folder))
        if len(tokenizer) != model.config.vocab_size:
            raise ModelFolderError(
                f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary "
                f"is {model.config.vocab_size}; the folder mixes files from different runs"
            )
        return cls(model, tokenizer, precision)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``config.json``, ``model.safetensors`` and the tokenizer files."""
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)

    @property
    def rounder(self) -> Rounder:
        """FAISS index over the current word table; rebuilt if the weights changed."""
        weight = self.model.word_embedding.weight
        if self._rounder is None:
            self._rounder = Rounder(weight)
        else:
            self._rounder.update(weight)
        return self._rounder

    @torch.inference_mode()
    def generate(
        self,
        num_samples: int,
        *,
        num_steps: int | None = None,
        sampler: str | None = None,
        seed: int | None = 0,
        batch_size: int = 64,
        clamp: bool | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        return_ids: bool = False,
        return_trajectory: bool = False,
        progress: bool = False,
        seq_len: int | None = None,
    ) -> list[str] | GenerationOutput:
        """Generate ``num_samples`` sentences.

        Settings left as ``None`` take the model's saved defaults (``config.sample``). The same
        ``seed`` and ``batch_size`` give the same text. Returns the texts, or a
        :class:`GenerationOutput` when ``return_ids`` or ``return_trajectory`` is set.
        """
        defaults = self.model.config.sample_config()
        steps = defaults.steps if num_steps is None else num_steps
        length = self.model.seq_len if seq_len is None else seq_len
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {steps}")
        if not 1 <= length <= self.model.seq_len:
            raise ValueError(f"seq_len must be in 1..{self.model.seq_len}, got {length}")
        options = {
            "sampler": defaults.sampler if sampler is None else sampler,
            "clamp": defaults.clamp if clamp is None else clamp,
            "temperature": defaults.temperature if temperature is None else temperature,
            "top_p": defaults.top_p if top_p is None else top_p,
        }
        generator = torch.Generator().manual_seed(
            seed if seed is not None else torch.seed() % 2**63
        )
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = functools.partial(tqdm, desc="sampling", leave=False)
        ids, trajectories, nfe, info = [], [], 0, {}
        device = self.model.device
        for lo in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - lo)
            with autocast(device, self.precision):
                out = self.process.sample(
                    self.model,
                    (n, length),
                    steps=steps,
                    generator=generator,
                    progress=bar,
                    return_trajectory=return_trajectory,
                    rounder=self.rounder,
                    **options,
                )
            ids.append(out.ids.cpu())
            trajectories.append(out.trajectory)
            nfe += out.nfe
            for k, v in out.info.items():
                info[k] = info.get(k, 0.0) + v
        all_ids = torch.cat(ids)
        from .tokenization import decode

        texts = decode(self.tokenizer, all_ids)
        if not (return_ids or return_trajectory):
            return texts
        return GenerationOutput(
            texts, all_ids, trajectories if return_trajectory else None, nfe, info
        )


REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def check_model_folder(folder: Path) -> None:
    """Refuse a folder that is not a complete textdiff model, with the reason in one line."""
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {str(folder)!r} does not exist")
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(
            p.name for p in folder.glob("*.pt*")
        )
        hint = f" (found {pickles}; textdiff never loads pickled weights)" if pickles else ""
        raise ModelFolderError(f"{folder} is not a textdiff model: missing {missing}{hint}")
