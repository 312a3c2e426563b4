"""``TextDiffusionPipeline``: a trained model folder in, sentences out.

A model folder holds ``config.json`` (network, process and generation defaults),
``model.safetensors`` and the tokenizer files. Nothing is ever unpickled: weights load only from
safetensors, and a folder whose files do not fit together (weights vs ``config.json`` shapes,
tokenizer vs vocabulary size) is refused with a one-line :class:`ModelFolderError` before any
weight is read.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .absorbing import MaskProcess
from .autoregressive import AutoregressiveObjective
from .conditional import prepare_request
from .config import ProcessConfig, SampleConfig
from .gaussian import GaussianProcess
from .modeling import model_class, sequence_length
from .process import ForwardProcess
from .rounding import Rounder

logger = logging.getLogger(__name__)


class ModelFolderError(ValueError):
    """A model folder is missing files or its files do not fit together."""


def build_process(config) -> ForwardProcess:
    """The forward process (or the autoregressive objective) a saved model config describes."""
    p = ProcessConfig(**config.process)
    if p.noise == "autoregressive":
        return AutoregressiveObjective(eos_id=config.eos_token_id, pad_id=config.pad_token_id)
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
    """Generated ``texts``; ``ids`` (N, L); the last x̂_0 (N, L, d) of Gaussian models;
    per-batch trajectories when asked for; ``nfe`` the number of network calls made; ``info``
    sampler statistics."""

    texts: list[str]
    ids: Tensor
    x0: Tensor | None
    trajectory: list[list[Tensor]] | None
    nfe: int
    info: dict[str, float]


class TextDiffusionPipeline:
    """Generates text with a trained denoiser, its forward process and tokenizer."""

    def __init__(self, model, tokenizer, precision: str = "auto"):
        self.model, self.tokenizer, self.precision = model.eval(), tokenizer, precision
        self.process = build_process(model.config)
        self.seq_len = sequence_length(model.config)
        self._rounder: Rounder | None = None

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, device: str | torch.device = "cpu", precision: str = "auto"
    ) -> TextDiffusionPipeline:
        """Load a model folder written by :meth:`save_pretrained` or by training.

        Raises:
            ModelFolderError: A file is missing or unreadable, or the files do not fit together
                (weights vs ``config.json``, tokenizer vs vocabulary size).
        """
        from .tokenization import TokenizerError, load_tokenizer

        folder = Path(folder)
        model_type = check_model_folder(folder)
        try:
            tokenizer = load_tokenizer(str(folder))
        except TokenizerError as e:
            raise ModelFolderError(str(e)) from None
        model = model_class(model_type).from_pretrained(folder, use_safetensors=True).to(device)
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
    def max_steps(self) -> int | None:
        """The most sampling steps the model supports: the ``T`` of a Gaussian process with a
        discrete chain (``process.num_steps``), whose grid the model is defined and evaluated
        on; ``None`` (no limit) for continuous time and mask noise."""
        return getattr(self.process, "num_steps", None)

    @property
    def condition_len(self) -> int:
        """Positions of the condition part of a data-to-text model (0: unconditional)."""
        return int(self.model.config.process.get("condition_len", 0))

    @property
    def rounder(self) -> Rounder | None:
        """FAISS index over the current word table, rebuilt if the weights changed (``None`` for
        a model without one, the autoregressive baseline)."""
        if not hasattr(self.model, "word_embedding"):
            return None
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
        template: Sequence[str | int] | None = None,
        condition: str | Sequence[str] | None = None,
        guidance_scale: float = 1.0,
    ) -> list[str] | GenerationOutput:
        """Generate ``num_samples`` sentences.

        Settings left as ``None`` take the model's saved defaults (``config.sample``). The same
        ``seed`` and ``batch_size`` give the same text. Returns the texts, or a
        :class:`GenerationOutput` when ``return_ids`` or ``return_trajectory`` is set.

        ``template``, e.g. ``["The Eagle is a", 4, "near Burger King ."]``: known text (str)
        is held fixed and each span (int ≥ 1) of that many tokens is generated
        (:mod:`textdiff.template`; an invalid one raises :class:`TemplateError`). For a
        data-to-text model (``process.condition_len > 0``), ``condition`` is the meaning
        representation: one string for all samples or one per sample; ``None`` is the null
        condition (unconditional sampling). ``guidance_scale`` ``s`` is classifier-free
        guidance (:mod:`textdiff.guidance`): 1 conditional, 0 unconditional (exactly the null
        condition), > 1 sharper. For such a model ``ids`` and ``x0`` cover the sentence part
        only (positions ``condition_len`` on); the trajectory covers whole rows.
        """
        defaults = SampleConfig(**self.model.config.sample)
        steps = defaults.steps if num_steps is None else num_steps
        length = self.seq_len if seq_len is None else seq_len
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {steps}")
        if self.max_steps is not None and steps > self.max_steps:
            raise ValueError(
                f"num_steps {steps} is more than this model supports: its process has "
                f"T = {self.max_steps} steps (config.json process.num_steps); use at most "
                f"{self.max_steps}"
            )
        if not 1 <= length <= self.seq_len:
            raise ValueError(f"seq_len must be in 1..{self.seq_len}, got {length}")
        C = self.condition_len
        if C and length != self.seq_len:
            raise ValueError("a data-to-text model generates its full length; leave seq_len unset")
        request = prepare_request(
            self.tokenizer,
            self.model.config.process,
            num_samples,
            length,
            template=template,
            condition=condition,
            guidance_scale=guidance_scale,
        )
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
        ids, x0s, trajectories, nfe, info = [], [], [], 0, {}
        device = self.model.device
        for lo in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - lo)
            known = request.known(lo, n, length)
            if known is not None:
                options["known"] = known
            with autocast(device, self.precision):
                out = self.process.sample(
                    request.denoiser(self.model, lo, n, length),
                    (n, length),
                    steps=steps,
                    generator=generator,
                    progress=bar,
                    return_trajectory=return_trajectory,
                    rounder=self.rounder,
                    **options,
                )
            ids.append(out.ids.cpu())
            if out.x0 is not None:
                x0s.append(out.x0.float().cpu())
            trajectories.append(out.trajectory)
            nfe += out.nfe
            for k, v in out.info.items():
                info[k] = info.get(k, 0.0) + v
        all_ids = torch.cat(ids)
        texts, stats = request.texts(self.tokenizer, all_ids)
        info.update(stats)
        if not (return_ids or return_trajectory):
            return texts
        all_ids = all_ids[:, C:]
        x0 = torch.cat(x0s)[:, C:] if x0s else None
        return GenerationOutput(
            texts, all_ids, x0, trajectories if return_trajectory else None, nfe, info
        )


REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def check_model_folder(folder: Path) -> str:
    """Refuse a folder that is not a complete textdiff model, with the reason in one line;
    return its ``model_type``.

    Checks, without reading any weight or unpickling anything: the required files exist,
    ``config.json`` is valid, and every tensor in ``model.safetensors`` has the name and shape
    the config's network expects (none missing, none extra).
    """
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {str(folder)!r} does not exist")
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(
            p.name for p in folder.glob("*.pt*")
        )
        hint = f" (found {pickles}; textdiff never loads pickled weights)" if pickles else ""
        raise ModelFolderError(f"{folder} is not a textdiff model: missing {missing}{hint}")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{folder}/config.json is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{folder}/config.json is not a JSON object: not a textdiff model")
    for key in ("model_type", "process", "sample"):
        if key not in config:
            raise ModelFolderError(f"{folder}/config.json has no {key!r}: not a textdiff model")
    try:
        cls = model_class(config["model_type"])
    except ValueError as e:
        raise ModelFolderError(f"{folder}/config.json: {e}") from None
    _check_weights(folder, cls)
    return config["model_type"]


def _check_weights(folder: Path, cls) -> None:
    """The tensors of ``model.safetensors`` against those of ``cls`` built from ``config.json``
    (on the meta device: no memory, no initialisation)."""
    from safetensors import SafetensorError, safe_open

    try:
        config = cls.config_class.from_pretrained(folder)
        build_process(config)
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
    except ModelFolderError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelFolderError(f"{folder}/config.json is not a valid config: {reason}") from None
    try:
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ModelFolderError(
            f"{folder}/model.safetensors is not a readable safetensors file ({e}); "
            "re-save the model with save_pretrained"
        ) from None
    problems = [f"{k} is missing" for k in expected if k not in found]
    problems += [f"{k} is not part of this network" for k in found if k not in expected]
    problems += [
        f"{k} is {list(found[k])} in the weights but {list(v)} in config.json"
        for k, v in expected.items()
        if k in found and found[k] != v
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ModelFolderError(
            f"{folder}: model.safetensors does not fit config.json: {problems[0]}{more}; "
            "the folder mixes files from different models"
        )
