"""Model folders and the Hugging Face hub: where a model name points, uploads, model cards.

:func:`resolve_model_folder` turns what ``TextDiffusionPipeline.from_pretrained`` is given into a
local model folder: a model folder itself, a run or checkpoint folder (its ``model/``), or a hub
id ``namespace/name`` downloaded with ``huggingface_hub`` (offline mode is respected: a cached
copy is used, and without one the refusal says so in one line). :func:`push_folder` uploads a
saved folder; :func:`model_card` writes the ``README.md`` saved with every model.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import TextdiffError
from .folder import ModelFolderError

# the files a model folder needs from a hub repository (weights only as safetensors)
HUB_FILES = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "README.md",
    "experiment.yaml",
    "textdiff_auto.py",
]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


class HubError(TextdiffError, RuntimeError):
    """The Hugging Face hub cannot be reached, refuses a request, or lacks the repository."""


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a hub repository id (``name`` or ``namespace/name``) rather
    than a path."""
    return bool(_HUB_ID.fullmatch(name)) and not name.startswith((".", "~"))


def resolve_model_folder(name_or_path: str | Path, revision: str | None = None) -> Path:
    """The local model folder ``name_or_path`` stands for.

    A folder holding ``config.json`` is used as it is; a run folder or a checkpoint
    (``checkpoints/step-N``) without one stands for its ``model/``. A name that is not a local
    folder but reads as a hub id (``namespace/name``) is downloaded (or taken from the cache).

    Raises:
        ModelFolderError: No such folder, and the name is not a hub id.
        HubError: The hub id cannot be downloaded (offline, no network, no such repository).
    """
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        inner = path / "model"
        if not (path / "config.json").is_file() and (inner / "config.json").is_file():
            return inner  # a run folder or a checkpoint: its model folder
        return path
    name = str(name_or_path)
    if path.exists() or not is_hub_id(name):
        return path  # check_model_folder says what is wrong with it
    return _download(name, revision)


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES)
    except GatedRepoError:
        raise HubError(
            f"hub model {repo_id!r} is gated; accept its terms on the hub and log in "
            "(`hf auth login`), then try again"
        ) from None
    except RepositoryNotFoundError:
        raise ModelFolderError(
            f"{repo_id!r} is neither a local folder nor a model on the Hugging Face hub (a "
            "private one needs `hf auth login`); check the name or the path"
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"hub model {repo_id!r} has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        raise HubError(_unreachable(repo_id)) from None
    except (HfHubHTTPError, OSError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HubError(f"could not download hub model {repo_id!r} ({reason})") from None
    return Path(folder)


def offline() -> bool:
    """Whether ``huggingface_hub`` is in offline mode (``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return env or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _unreachable(repo_id: str) -> str:
    if offline():
        why = "offline mode is on (HF_HUB_OFFLINE=1)"
        fix = "unset HF_HUB_OFFLINE on a machine with network, or pass a local model folder"
    else:
        why = "the Hugging Face hub cannot be reached (no network?)"
        fix = "check the network, or pass a local model folder"
    return f"{repo_id!r} is not a local folder, {why} and no copy is cached; {fix}"


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload textdiff model",
) -> str:
    """Create the hub repository ``repo_id`` if needed and upload ``folder`` to it; returns the
    commit's URL.

    Raises:
        HubError: Offline mode, no network, no permission or any refusal of the hub.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not is_hub_id(repo_id) or "/" not in repo_id:
        raise HubError(f"{repo_id!r} is not a hub repository id; write it as namespace/name")
    if offline():
        raise HubError(
            f"cannot push to {repo_id!r}: offline mode is on (HF_HUB_OFFLINE=1); unset it on a "
            "machine with network"
        )
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        upload = dict(commit_message=commit_message, revision=revision)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), **upload)
    except (HfHubHTTPError, OSError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HubError(
            f"could not push to hub repository {repo_id!r} ({reason}); check the network, the "
            "name and your token (`hf auth login`)"
        ) from None
    return str(getattr(info, "commit_url", info))


# --------------------------------------------------------------------------------- model card


def model_card(pipe, training: dict | None = None) -> str:
    """The ``README.md`` of a model folder: what the model is, how it was trained (``training``:
    ``data``, ``steps``, ``max_steps``, ``batch_size``, ``tokens``, ``precision``,
    ``evaluation`` — the last evaluation's figures and ``step``) and how to load it."""
    cfg, settings = pipe.model.config, pipe.settings
    params = sum(p.numel() for p in pipe.model.parameters())
    sample = pipe.sample_defaults
    lines = [
        "---",
        "library_name: textdiff",
        "pipeline_tag: text-generation",
        "tags: [textdiff, text-diffusion, diffusion-lm]",
        "---",
        "",
        f"# textdiff {settings.noise} model",
        "",
        f"A text diffusion language model trained with textdiff: `{settings.noise}` noise, "
        f"a `{cfg.model_type}` network of {params:,} parameters, {pipe.seq_len} positions, a "
        f"vocabulary of {len(pipe.tokenizer):,} tokens.",
        f"Generation defaults: sampler `{sample.sampler}`, {sample.steps} steps, temperature "
        f"{sample.temperature:g}.",
        "",
        *_training_section(training),
        *_usage_section(),
    ]
    return "\n".join(lines) + "\n"


def _training_section(training: dict | None) -> list[str]:
    if not training:
        return ["## Training", "", "Not recorded with this folder.", ""]
    steps = f"{training['steps']:,} optimizer steps"
    if training.get("max_steps") and training["max_steps"] != training["steps"]:
        steps += f" of {training['max_steps']:,} (an intermediate checkpoint)"
    lines = [
        "## Training",
        "",
        f"- **data**: {training.get('data', 'not recorded')}",
        f"- **steps**: {steps}, {training.get('batch_size', '?')} sentences a step",
        f"- **tokens seen**: {training.get('tokens', 0):,}",
        f"- **precision**: {training.get('precision', 'fp32')}",
        "",
    ]
    evaluation = {
        k: v for k, v in (training.get("evaluation") or {}).items() if isinstance(v, float)
    }
    if evaluation:
        at = training["evaluation"].get("step", training["steps"])
        lines += [f"Validation at step {at:,} (EMA weights; loss terms per position):", ""]
        lines += ["| figure | value |", "| --- | --- |"]
        lines += [f"| `{k}` | {v:.4f} |" for k, v in sorted(evaluation.items())]
        lines.append("")
    samples = (training.get("evaluation") or {}).get("samples") or []
    if samples:
        lines += ["Samples at that evaluation:", "", "```", *samples, "```", ""]
    return lines


def _usage_section() -> list[str]:
    return [
        "## Use",
        "",
        "```python",
        "from textdiff import TextDiffusionPipeline",
        "",
        'pipe = TextDiffusionPipeline.from_pretrained("THIS_FOLDER_OR_HUB_ID")',
        "pipe.generate(8, seed=0)",
        "```",
        "",
        "`textdiff generate THIS_FOLDER_OR_HUB_ID -n 8` does the same from the shell. The network",
        "alone loads with `transformers` (after `import textdiff`, or with",
        "`trust_remote_code=True`): `AutoModel.from_pretrained(...)`.",
    ]
