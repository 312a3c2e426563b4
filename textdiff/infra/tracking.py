"""Experiment trackers beside ``metrics.jsonl``: accelerate's (TensorBoard, Weights & Biases,
MLflow, ...), chosen by ``train.report_to``.

Every number of every ``metrics.jsonl`` record goes to the trackers too, named
``split/key`` (``train/loss``, ``valid/acc_t0.5``, ...) at the record's step; the run's settings
are stored as hyper-parameters. TensorBoard writes under ``RUN/logs/textdiff/``, and a resumed
run purges the events it logs again (those after its checkpoint's step), so the curves read as
one run's. Other trackers write where they are configured to (e.g. ``./wandb``, ``./mlruns``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .runfolder import RunManifest, _walk

PROJECT = "textdiff"  # the tracker's project / run name (TensorBoard: logs/textdiff/)


def start_trackers(accelerator, config: dict, out: Path, step: int) -> None:
    """Start the accelerator's trackers (no-op without any), at ``step`` of a resumed run, and
    record the files they wrote in the run folder's manifest."""
    if not accelerator.log_with:
        return
    # a resumed run logs again what came after its checkpoint's step: those events are purged
    init = {"tensorboard": {"purge_step": step + 1}} if step else {}
    accelerator.init_trackers(PROJECT, config=hparams(config), init_kwargs=init)
    record_logs(accelerator, out)


def record_logs(accelerator, out: Path) -> None:
    """Record the trackers' files under ``out/logs`` in the run manifest (main rank)."""
    logs = out / "logs"
    if accelerator.is_main_process and accelerator.log_with and logs.is_dir():
        RunManifest(out).update(add={f"logs/{f}" for f in _walk(logs)})


def log_record(accelerator, record: dict) -> None:
    """Send the numbers of one ``metrics.jsonl`` record to the trackers."""
    if not accelerator.log_with or "step" not in record:
        return
    values = tracker_values(record)
    if values:
        accelerator.log(values, step=int(record["step"]))


def tracker_values(record: dict) -> dict[str, float]:
    """``{"split/key": value}`` for every finite number of ``record`` (not ``step``)."""
    split = record.get("split", "train")
    return {
        f"{split}/{k}": float(v)
        for k, v in record.items()
        if k != "step"
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(v)
    }


def hparams(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested config flattened to ``section.key`` → a value every tracker stores (mappings,
    lists and ``None`` as JSON text)."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and prefix == "":
            flat.update(hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, sort_keys=True)
    return flat
