"""The PNG plots of ``benchmarks/run.py``, drawn from its results dict only."""

from __future__ import annotations

from pathlib import Path

from presets import LABELS
from report import _get


def plots(r: dict, out: Path) -> list[Path]:
    """acc_by_t.png, genppl_vs_steps.png and training_curves.png from the results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ev = r.get("evaluate") or {}
    if ev:
        fig, ax = plt.subplots(figsize=(6, 4))
        for mode, e in ev.items():
            acc = {float(t): a for t, a in e["acc_by_t"].items()}
            if mode == "ar":
                ax.axhline(acc[0.0], ls="--", c="gray", label="AR (teacher-forced)")
            else:
                ts = sorted(acc)
                ax.plot(ts, [acc[t] for t in ts], "o-", label=LABELS[mode])
        ax.set(xlabel="t", ylabel="token accuracy of the prediction", ylim=(0, 1.02))
        ax.set_title("Accuracy of the denoiser's tokens vs noise level (test)")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, out / "acc_by_t.png"))
    pts = _get(r, "sweep", "points", default=[])
    if pts:
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        for label in dict.fromkeys(p["label"] for p in pts if p["mode"] != "ar"):
            line = [p for p in pts if p["label"] == label]
            ys = [p["generative_perplexity"] for p in line]
            a.plot([p["steps"] for p in line], ys, "o-", label=label)
            b.plot([p["seconds_per_64"] for p in line], ys, "o-", label=label)
        for p in (p for p in pts if p["mode"] == "ar"):
            a.axhline(p["generative_perplexity"], ls="--", c="k", label="AR samples")
            b.plot(p["seconds_per_64"], p["generative_perplexity"], "k*", ms=12, label="AR")
        real = r["sweep"]["real_generative_perplexity"]
        for ax in (a, b):
            ax.axhline(real, ls=":", c="gray", label="real test text")
            ax.set(xscale="log", yscale="log", ylabel="generative perplexity (AR)")
            ax.grid(alpha=0.3, which="both")
        a.set(xlabel="sampling steps", title="Generative perplexity vs steps")
        b.set(xlabel="seconds per 64 sentences", title="... vs generation time")
        a.legend(fontsize=8)
        written.append(_save(fig, out / "genppl_vs_steps.png"))
    tr = r.get("train") or {}
    if tr:
        fig, axes = plt.subplots(1, len(tr), figsize=(4 * len(tr), 3.5), squeeze=False)
        for ax, (mode, t) in zip(axes[0], tr.items(), strict=True):
            for key, style, name in (
                ("curve_train", "-", "train"),
                ("curve_valid", "o--", "valid"),
            ):
                if t[key]:
                    xs, ys = zip(*t[key], strict=True)
                    ax.plot(xs, ys, style, label=name)
            ax.set(title=f"{LABELS[mode]} ({t['config']})", xlabel="step", ylabel="loss")
            ax.grid(alpha=0.3)
            ax.legend()
        written.append(_save(fig, out / "training_curves.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
