"""Run folders and crash-safe checkpoints.

A checkpoint is written aside (``checkpoints/.tmp-step-N``), sealed with a manifest of SHA-256
sums, then renamed into place (``checkpoints/step-N``) — a rename is atomic, so a run killed at
any moment leaves either the complete new checkpoint or none; an unfinished ``.tmp-step-N`` is
removed when the run resumes. Old checkpoints are pruned by renaming them aside first, so a kill
while pruning never leaves a half-deleted ``step-N``. Loading verifies the manifest and falls back
to the previous checkpoint, with a one-line warning, if the newest is damaged or unreadable.

Everything is read without unpickling code: weights and random-generator states from
safetensors, the trainer state from JSON, and accelerate's optimizer / scheduler / RNG files with
``weights_only=True``. The torch RNG is restored from textdiff's own safetensors file, not only
by accelerate (which ignores a failure to restore it).

Each checkpoint also holds ``model/``, a model folder of its EMA weights (config, weights,
tokenizer, model card), so ``TextDiffusionPipeline.from_pretrained("RUN/checkpoints/step-N")``
loads it; resuming reads the EMA weights from it. The manifest covers the files of
``model/`` too.

The tokenizer and the final model folder are written the same way (aside, then renamed), and
``metrics.jsonl`` is cut back to a checkpoint's step when a run resumes from it
(:func:`rewind_metrics`). Run folders themselves (the manifest of what textdiff wrote, the lock
of the training process) are :mod:`textdiff.infra.runfolder`; its names are re-exported here.
Every checkpoint saved or pruned is recorded in the run's manifest.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import pickle
import re
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError

from ..errors import TextdiffError
from .runfolder import (  # noqa: F401 (re-exported: the trainer's run-folder calls)
    LEFTOVERS,
    RUN_FILE,
    RUN_ITEMS,
    RunFolderError,
    RunManifest,
    _remove,
    _walk,
    prepare_run_folder,
    run_scope,
)

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MODEL_DIR = "model"  # a checkpoint's model folder: TextDiffusionPipeline.from_pretrained loads it
_STEP = re.compile(r"step-(\d+)")
# what a failed write raises: OSError (plain files), SafetensorError, RuntimeError (torch.save)
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
# what reading a damaged file raises (a weights_only refusal is a pickle.UnpicklingError)
READ_ERRORS = (OSError, RuntimeError, ValueError, KeyError, SafetensorError)


class CheckpointError(TextdiffError, RuntimeError):
    """No usable checkpoint, or one could not be written."""


class TrainingError(TextdiffError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM stopped training after the checkpoint of ``step`` was saved."""

    def __init__(self, step: int, checkpoint: Path, signum: int = signal.SIGINT):
        super().__init__(f"interrupted at step {step}; checkpoint saved, resume with --resume")
        self.step, self.checkpoint, self.signum = step, checkpoint, signum


# ------------------------------------------------------------------------- run folder files


def write_folder(folder: Path, write: Callable[[Path], None]) -> None:
    """``write(aside)`` into a sibling ``.name.tmp`` folder, then rename it to ``folder``, so
    ``folder`` is never half-written (a kill in between leaves no ``folder``, not a broken one).
    In a run folder the files are recorded in its manifest, and a ``folder`` holding files
    textdiff did not write is refused, not replaced."""
    manifest = RunManifest(folder.parent)
    recorded, prefix = manifest.read(), f"{folder.name}/"
    old = {prefix + f for f in _walk(folder)} if folder.exists() else set()
    foreign = sorted(old - recorded) if recorded is not None else []
    if foreign:
        raise RunFolderError(
            f"{folder} holds files textdiff did not write ({', '.join(foreign[:3])}); move "
            "them elsewhere and run again with --resume"
        )
    tmp = folder.with_name(f".{folder.name}.tmp")
    _remove(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    new = {prefix + f for f in _walk(tmp)}
    manifest.update(add=new)
    _remove(folder)
    tmp.rename(folder)
    manifest.update(remove=old - new)


def rewind_metrics(path: Path, step: int) -> list[dict]:
    """Cut ``metrics.jsonl`` back to what a run had logged when it saved the checkpoint of
    ``step``: the records of steps ≤ ``step`` except ``final`` ones (a run killed after the
    checkpoint logged more, and a resumed run logs those steps again), each (step, split) once
    (repeats are what writers without the run folder's lock left). A line cut short by a kill
    ends the file. Returns the records kept."""
    if not path.is_file():
        return []
    kept, lines, seen = [], [], set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
            break
        key = (record.get("step", 0), str(record.get("split")))
        if key[0] <= step and key[1] != "final" and key not in seen:
            seen.add(key)
            kept.append(record)
            lines.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(path)
    return kept


# ------------------------------------------------------------------------------ signals


class StopSignals:
    """While the ``with`` block runs (in the main thread), the first SIGINT or SIGTERM only sets
    :attr:`signum`, so the trainer can finish its step and save a checkpoint; a second SIGINT
    stops at once. The previous handlers are restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning(
            "%s received: saving a checkpoint after this step (Ctrl-C again stops at once)",
            signal.Signals(signum).name,
        )

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


# ------------------------------------------------------------------------------ checkpoints


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rng_states(noise_generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random state a training step reads: the noise generator, torch's global CPU RNG
    (dropout) and the CUDA RNGs."""
    states = {"noise": noise_generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda_{i}"] = s
    return states


def restore_rng_states(states: dict[str, torch.Tensor], noise_generator: torch.Generator) -> None:
    """Undo :func:`rng_states`."""
    noise_generator.set_state(states["noise"])
    torch.set_rng_state(states["torch"])
    cuda = [states[k] for k in sorted(states) if k.startswith("cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def ema_file(checkpoint: Path) -> Path:
    """Where a checkpoint keeps the EMA weights: its model folder's weights, or (checkpoints
    written before they held a model folder) ``ema.safetensors``."""
    inner = checkpoint / MODEL_DIR / "model.safetensors"
    return inner if inner.is_file() else checkpoint / "ema.safetensors"


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


class CheckpointManager:
    """Saves and restores the full training state under ``root``, keeping the last ``keep``."""

    def __init__(self, root: Path, keep: int = 2):
        self.root, self.keep = Path(root), keep

    def diverged(self, what: str) -> None:
        """Raise the :class:`TrainingError` of a run that must stop (``what`` happened)."""
        kept = self.checkpoints()
        where = f"{kept[-1]} is the last good checkpoint" if kept else "no checkpoint was saved yet"
        raise TrainingError(
            f"{what}; training stopped and {where}; lower train.lr or raise train.warmup_steps"
        )

    def checkpoints(self) -> list[Path]:
        """Sealed checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if _STEP.fullmatch(p.name) and p.is_dir()]
        return sorted(found, key=_step_of)

    def clean(self) -> None:
        """Remove what a killed run left aside: unfinished saves and half-pruned checkpoints."""
        if not self.root.is_dir():
            return
        for p in sorted(self.root.glob(".*-step-*")):
            if p.name.startswith(".tmp-"):
                logger.info("removing %s, a checkpoint whose save was interrupted", p.name)
            _remove(p)

    def save(
        self,
        accelerator,
        ema,
        state: dict,
        rng: dict[str, torch.Tensor],
        write_model: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write the checkpoint of ``state["step"]`` aside, seal it, rename it into place.
        ``write_model(folder)`` (main rank) writes the checkpoint's model folder ``model/``
        (the EMA weights as a loadable model, read back on resume); without it the EMA weights
        go to ``ema.safetensors``.

        Raises:
            CheckpointError: A file could not be written (e.g. the disk is full); the folder
                written aside is removed and the previous checkpoints are left as they were.
        """
        from safetensors.torch import save_file

        step = state["step"]
        final = self.root / f"step-{step:08d}"
        tmp = self.root / f".tmp-step-{step:08d}"
        rank = accelerator.process_index
        try:
            if accelerator.is_main_process:
                _remove(tmp)
                tmp.mkdir(parents=True)
            accelerator.wait_for_everyone()
            accelerator.save_state(str(tmp), safe_serialization=True)
            (tmp / f"trainer_state_{rank}.json").write_text(json.dumps(state), encoding="utf-8")
            save_file(rng, str(tmp / f"rng_state_{rank}.safetensors"))
            if accelerator.is_main_process and write_model is not None:
                write_model(tmp / MODEL_DIR)
            elif accelerator.is_main_process and ema is not None:
                save_file(
                    {k: v.contiguous() for k, v in ema.state_dict().items()},
                    str(tmp / "ema.safetensors"),
                )
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                self._seal(tmp, final, step)
        except WRITE_ERRORS as e:
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise self._write_error(e, step) from e
        accelerator.wait_for_everyone()
        return final

    def _seal(self, tmp: Path, final: Path, step: int) -> None:
        """Checksum ``tmp``, record its files in the run's manifest, rename it to ``final``
        and prune: checkpoints newer than ``step`` (a timeline a resume left behind, skipped as
        unusable) and all but the newest ``keep``."""
        sums = {rel: _sha256(tmp / rel) for rel in sorted(_walk(tmp))}
        (tmp / MANIFEST).write_text(json.dumps(sums, indent=1), encoding="utf-8")
        run, prefix = RunManifest(self.root.parent), f"{self.root.name}/{final.name}/"
        run.update(add={prefix + f for f in _walk(tmp)})
        _remove(final)
        tmp.rename(final)
        sealed = self.checkpoints()
        newer = [p for p in sealed if _step_of(p) > step]
        older = [p for p in sealed if _step_of(p) <= step]
        for old in newer + older[: -self.keep]:
            aside = old.with_name(f".old-{old.name}")
            old.rename(aside)
            _remove(aside)
            run.update(remove={f"{self.root.name}/{old.name}/{f}" for f in _walk(aside)})

    def _write_error(self, e: BaseException, step: int) -> CheckpointError:
        """The one-line error of a checkpoint that could not be written."""
        free = shutil.disk_usage(self.root if self.root.is_dir() else Path.cwd()).free
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
        fix = "free disk space" if full else "fix that"
        return CheckpointError(
            f"could not write the checkpoint of step {step} ({reason.splitlines()[0]}; "
            f"{free / 2**20:,.0f} MiB free there); the previous checkpoints in {self.root} "
            f"are kept; {fix} and rerun with --resume"
        )

    def verify(self, path: Path) -> str | None:
        """``None`` if ``path`` is complete and intact, else what is wrong."""
        manifest = path / MANIFEST
        if not manifest.is_file():
            return "no manifest (an interrupted save)"
        try:
            sums = json.loads(manifest.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "unreadable manifest"
        if not isinstance(sums, dict):
            return "unreadable manifest"
        for name, digest in sums.items():
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            if _sha256(f) != digest:
                return f"{name} is corrupt (checksum mismatch)"
        return None

    def load_latest(self, accelerator, ema) -> tuple[dict, dict[str, torch.Tensor]] | None:
        """Restore the newest usable checkpoint into the prepared objects.

        Returns:
            ``(trainer state, random states)`` of this rank, or ``None`` if there is no
            checkpoint.

        Raises:
            CheckpointError: There are checkpoints but none is usable.
        """
        from safetensors.torch import load_file

        problem = None
        for path in reversed(self.checkpoints()):
            problem = self.verify(path)
            if problem is None:
                try:
                    accelerator.load_state(str(path))
                    if ema is not None:
                        ema.load_state_dict(load_file(str(ema_file(path))))
                    rank = accelerator.process_index
                    state_file = path / f"trainer_state_{rank}.json"
                    saved = json.loads(state_file.read_text(encoding="utf-8"))
                    rng_file = path / f"rng_state_{rank}.safetensors"
                    if rng_file.is_file():
                        return saved, load_file(str(rng_file))
                    # a checkpoint from before rng_state files: accelerate restored torch's RNG
                    noise = torch.tensor(saved.pop("noise_generator"), dtype=torch.uint8)
                    return saved, {"noise": noise, "torch": torch.get_rng_state()}
                except pickle.UnpicklingError:
                    problem = "a file holds pickled objects that a weights-only load refuses"
                except READ_ERRORS as e:
                    reason = " ".join(str(e).split()) or type(e).__name__  # all its lines
                    cut = reason if len(reason) <= 400 else reason[:397] + "..."
                    problem = f"cannot be loaded: {cut}"
            logger.warning("checkpoint %s is unusable (%s); trying an older one", path, problem)
        if problem is not None:
            raise CheckpointError(
                f"no usable checkpoint in {self.root} (the oldest: {problem}); "
                "start again with --overwrite"
            )
        return None
