"""The PNG plots of ``benchmarks/run.py``, drawn from its results dict only."""

from __future__ import annotations

from pathlib import Path

from presets import LABELS
from report import _get
from sampling_report import SECONDS, setting


def plots(r: dict, out: Path) -> list[Path]:
    """quality_speed.png, acc_by_t.png, genppl_vs_steps.png and training_curves.png from the
    results."""
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
        if "real_entropy" in r["sweep"]:
            written.append(_front(plt, r, out / "quality_speed.png"))
        written.append(_steps(plt, r, out / "genppl_vs_steps.png"))
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


MARKERS = {"gaussian": "o", "mask": "s", "ar": "*"}


def _front(plt, r: dict, path: Path) -> Path:
    """The quality/speed front of the sweep (validation): generative perplexity and mean words
    against seconds per 64 sentences, colour = entropy, marker = mode, chosen defaults ringed."""
    sw = r["sweep"]
    chosen = [c["point"] for c in (r.get("choice") or {}).values() if c["point"]]
    ent = [p["entropy"] for p in sw["points"]] + [sw["real_entropy"]]
    norm = plt.Normalize(min(ent), max(ent))
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, key in ((a, "generative_perplexity"), (b, "words")):
        _scatter(ax, sw["points"], chosen, key, norm)
    a.axhline(sw["real_generative_perplexity"], ls=":", c="gray", label="real validation text")
    a.set(yscale="log", ylabel="generative perplexity under the AR model (log)")
    a.set_title(f"Quality / speed front (validation, {sw['samples']} sentences a point)")
    words = sw["real_words"]
    b.axhline(words, ls=":", c="gray")
    b.axhspan(0.9 * words, 1.1 * words, color="gray", alpha=0.15, label="real text's words ± 10 %")
    b.set(ylabel="mean sentence length (words)", title="Length of the same samples")
    for ax in (a, b):
        _plain_ticks(ax)
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=[a, b], pad=0.01)
    bar.set_label("mean unigram entropy (nats); — real text, -- 0.95×")
    bar.ax.axhline(sw["real_entropy"], c="k", lw=1.5)
    bar.ax.axhline(0.95 * sw["real_entropy"], c="k", lw=0.8, ls="--")
    handles = {}
    for ax in (a, b):
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="upper center",
        bbox_to_anchor=(0.45, 0.0),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    return _save(fig, path, tight=False)


def _scatter(ax, pts: list[dict], chosen: list[dict], key: str, norm) -> None:
    """One marker per sweep point (``key`` against seconds per 64), coloured by entropy; the
    chosen defaults ringed in red, the AR points named."""
    for mode, marker in MARKERS.items():  # neutral legend entries for the modes
        ax.scatter([], [], marker=marker, c="lightgray", edgecolors="k", label=_mode_label(mode))
    for mode, marker in MARKERS.items():
        mine = [p for p in pts if p["mode"] == mode]
        if not mine:
            continue
        xs, ys = [p["seconds_per_64"] for p in mine], [p[key] for p in mine]
        style = dict(cmap="viridis", norm=norm, edgecolors="k", linewidths=0.5)
        ax.scatter(
            xs,
            ys,
            c=[p["entropy"] for p in mine],
            marker=marker,
            **style,
            s=160 if mode == "ar" else 55,
        )
        if mode == "ar":
            for p, x, y in zip(mine, xs, ys, strict=True):
                ax.annotate(
                    p["sampler"],
                    (x, y),
                    xytext=(0, -15),
                    textcoords="offset points",
                    ha="center",
                    fontsize=7,
                )
    for p in chosen:
        ax.scatter(
            p["seconds_per_64"],
            p[key],
            s=320,
            facecolors="none",
            edgecolors="red",
            linewidths=1.8,
            label=f"chosen: {LABELS[p['mode']]} {setting(p)}",
        )
    ax.axvline(SECONDS, ls="--", c="firebrick", lw=0.8, label=f"{SECONDS:g} s target")
    ax.set(xscale="log", xlabel="seconds per 64 sentences (log)")
    ax.grid(alpha=0.3, which="both")


def _mode_label(mode: str) -> str:
    return "AR (greedy, ancestral)" if mode == "ar" else f"{LABELS[mode]} diffusion"


def _steps(plt, r: dict, path: Path) -> Path:
    """Generative perplexity against network calls and time, one line per sweep setting
    (Gaussian: circles and solid lines, mask: squares and dashed lines)."""
    pts = r["sweep"]["points"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = list(dict.fromkeys(p["label"] for p in pts if p["mode"] != "ar"))
    colors = plt.cm.tab20.colors
    for i, label in enumerate(labels):
        line = [p for p in pts if p["label"] == label]
        ys = [p["generative_perplexity"] for p in line]
        style = dict(c=colors[i % len(colors)], label=label)
        fmt = "o-" if line[0]["mode"] == "gaussian" else "s--"
        a.plot([p["network_calls"] for p in line], ys, fmt, **style)
        b.plot([p["seconds_per_64"] for p in line], ys, fmt, **style)
    for p, marker in zip((p for p in pts if p["mode"] == "ar"), "*XP", strict=False):
        name = f"AR {p.get('sampler', 'ancestral')} (KV cache)"
        a.axhline(p["generative_perplexity"], ls="--", c="k", lw=0.8)
        b.plot(p["seconds_per_64"], p["generative_perplexity"], "k" + marker, ms=10, label=name)
    real = r["sweep"]["real_generative_perplexity"]
    for ax in (a, b):
        ax.axhline(real, ls=":", c="gray", label="real validation text" if ax is b else None)
        ax.set(xscale="log", yscale="log", ylabel="generative perplexity under the AR model")
        _plain_ticks(ax)
        ax.grid(alpha=0.3, which="both")
    a.set(xlabel="network calls per batch of 64 (dashed: AR samples)")
    a.set_title("Generative perplexity vs network calls (validation)")
    b.set(xlabel="seconds per 64 sentences", title="... vs generation time")
    fig.legend(
        *b.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7
    )
    return _save(fig, path)


def _plain_ticks(ax) -> None:
    """Log axes labelled with plain numbers (0.2, 0.5, 1, 2, 50) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _save(fig, path: Path, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
