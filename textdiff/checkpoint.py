"""Run folders and crash-safe checkpoints.

A checkpoint is written aside (``checkpoints/.tmp-step-N``), sealed with a manifest of SHA-256
sums, then renamed into place (``checkpoints/step-N``) — a rename is atomic, so a run killed at
any moment leaves either the complete new checkpoint or none. Loading verifies the manifest and
falls back to the previous checkpoint, with a one-line warning, if the newest is damaged.
Everything is read without unpickling code: weights from safetensors, the trainer state from JSON,
and accelerate's optimizer / scheduler / RNG files with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch
import yaml

from .config import ExperimentConfig

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RUN_FILE = "experiment.yaml"
RUN_ITEMS = (RUN_FILE, "tokenizer", "metrics.jsonl", "checkpoints", "model")


class RunFolderError(ValueError):
    """The output folder cannot be used as asked (it holds another run, or foreign files)."""


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one could not be written."""


def prepare_run_folder(out: Path, cfg: ExperimentConfig, *, resume: bool, overwrite: bool) -> None:
    """Make ``out`` ready for a run of ``cfg``; never deletes anything textdiff did not write.

    A folder that already holds a run is refused unless ``resume`` (the run's model, process and
    data settings must match ``cfg``) or ``overwrite`` (textdiff's files there are removed).
    """
    run_file = out / RUN_FILE
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output {str(out)!r} is a file, not a folder")
    if run_file.is_file():
        if resume:
            _check_same_run(run_file, cfg)
            return
        if not overwrite:
            raise RunFolderError(
                f"{out} already holds a training run; pass --resume to continue it or "
                f"--overwrite to replace it"
            )
        for name in RUN_ITEMS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    elif out.is_dir() and any(out.iterdir()):
        raise RunFolderError(
            f"{out} is not empty and holds no textdiff run; choose a new or empty output folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    tmp = run_file.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    tmp.replace(run_file)


def _check_same_run(run_file: Path, cfg: ExperimentConfig) -> None:
    saved = yaml.safe_load(run_file.read_text(encoding="utf-8")) or {}
    now = cfg.to_dict()
    for section in ("model", "process", "data"):
        if saved.get(section) != now[section]:
            diff = sorted(
                k for k in now[section] if saved.get(section, {}).get(k) != now[section][k]
            )
            raise RunFolderError(
                f"cannot resume: {section} settings differ from the run in "
                f"{run_file.parent} ({', '.join(f'{section}.{k}' for k in diff)}); "
                f"use a new output folder or --overwrite"
            )
    if saved.get("train") != now["train"]:
        logger.warning(
            "resuming with changed train settings; the run will not be identical "
            "to an uninterrupted one"
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CheckpointManager:
    """Saves and restores the full training state under ``root``, keeping the last ``keep``."""

    def __init__(self, root: Path, keep: int = 2):
        self.root, self.keep = Path(root), keep

    def checkpoints(self) -> list[Path]:
        """Sealed checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.glob("step-*") if p.is_dir()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def save(self, accelerator, ema, state: dict, gen_state: torch.Tensor) -> Path:
        """Write the checkpoint of ``state["step"]`` aside, seal it, rename it into place."""
        from safetensors.torch import save_file

        step = state["step"]
        final = self.root / f"step-{step:08d}"
        tmp = self.root / f".tmp-step-{step:08d}"
        rank = accelerator.process_index
        if accelerator.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(tmp), safe_serialization=True)
            (tmp / f"trainer_state_{rank}.json").write_text(
                json.dumps({**state, "noise_generator": gen_state.tolist()}), encoding="utf-8"
            )
            if accelerator.is_main_process and ema is not None:
                save_file(
                    {k: v.contiguous() for k, v in ema.state_dict().items()},
                    str(tmp / "ema.safetensors"),
                )
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                sums = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
                (tmp / MANIFEST).write_text(json.dumps(sums, indent=1), encoding="utf-8")
                if final.exists():
                    shutil.rmtree(final)
                tmp.rename(final)
                for old in self.checkpoints()[: -self.keep]:
                    shutil.rmtree(old, ignore_errors=True)
        except OSError as e:
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(
                f"could not write the checkpoint of step {step} ({e.strerror or e}); "
                f"the previous checkpoint in {self.root} is kept"
            ) from None
        accelerator.wait_for_everyone()
        return final

    def verify(self, path: Path) -> str | None:
        """``None`` if ``path`` is complete and intact, else what is wrong."""
        manifest = path / MANIFEST
        if not manifest.is_file():
            return "no manifest (an interrupted save)"
        try:
            sums = json.loads(manifest.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "unreadable manifest"
        for name, digest in sums.items():
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            if _sha256(f) != digest:
                return f"{name} is corrupt (checksum mismatch)"
        return None

    def load_latest(self, accelerator, ema) -> tuple[dict, torch.Tensor] | None:
        """Restore the newest intact checkpoint into the prepared objects; ``None`` if none."""
        from safetensors.torch import load_file

        for path in reversed(self.checkpoints()):
            problem = self.verify(path)
            if problem is not None:
                logger.warning("skipping checkpoint %s: %s", path.name, problem)
                continue
            accelerator.load_state(str(path))
            if ema is not None:
                ema.load_state_dict(load_file(str(path / "ema.safetensors")))
            rank_file = path / f"trainer_state_{accelerator.process_index}.json"
            saved = json.loads(rank_file.read_text(encoding="utf-8"))
            gen_state = torch.tensor(saved.pop("noise_generator"), dtype=torch.uint8)
            return saved, gen_state
        if self.checkpoints():
            raise CheckpointError(f"no intact checkpoint in {self.root}")
        return None
