"""``TextDiffusionPipeline``: a trained model folder in, sentences out.

The pipeline wires the three parts of a model: the network (:mod:`textdiff.models.modeling`),
its forward process (built from the registry, :mod:`textdiff.diffusion.registry`) and the
tokenizer, and runs the sampling loop (:mod:`textdiff.diffusion.loop`) batch by batch. Model
folders are checked before any weight is read (:mod:`textdiff.models.folder`); hub ids, run and
checkpoint folders are resolved to model folders by :mod:`textdiff.models.hub`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .. import memory
from ..diffusion.loop import sample as sample_loop
from ..diffusion.noise import Noise, RowNoise
from ..diffusion.registry import get_process_spec
from ..diffusion.rounding import Rounder
from ..diffusion.settings import SampleConfig, saved_sample_settings
from ..schema import from_dict
from .conditional import Request, prepare_request
from .devices import autocast
from .folder import ModelFolderError, check_model_folder
from .modeling import model_class, process_settings, sequence_length, token_ids
from .placement import DeviceError, current_default, default_device, resolve_device
from .tokenization import fit_to_model

__all__ = [
    "TextDiffusionPipeline",
    "GenerationOutput",
    "ModelFolderError",
    "DeviceError",
    "default_device",
    "resolve_device",
]


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
    """Generates text with a trained denoiser, its forward process and tokenizer.

    :meth:`generate` arguments left as ``None`` take the model's saved defaults
    (``config.sample``: ``sampler``, ``num_steps``, ``clamp``, ``temperature``, ``top_p``,
    ``sampler_options`` — the sampler's own, e.g. ``{"threshold": 0.8, "length_first": True}``,
    saved ones applying when ``sampler`` is the saved sampler). The same ``seed`` gives the same
    text; with ``sample.seeding: per-sample`` (the default of new models) sample ``i`` is the
    same sentence whatever ``batch_size`` or ``num_samples``.

    ``template``, e.g. ``["The Eagle is a", 4, "near Burger King ."]``: known text (str) is
    held fixed and each span (int ≥ 1) of that many tokens is generated
    (:mod:`textdiff.models.template`; an invalid one raises ``TemplateError``). For a
    data-to-text model (``process.condition_len > 0``), ``condition`` is the meaning
    representation: one string for all samples or one per sample; ``None`` is the null
    condition. ``guidance_scale`` ``s`` is classifier-free guidance
    (:mod:`textdiff.diffusion.guidance`): 1 conditional, 0 unconditional (exactly the null
    condition), > 1 sharper. For such a model ``ids`` and ``x0`` cover the sentence part only
    (positions ``condition_len`` on); the trajectory covers whole rows.

    ``control`` steers a Gaussian model by gradients (:mod:`textdiff.diffusion.control`): a
    :class:`~textdiff.diffusion.control.Guidance`, or ``(control, λ)`` pairs (or one control,
    ``λ = DEFAULT_WEIGHT``, 16) with the guidance defaults; :meth:`length_control` and
    :meth:`token_control` build common ones, and any ``control(x, t) -> log p`` of latents
    works.
    """

    def __init__(self, model, tokenizer, precision: str = "auto"):
        self.model, self.tokenizer, self.precision = model.eval(), tokenizer, precision
        self.settings = process_settings(model.config)
        self.spec = get_process_spec(self.settings.noise)
        self.process = self.spec.build(self.settings, token_ids(model.config))
        self.seq_len = sequence_length(model.config)
        fit_to_model(tokenizer, self.seq_len)
        self.model_card: str | None = None  # the README.md of the folder it was loaded from
        self._rounder: Rounder | None = None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        device: str | torch.device | None = None,
        precision: str = "auto",
        revision: str | None = None,
    ) -> TextDiffusionPipeline:
        """Load a model folder written by :meth:`save_pretrained` or by training, a run or
        checkpoint folder (its ``model/``), or a hub id ``namespace/name`` (downloaded once, at
        ``revision``; offline mode uses the cache). ``device`` (``auto`` allowed; default: the
        CPU, or the one :func:`default_device` set).

        Raises:
            ModelFolderError: A file is missing or unreadable, or the files do not fit together
                (weights vs ``config.json``, tokenizer vs vocabulary size).
            HubError: A hub id cannot be downloaded (offline, no network, no such revision).
            DeviceError: ``device`` is unknown or not on this machine.
        """
        from .hub import resolve_model_folder
        from .tokenization import TokenizerError, load_tokenizer

        device = current_default() if device is None else resolve_device(device)
        folder = resolve_model_folder(name_or_path, revision)
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
        pipe = cls(model, tokenizer, precision)
        card = folder / "README.md"
        if card.is_file() and card.stat().st_size < 1 << 20:
            pipe.model_card = card.read_text(encoding="utf-8", errors="replace")
        return pipe

    @property
    def device(self) -> torch.device:
        """Where the network runs."""
        return self.model.device

    def to(self, device: str | torch.device) -> TextDiffusionPipeline:
        """Move the network to ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``,
        ...); returns the pipeline."""
        self.model.to(resolve_device(device))
        self._rounder = None
        return self

    def save_pretrained(self, folder: str | Path, *, training: dict | None = None) -> None:
        """Write ``config.json``, ``model.safetensors``, the tokenizer files and a model card
        (``README.md``): from ``training`` (what :func:`textdiff.models.hub.model_card` takes)
        if given, else the card the pipeline was loaded with, else a card without training."""
        from .hub import model_card

        folder = Path(folder)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        card = self.model_card if training is None and self.model_card else None
        card = card or model_card(self, training)
        (folder / "README.md").write_text(card, encoding="utf-8")

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str = "Upload textdiff model",
    ) -> str:
        """Save the model to a temporary folder and upload it to the hub repository
        ``repo_id`` (created if needed); returns the commit's URL.

        Raises:
            HubError: Offline mode, no network, no permission, or the hub refused.
        """
        import tempfile

        from .hub import push_folder

        with tempfile.TemporaryDirectory(prefix="textdiff-push-") as tmp:
            self.save_pretrained(tmp)
            options = dict(private=private, token=token, revision=revision)
            return push_folder(Path(tmp), repo_id, commit_message=commit_message, **options)

    @property
    def max_steps(self) -> int | None:
        """The most sampling steps the model supports: the ``T`` of a discrete Gaussian chain
        (``process.chain_length``), whose grid the model is defined and evaluated on; ``None``
        (no limit) otherwise."""
        return getattr(self.process, "chain_length", None)

    @property
    def condition_len(self) -> int:
        """Positions of the condition part of a data-to-text model (0: unconditional)."""
        return self.settings.condition_len

    @property
    def sample_defaults(self) -> SampleConfig:
        """The generation defaults saved with the model (``config.json`` ``sample``)."""
        return from_dict(SampleConfig, saved_sample_settings(self.model.config.sample), "sample")

    def length_control(self, length: int):
        """A control for sentences of ``length`` tokens, then [EOS] (Gaussian models)."""
        from ..diffusion.control import LengthControl

        if not 0 <= length < self.seq_len - self.condition_len:
            raise ValueError(
                f"length must be in 0..{self.seq_len - self.condition_len - 1}, got {length}"
            )
        tok, table = self.tokenizer, self.model.word_table().detach()
        return LengthControl(self.process, table, length, tok.eos_token_id, tok.pad_token_id)

    def token_control(self, position: int, token: str | int):
        """A control for ``token`` (a word of the vocabulary, or an id) at ``position``."""
        from ..diffusion.control import TokenControl

        ids = token if isinstance(token, int) else self.tokenizer.convert_tokens_to_ids(token)
        if ids is None or ids == self.tokenizer.unk_token_id or not 0 <= position < self.seq_len:
            raise ValueError(f"no token {token!r} at position {position} in this model")
        return TokenControl(self.process, self.model.word_table().detach(), position, ids)

    @property
    def rounder(self) -> Rounder | None:
        """FAISS index over the current word table, rebuilt if the weights changed (``None`` for
        a model without one, the autoregressive baseline)."""
        if not hasattr(self.model, "word_embedding"):
            return None
        weight = self.model.word_table()
        if self._rounder is None:
            self._rounder = Rounder(weight)
        else:
            self._rounder.update(weight)
        return self._rounder

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
        sampler_options: dict | None = None,
        return_ids: bool = False,
        return_trajectory: bool = False,
        progress: bool = False,
        seq_len: int | None = None,
        template: Sequence[str | int] | None = None,
        condition: str | Sequence[str] | None = None,
        guidance_scale: float = 1.0,
        control=None,
    ) -> list[str] | GenerationOutput:
        """Generate ``num_samples`` sentences; the arguments are described in the class
        docstring. Returns the texts, or a :class:`GenerationOutput` when ``return_ids`` or
        ``return_trajectory`` is set."""
        guidance = _guidance(control)
        if seed is not None and not 0 <= seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {seed}")
        overrides = dict(sampler=sampler, steps=num_steps, clamp=clamp)
        overrides.update(temperature=temperature, top_p=top_p, options=sampler_options)
        settings = self._sample_settings(overrides)
        length = self._check_shape(num_samples, batch_size, seq_len)
        conditioning = dict(template=template, condition=condition, guidance_scale=guidance_scale)
        request = prepare_request(
            self.tokenizer, self.settings, num_samples, length, **conditioning
        )
        seed = seed if seed is not None else torch.seed() % 2**63
        shared = Noise(torch.Generator().manual_seed(seed))
        batches = range(0, num_samples, batch_size)
        bar, outputs = _Progress(progress, len(batches) * settings.steps), []
        with torch.no_grad() if guidance is not None else torch.inference_mode():
            for lo in batches:
                n = min(batch_size, num_samples - lo)
                noise = shared if settings.seeding == "shared" else RowNoise(seed, lo, n)
                batch = (request, lo, n, length, settings, noise, bar, return_trajectory)
                outputs.append(self._sample_batch(*batch, guidance))
        bar.close()
        return self._decode(request, outputs, return_ids or return_trajectory, return_trajectory)

    def _sample_settings(self, overrides: dict) -> SampleConfig:
        """The saved defaults with ``overrides`` (those not None), checked as the config is."""
        defaults = self.sample_defaults
        given = {k: v for k, v in overrides.items() if v is not None}
        if given.get("sampler", defaults.sampler) != defaults.sampler:
            defaults.options = {}  # the saved options belong to the saved sampler
        given["options"] = {**defaults.options, **given.get("options", {})}
        settings = dataclasses.replace(defaults, **given)
        if "steps" in given and not (isinstance(settings.steps, int) and settings.steps >= 1):
            raise ValueError(f"num_steps must be at least 1, got {settings.steps}")
        settings.check(where="")
        self.spec.check_sample(self.settings, settings, where="")
        return settings

    def _check_shape(self, num_samples: int, batch_size: int, seq_len: int | None) -> int:
        length = self.seq_len if seq_len is None else seq_len
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 1 <= length <= self.seq_len:
            raise ValueError(f"seq_len must be in 1..{self.seq_len}, got {length}")
        if self.condition_len and length != self.seq_len:
            raise ValueError("a data-to-text model generates its full length; leave seq_len unset")
        check_generation_memory(self, num_samples, batch_size, "num_samples")
        return length

    def _sample_batch(
        self,
        request: Request,
        lo: int,
        n: int,
        length: int,
        settings,
        noise,
        bar,
        trajectory,
        guidance=None,
    ):
        """One batch of samples ``lo .. lo + n`` through the sampling loop."""
        options = {k: getattr(settings, k) for k in ("clamp", "temperature", "top_p")}
        options.update(settings.options)
        with autocast(self.model.device, self.precision):
            return sample_loop(
                self.process,
                request.denoiser(self.model, lo, n, length),
                (n, length),
                steps=settings.steps,
                sampler=settings.sampler,
                noise=noise,
                known=request.known(lo, n, length),
                rounder=self.rounder,
                progress=bar,
                return_trajectory=trajectory,
                guidance=guidance,
                **options,
            )

    def _decode(self, request: Request, outputs: list, full: bool, trajectory: bool):
        """Texts (and, if ``full``, a :class:`GenerationOutput`) from the batches' outputs."""
        ids = torch.cat([out.ids.cpu() for out in outputs])
        texts, info = request.texts(self.tokenizer, ids)
        if not full:
            return texts
        for out in outputs:
            for k, v in out.info.items():
                info[k] = info.get(k, 0.0) + v
        C = self.condition_len
        x0s = [out.x0.float().cpu() for out in outputs if out.x0 is not None]
        x0 = torch.cat(x0s)[:, C:] if x0s else None
        trajectories = [out.trajectory for out in outputs] if trajectory else None
        nfe = sum(out.nfe for out in outputs)
        return GenerationOutput(texts, ids[:, C:], x0, trajectories, nfe, info)


def _guidance(control):
    """``generate``'s ``control`` argument as a :class:`Guidance` (``None``: no control)."""
    from ..diffusion.control import DEFAULT_WEIGHT, Guidance

    if control is None or isinstance(control, Guidance):
        return control
    if callable(control):
        return Guidance([(control, DEFAULT_WEIGHT)])
    return Guidance(list(control))


class _Progress:
    """One bar over the sampling steps of every batch of a ``generate`` call."""

    def __init__(self, enabled: bool, total: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="sampling", unit="step", disable=not enabled)

    def __call__(self, plan):
        for entry in plan:
            yield entry
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def check_generation_memory(pipe, n: int, batch_size: int, flag: str) -> None:
    """Refuse generating ``n`` sentences with ``pipe`` whose memory (ids, x̂_0 and text of
    every sentence; one batch's attention and logits) exceeds the machine's; ``flag`` names the
    number of sentences in the message."""
    cfg, L = pipe.model.config, pipe.seq_len
    heads = getattr(cfg, "num_heads", None) or cfg.num_attention_heads
    per_sentence = L * (8 + 4 * getattr(cfg, "embed_dim", 0) + 64)
    B = min(n, batch_size)
    parts = {
        "the sentences": float(n * per_sentence),
        "one batch": 4.0 * B * L * (3 * heads * L + 16 * cfg.hidden_size + 2 * cfg.vocab_size),
    }
    knobs = {"the sentences": f"{flag} (generate in several runs)", "one batch": "--batch-size"}
    memory.check_memory(parts, f"generating {n:,} sentences of {L} tokens", knobs)
