"""Run folders: what textdiff wrote there, who writes there now, and how a run is replaced.

A run folder records every file textdiff writes in it in ``textdiff-run.json`` (the run
manifest). ``--overwrite`` deletes exactly those files (and the folders they leave empty);
anything else stays, and a run whose folders hold files textdiff did not write is refused rather
than touched. A folder without a manifest is a run of an earlier textdiff only if its
``experiment.yaml`` is a complete config and every file where a run writes has a name textdiff
gives; any other folder that is not empty (a model folder, a user's files) is refused.

A training process holds the folder's lock while it runs (:mod:`textdiff.infra.runlock`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import yaml

from ..schema import ConfigError, from_dict
from .config import ExperimentConfig
from .resources import check_training_memory
from .runlock import LOCK_FILE, RunFolderError, RunLock, run_scope  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

RUN_FILE = "experiment.yaml"
MANIFEST_FILE = "textdiff-run.json"
# what textdiff writes in an output folder, with the names it writes aside before renaming
# (logs/: the event files of train.report_to's trackers; figures/: the plots of the run)
RUN_ITEMS = (RUN_FILE, "tokenizer", "metrics.jsonl", "checkpoints", "model", "logs", "figures")
LEFTOVERS = (
    "experiment.tmp",
    ".tokenizer.tmp",
    ".model.tmp",
    ".metrics.jsonl.tmp",
    ".textdiff-run.json.tmp",
    ".figures.tmp",
)
# what a TensorBoard tracker writes under logs/ (it may be killed before they are recorded)
_TRACKER_FILE = re.compile(r"logs/textdiff/([0-9.]+/)?(events\.out\.tfevents\.[^/]+|hparams\.yml)")
# checkpoint folders written aside or pruned, and the files accelerate and textdiff put in them
_ASIDE_STEP = re.compile(r"checkpoints/\.(tmp|old)-step-\d+/.+")
_LEGACY_CHECKPOINT = re.compile(
    r"checkpoints/(\.tmp-|\.old-)?step-\d+/(model|optimizer|scheduler|ema|random_states|"
    r"rng_state|trainer_state|manifest|pytorch_model|sampler)[\w.-]*\.(safetensors|bin|pkl|json)"
)
_TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
_LEGACY_FILES = {  # the names textdiff gives in tokenizer/, model/ and figures/
    "tokenizer": _TOKENIZER_FILES,
    "model": {"config.json", "model.safetensors", "generation_config.json", RUN_FILE}
    | {"README.md", "textdiff_auto.py"}
    | _TOKENIZER_FILES,
    "figures": {"training_curves.png", "acc_by_t.png"},
}
_CHECKPOINT_MODEL = re.compile(r"checkpoints/(\.tmp-|\.old-)?step-\d+/model/(?P<name>[^/]+)")
_MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json")


# ---------------------------------------------------------------------------------- manifest


def _walk(root: Path) -> list[str]:
    """Files (and symlinks, not followed) under ``root``, as paths relative to it."""
    if root.is_symlink() or root.is_file():
        return [root.name]
    found = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        links = [d for d in dirs if (Path(folder) / d).is_symlink()]
        found += [(rel / name).as_posix() for name in files + links]
    return found


def run_files(out: Path) -> list[str]:
    """Every file where a run writes in ``out`` (``RUN_ITEMS`` and ``LEFTOVERS``), relative."""
    found = []
    for name in RUN_ITEMS + LEFTOVERS:
        item = out / name
        if item.exists() or item.is_symlink():
            found += [name] if not item.is_dir() or item.is_symlink() else []
            found += [f"{name}/{f}" for f in _walk(item)] if item.is_dir() else []
    return sorted(set(found))


class RunManifest:
    """``textdiff-run.json``: the files textdiff wrote in a run folder (relative paths)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / MANIFEST_FILE

    def read(self) -> set[str] | None:
        """The recorded files; ``None`` without a manifest."""
        if not self.path.is_file():
            return None
        try:
            files = json.loads(self.path.read_text(encoding="utf-8"))["files"]
            if not all(isinstance(f, str) for f in files):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError):
            raise RunFolderError(
                f"{self.path} is damaged, so textdiff cannot tell which files it wrote in "
                f"{self.path.parent}; choose another output folder"
            ) from None
        return set(files)

    def write(self, files: Iterable[str]) -> None:
        tmp = self.path.with_name(f".{MANIFEST_FILE}.tmp")
        text = json.dumps({"written_by": "textdiff", "files": sorted(files)}, indent=1)
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(self.path)

    def update(self, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        """Record ``add`` and forget ``remove`` (nothing happens without a manifest)."""
        files = self.read()
        if files is not None:
            self.write((files | set(add)) - set(remove))


def _is_ours(rel: str, recorded: set[str] | None) -> bool:
    """Whether textdiff wrote ``rel``: recorded, or a file it writes aside; without a manifest,
    a name an earlier textdiff gave."""
    if rel.split("/")[0] in LEFTOVERS or _ASIDE_STEP.fullmatch(rel) or _TRACKER_FILE.fullmatch(rel):
        return True
    if recorded is not None:
        return rel in recorded
    top, _, name = rel.partition("/")
    if top in _LEGACY_FILES:
        return name in _LEGACY_FILES[top]
    inner = _CHECKPOINT_MODEL.fullmatch(rel)  # a checkpoint's model folder
    if inner:
        return inner["name"] in _LEGACY_FILES["model"]
    return rel in (RUN_FILE, "metrics.jsonl") or bool(_LEGACY_CHECKPOINT.fullmatch(rel))


def _legacy_run(out: Path) -> bool:
    """A run of a textdiff from before run manifests: a complete config in ``experiment.yaml``
    and a tokenizer, metrics or a checkpoint beside it."""
    run_file = out / RUN_FILE
    if not run_file.is_file() or run_file.stat().st_size > 1 << 20:
        return False
    try:
        saved = yaml.safe_load(run_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return False
    if not isinstance(saved, dict) or not {"model", "process", "data", "train"} <= set(saved):
        return False
    evidence = (out / "tokenizer" / "tokenizer.json").is_file() or (out / "metrics.jsonl").is_file()
    return evidence or any((out / "checkpoints").glob("step-*"))


# -------------------------------------------------------------------------------- the folder


def prepare_run_folder(
    out: Path, cfg: ExperimentConfig, *, resume: bool, overwrite: bool
) -> RunLock:
    """Make ``out`` ready for a run of ``cfg`` (whose memory is checked first) and lock it;
    never deletes a file textdiff did not write. A folder holding a run is refused unless
    ``resume`` (its model, process and data settings must match ``cfg``) or ``overwrite``; a run
    that stopped before anything was trained is replaced. Returns the lock, held until released
    or the end of :func:`run_scope`."""
    if resume and overwrite:
        raise RunFolderError("resume and overwrite exclude each other; pass only one of them")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output {str(out)!r} is a file, not a folder; choose a folder")
    check_training_memory(cfg)
    lock = RunLock(out) if (out / LOCK_FILE).is_file() else None
    try:
        lock = lock or _create_and_lock(out, cfg, resume=resume, overwrite=overwrite)
        action, files = _plan(out, cfg, resume=resume, overwrite=overwrite)
        try:
            _apply(out, cfg, action, files)
        except OSError as e:
            raise RunFolderError(
                f"cannot write the run in {out} ({e.strerror or e}); choose a folder you can "
                "write to, with free space"
            ) from None
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def _create_and_lock(out: Path, cfg: ExperimentConfig, **flags) -> RunLock:
    """Check ``out`` first (a refused folder gets no lock file), then create and lock it; a
    refusal caused by a run that started meanwhile is reported as that run's lock."""
    try:
        _plan(out, cfg, **flags)
    except RunFolderError:
        if (out / LOCK_FILE).is_file():
            RunLock(out).release()  # raises if another process holds it
        raise
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(
            f"cannot create the output folder {out} ({e.strerror or e}); choose another "
            "--output-dir (train.output_dir)"
        ) from None
    return RunLock(out)


def _plan(out: Path, cfg: ExperimentConfig, *, resume: bool, overwrite: bool):
    """``(action, files)``: ``new``, ``resume`` (``files``: textdiff's, adopted from an earlier
    textdiff's run) or ``replace`` (``files``: textdiff's, to delete). Reads only."""
    recorded = RunManifest(out).read()
    present = run_files(out)
    if recorded is None:
        others = (
            sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE) if out.is_dir() else []
        )
        if not others:
            return "new", set()
        model = [name for name in _MODEL_FILES if (out / name).is_file()]
        if model:
            raise RunFolderError(
                f"{out} looks like a model folder ({', '.join(model)}); a run would be written "
                "beside its files; choose a new or empty output folder"
            )
        if not _legacy_run(out):
            raise RunFolderError(
                f"{out} is not empty and holds no textdiff run (no {MANIFEST_FILE}); textdiff "
                f"writes only into new or empty folders and never deletes files it did not "
                f"write; choose a new or empty output folder"
            )
    ours = {f for f in present if _is_ours(f, recorded)}
    if recorded is not None and not _started(out, recorded):
        if not set(present) - ours:
            logger.info("replacing the run in %s, which stopped before its first step", out)
            return "replace", ours
    if not (resume or overwrite):
        raise RunFolderError(
            f"{out} already holds a training run; pass --resume to continue it or --overwrite "
            "to replace it"
        )
    foreign = sorted(set(present) - ours)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise RunFolderError(
            f"{out} holds files textdiff did not write ({', '.join(foreign[:3])}{more}), where "
            f"the run writes; textdiff never deletes them: move them out of {out} and run again"
        )
    if resume:
        _check_same_run(out / RUN_FILE, cfg)
        return "resume", ours
    return "replace", ours


def _started(out: Path, recorded: set[str]) -> bool:
    """Whether a recorded run trained anything (a checkpoint, a model or a metrics line)."""
    metrics = out / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        return True
    return any(f.startswith(("checkpoints/step-", "model/")) for f in recorded)


def _apply(out: Path, cfg: ExperimentConfig, action: str, files: set[str]) -> None:
    manifest = RunManifest(out)
    if action == "resume":
        _remove(*(out / name for name in LEFTOVERS))
        if manifest.read() is None:  # a run of an earlier textdiff: its files are textdiff's
            manifest.write(files | {RUN_FILE, "metrics.jsonl"})
        return
    if action == "replace":
        _delete_files(out, files)
    manifest.write({RUN_FILE, "metrics.jsonl"})
    tmp = out / "experiment.tmp"
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    tmp.replace(out / RUN_FILE)


def _delete_files(out: Path, files: Iterable[str]) -> None:
    """Delete ``files`` (relative to ``out``), then the folders under ``out`` they leave empty."""
    parents = set()
    for rel in files:
        path = out / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
        parents.update(p for p in path.parents if out in p.parents)
    for folder in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: it holds something else
            folder.rmdir()


def _check_same_run(run_file: Path, cfg: ExperimentConfig) -> None:
    try:
        saved = yaml.safe_load(run_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise RunFolderError(
            f"cannot resume: {run_file} is not a readable run config ({reason}); "
            "pass --overwrite to start the run again"
        ) from None
    if not isinstance(saved, dict):
        raise RunFolderError(
            f"cannot resume: {run_file} is not a textdiff run config; pass --overwrite to "
            "start the run again"
        )
    try:  # a run written by an earlier textdiff: its settings under today's names
        saved = from_dict(ExperimentConfig, saved).to_dict()
    except ConfigError:
        pass
    now = cfg.to_dict()
    for section in ("model", "process", "data"):
        if saved.get(section) != now[section]:
            old = saved.get(section) if isinstance(saved.get(section), dict) else {}
            diff = sorted(k for k in now[section] if old.get(k) != now[section][k])
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


def _remove(*paths: Path) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
