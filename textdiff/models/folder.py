"""Model folders: what a complete one holds, checked before any weight is read.

A model folder holds ``config.json`` (network, process and generation defaults),
``model.safetensors`` and the tokenizer files. Nothing is ever unpickled: weights load only from
safetensors, and a folder whose files do not fit together (weights vs ``config.json`` shapes,
tokenizer vs vocabulary size) is refused with a one-line :class:`ModelFolderError`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..diffusion.registry import build_process, get_process_spec
from ..diffusion.settings import ProcessConfig, SampleConfig, saved_sample_settings
from ..errors import TextdiffError
from ..schema import ConfigError, from_dict
from .modeling import model_class, process_settings, token_ids


class ModelFolderError(TextdiffError, ValueError):
    """A model folder is missing files or its files do not fit together."""


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
    if (folder / "config.json").stat().st_size > 10 << 20:
        raise ModelFolderError(f"{folder}/config.json is over 10 MiB: not a textdiff model config")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ModelFolderError(f"{folder}/config.json is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{folder}/config.json is not a JSON object: not a textdiff model")
    model_type = config.get("model_type")
    for key in ("model_type", "process", "sample"):
        if key not in config:
            raise ModelFolderError(
                f"{folder}/config.json (model_type {model_type!r}) has no {key!r}: not a "
                "textdiff model"
            )
    try:
        cls = model_class(model_type)
    except (ValueError, TypeError) as e:
        raise ModelFolderError(f"{folder}/config.json: {e}") from None
    _check_settings(folder, config)
    _check_weights(folder, cls)
    return model_type


def _check_settings(folder: Path, config: dict) -> None:
    """The ``process`` and ``sample`` entries of ``config.json`` checked as a config's are, and
    ``model_type`` against the network the process needs; every problem names the file."""
    where = f"{folder}/config.json"
    try:
        settings = from_dict(ProcessConfig, config["process"], "process")
        settings.check()
        sample = from_dict(SampleConfig, saved_sample_settings(config["sample"]), "sample")
        sample.check()
        spec = get_process_spec(settings.noise)
        spec.check_sample(settings, sample)
    except ConfigError as e:
        raise ModelFolderError(f"{where}: {e}; fix it there or re-save the model") from None
    causal = spec.network == "causal-lm"
    if (config["model_type"] == "gpt2") != causal:
        needed = "gpt2" if causal else "textdiff"
        raise ModelFolderError(
            f"{where}: model_type {config['model_type']!r} does not fit process.noise "
            f"{settings.noise!r}, whose network has model_type {needed!r}; the file mixes "
            "settings of different models"
        )


def _check_weights(folder: Path, cls) -> None:
    """The tensors of ``model.safetensors`` against those of ``cls`` built from ``config.json``
    (on the meta device: no memory, no initialisation)."""
    from safetensors import SafetensorError, safe_open

    try:
        config = cls.config_class.from_pretrained(folder)
        build_process(process_settings(config), token_ids(config))
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
