"""Plots of a training run, from its ``metrics.jsonl``: ``textdiff plot RUN``, and the trainer at
the end of every run when matplotlib is installed (``pip install 'textdiff[plot]'``).

Two PNGs, each axis with its unit and each quantity defined under the plot:

- ``training_curves.png``: the loss terms (training, averaged over each log interval; validation,
  on fixed batches with fixed noise and the EMA weights) against optimizer steps, the learning
  rate, the training throughput, and validation accuracy at three noise levels;
- ``acc_by_t.png``: the rounding accuracy of ``x̂_0`` at each noise level ``t``, one line per
  evaluation.

In a run folder they go to ``RUN/figures/`` (written aside, then renamed, and recorded in the
run's manifest, so ``--overwrite`` removes them); ``out=`` writes them anywhere else.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import TextdiffError

FILES = ("training_curves.png", "acc_by_t.png")
DEFINITIONS = {
    "loss": "the training objective: the sum of the terms below",
    "mse": "squared error of the denoiser's clean-embedding (or noise) estimate, per dimension",
    "rounding": "−log p(w | h_0), the rounding term (nats)",
    "prior": "KL of the fully noised latent to N(0, I) (nats)",
    "posterior_ce": "cross-entropy of the posterior over words (nats)",
    "masked_ce": "cross-entropy at the masked positions (nats)",
    "mask_fraction": "share of positions masked (not a loss)",
    "nll": "next-token negative log-likelihood (nats)",
}
UNITS = "per position, averaged over the batch"
MAX_LINES = 8  # evaluations drawn in acc_by_t.png


class PlotError(TextdiffError, ValueError):
    """A run cannot be plotted: no metrics, or matplotlib is missing."""


def read_metrics(run: Path) -> list[dict]:
    """The records of ``run/metrics.jsonl`` (a line cut short by a kill ends the file)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"{run} has no metrics.jsonl; pass the output folder of a training run")
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    if not any(r.get("split") in ("train", "valid") for r in records):
        raise PlotError(f"{path} holds no training or validation record yet; plot it later")
    return records


def plot_run(run: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write the run's PNGs into ``out`` (default: ``run/figures``, recorded in the run's
    manifest); returns their paths.

    Raises:
        PlotError: No metrics in ``run``, or matplotlib is not installed.
    """
    run = Path(run)
    records = read_metrics(run)
    _matplotlib()
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_plots(records, out)
        return [out / name for name in FILES]
    from .checkpoint import write_folder
    from .runlock import RunFolderError, RunLock, run_scope

    with run_scope():  # not while a trainer writes the folder (its manifest)
        try:
            RunLock(run)
        except RunFolderError as e:
            where = run / "figures"
            raise PlotError(f"cannot write {where}: {e}; --out DIR plots elsewhere") from None
        write_folder(run / "figures", lambda folder: write_plots(records, folder))
    return [run / "figures" / name for name in FILES]


def _matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(
            "plots need matplotlib; pip install 'textdiff[plot]' (or matplotlib)"
        ) from None
    return Figure


def write_plots(records: list[dict], folder: Path) -> None:
    """``training_curves.png`` and ``acc_by_t.png`` of ``records`` into ``folder``."""
    train = [r for r in records if r.get("split") == "train"]
    valid = [r for r in records if r.get("split") == "valid"]
    training_curves(train, valid).savefig(folder / FILES[0], dpi=120, bbox_inches="tight")
    accuracy_by_t(valid).savefig(folder / FILES[1], dpi=120, bbox_inches="tight")


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [s for s, _ in points], [v for _, v in points]


def _terms(train: list[dict], valid: list[dict]) -> list[str]:
    keys = [k for k in DEFINITIONS if any(k in r for r in train + valid)]
    others = {k for r in train for k, v in r.items() if isinstance(v, float)}
    others -= set(keys) | {"lr", "tokens_per_s"}
    return keys + sorted(others)


def training_curves(train: list[dict], valid: list[dict]):
    """Loss terms, learning rate, throughput and validation accuracy against optimizer steps."""
    Figure = _matplotlib()
    fig = Figure(figsize=(12, 9), layout="constrained")
    axes = fig.subplots(2, 2)
    terms = _terms(train, valid)
    ax = axes[0][0]
    for i, key in enumerate(terms):
        color = f"C{i % 10}"
        steps, values = _series(train, key)
        ax.plot(steps, values, color=color, label=f"{key} (train)")
        steps, values = _series(valid, key)
        ax.plot(steps, values, "o--", color=color, label=f"{key} (validation)")
    if any(v > 0 for r in train + valid for k, v in r.items() if k in terms and _num(v)):
        ax.set_yscale("log")
    ax.set(title="Loss terms", xlabel="optimizer step", ylabel=f"loss ({UNITS})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _line(axes[0][1], *_series(train, "lr"), "Learning rate", "learning rate (AdamW step size)")
    throughput = "tokens / second (mean since the run (re)started)"
    _line(axes[1][0], *_series(train, "tokens_per_s"), "Training throughput", throughput)
    ax = axes[1][1]
    for t in ("0.1", "0.5", "0.9"):
        steps, values = _series(valid, f"acc_t{t}")
        ax.plot(steps, [100 * v for v in values], "o-", label=f"t = {t}")
    ax.set(title="Validation accuracy of rounded x̂_0", xlabel="optimizer step")
    ax.set(ylabel="tokens recovered (%)", ylim=(0, 102))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    notes = [f"{k}: {DEFINITIONS[k]}" for k in terms if k in DEFINITIONS]
    fig.suptitle("Training curves (train: mean over each log interval; validation: EMA weights)")
    fig.text(0.01, 0.0, "\n".join(notes), fontsize=8, va="top", ha="left")
    return fig


def _num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _line(ax, steps: list[int], values: list[float], title: str, ylabel: str) -> None:
    ax.plot(steps, values, "-")
    ax.set(title=title, xlabel="optimizer step", ylabel=ylabel)


def accuracy_by_t(valid: list[dict]):
    """Rounding accuracy of ``x̂_0`` against the noise level, one line per evaluation."""
    from matplotlib import colormaps

    Figure = _matplotlib()
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    evaluations = [r for r in valid if any(k.startswith("acc_t") for k in r)]
    if len(evaluations) > MAX_LINES:  # evenly spaced, the first and the last included
        last = len(evaluations) - 1
        picks = sorted({round(i * last / (MAX_LINES - 1)) for i in range(MAX_LINES)})
        evaluations = [evaluations[i] for i in picks]
    cmap = colormaps["viridis"]
    for i, record in enumerate(evaluations):
        points = sorted(
            (float(k.removeprefix("acc_t")), 100 * v)
            for k, v in record.items()
            if k.startswith("acc_t") and _num(v)
        )
        color = cmap(i / max(1, len(evaluations) - 1))
        ax.plot(*zip(*points, strict=True), "o-", color=color, label=f"step {record['step']:,}")
    ax.set(xlabel="noise level t (0: clean, 1: pure noise)", ylabel="tokens recovered (%)")
    ax.set(xlim=(0, 1), ylim=(0, 102), title="Rounding accuracy of x̂_0 by noise level")
    if evaluations:
        ax.legend(title="evaluation", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.text(
        0.01,
        0.0,
        "Share of real tokens (with [EOS]) whose rounded x̂_0 at noise level t is the true "
        "token (mask mode: the argmax at masked positions), on the fixed validation batches.",
        fontsize=8,
        va="top",
        ha="left",
    )
    return fig
