"""Targets, markdown tables, the README section and the PNG plots of ``benchmarks/run.py``.

Everything here reads the results dict that ``run.py`` writes to JSON; no figure is computed
anywhere else, and none is written down by hand.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from presets import LABELS
from sampling_report import sampling_sections, sampling_targets, table

GIB, MIB = 2**30, 2**20
MEMORY_TOLERANCE = 0.05  # generation peaks at two step counts agree within 5 %
BUSY = 0.1  # other processes' share of the CPUs above which a stage's timings are flagged
VS_PEER = (  # the peer stage's part, figure, format, label, goal for textdiff ÷ Diffusion-LM
    ("train", "tokens_per_s", ",.0f", "training tokens/s", 2.0),
    ("sample", "median_s", ".4f", "s / sampling step (64 sequences)", 0.5),
)
START, END = "<!-- results:start -->", "<!-- results:end -->"
BOUND_COLUMNS = "model|train steps|perplexity|NLL/token ± s.e.|sentences / tokens".split("|")


def _get(d: dict | None, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _num(x: float, digits: int = 3) -> str:
    """``x`` with ``digits`` decimals, or in scientific notation when it is huge."""
    return f"{x:.{digits}f}" if abs(x) < 1e6 else f"{x:.3g}"


def _row(name: str, measured: str, target: str, met: bool | None, note: str = "") -> dict:
    status = "not measured" if met is None else ("met" if met else "**missed**")
    return {"target": name, "measured": measured, "goal": target, "status": status, "note": note}


def _largest_term(ev: dict) -> str:
    terms = _get(ev, "bound", "terms_per_token", default={})
    if not terms:
        return ""
    k = max(terms, key=lambda k: terms[k])
    return f"largest term {k} = {terms[k]:.3f} nats/token"


def _budget(tr: dict | None) -> str:
    if not tr:
        return ""
    return f"trained {tr['steps']} steps ({tr['tokens']:,} token positions)"


def _bound_rows(r: dict) -> list[dict]:
    ev, rows = r.get("evaluate") or {}, []
    ar = _get(ev, "ar", "bound", "perplexity_bound")
    for mode, goal in (("mask", 1.2), ("gaussian", 2.0)):
        ppl = _get(ev, mode, "bound", "perplexity_bound")
        name = f"{LABELS[mode]} perplexity bound ÷ AR test perplexity"
        if ppl is None or ar is None:
            rows.append(_row(name, "–", f"≤ {goal}", None))
            continue
        ratio = ppl / ar
        note = f"{_num(ppl, 2)} vs AR {_num(ar, 2)}"
        if ratio > goal:
            note += "; " + "; ".join(
                x for x in (_budget(_get(r, "train", mode)), _largest_term(ev[mode])) if x
            )
        rows.append(_row(name, _num(ratio), f"≤ {goal}", ratio <= goal, note))
    return rows


def _rounding_rows(r: dict) -> list[dict]:
    ev = _get(r, "evaluate", "gaussian") or {}
    acc = {float(t): a for t, a in (ev.get("acc_by_t") or {}).items()}
    low = {t: a for t, a in acc.items() if t <= 0.1}
    name = "Gaussian: rounding accuracy of x̂_0 at t ≤ 0.1 (lowest)"
    if not low:
        rows = [_row(name, "–", "≥ 99 %", None)]
    else:
        worst = min(low.values())
        note = ", ".join(f"t={t:g}: {a:.2%}" for t, a in sorted(low.items()))
        if worst < 0.99:
            note += "; " + _budget(_get(r, "train", "gaussian"))
        rows = [_row(name, f"{worst:.2%}", "≥ 99 %", worst >= 0.99, note)]
    trip = _get(ev, "rounding", "roundtrip_accuracy")
    name = "Gaussian: round-trip of every word row"
    measured = "–" if trip is None else f"{trip:.2%}"
    rows.append(_row(name, measured, "100 %", None if trip is None else trip == 1))
    return rows


def _mfu_row(r: dict) -> dict:
    runs = _get(r, "speed", "runs", default=[])
    run = next((x for x in runs if (x["mode"], x["precision"]) == ("gaussian", "fp32")), None)
    name = "training model FLOP/s ÷ fp32 matmul peak (Gaussian, fp32)"
    if run is None:
        return _row(name, "–", "≥ 60 %", None)
    peak = r["speed"]["peaks"]["fp32"]
    note = f"{run['model_flops'] / 1e9:.1f} of {peak['flops'] / 1e9:.1f} GFLOP/s"
    ceiling = run.get("matmul_ceiling")
    if ceiling and "fraction_of_peak" in ceiling:  # results of before the ceiling lack it
        note += (
            f"; the step's matmuls alone at its shapes reach {ceiling['fraction_of_peak']:.0%} "
            f"of the peak and are {run['matmul_share']:.0%} of its time"
        )
    if run["fraction_of_peak"] < 0.6:
        note += (
            f"; a step is {run['batch_size']}×{run['seq_len']} tokens at width "
            f"{run['hidden_size']}: besides the counted matmuls it runs LayerNorm, GELU, softmax, "
            "the loss and read-out, AdamW and the EMA update, which add time but no model FLOPs"
        )
    return _row(
        name, f"{run['fraction_of_peak']:.1%}", "≥ 60 %", run["fraction_of_peak"] >= 0.6, note
    )


def _memory_rows(r: dict) -> list[dict]:
    mem = r.get("memory") or {}
    rss = _get(mem, "training", "gaussian", "peak_rss_bytes")
    rows = [
        _row(
            f"training peak RSS (Gaussian, {_get(r, 'train', 'gaussian', 'config')})",
            "–" if rss is None else f"{rss / GIB:.2f} GiB",
            "≤ 4 GiB",
            None if rss is None else rss <= 4 * GIB,
            "" if rss is None else _get(mem, "training", "gaussian", "source"),
        )
    ]
    for mode, runs in (mem.get("generation") or {}).items():
        lo, hi = runs[0], runs[-1]
        delta = (hi["peak_rss_bytes"] - lo["peak_rss_bytes"]) / lo["peak_rss_bytes"]
        rows.append(
            _row(
                f"{LABELS[mode]} generation peak RSS, {lo['steps']} vs {hi['steps']} steps",
                f"{delta:+.1%}",
                f"within ±{MEMORY_TOLERANCE:.0%}",
                abs(delta) <= MEMORY_TOLERANCE,
                f"{lo['peak_rss_bytes'] / MIB:.0f} vs {hi['peak_rss_bytes'] / MIB:.0f} MiB, "
                f"{lo['samples']} sentences, no trajectory",
            )
        )
    return rows


def peer_targets(peer: dict | None) -> list[dict]:
    """Against Diffusion-LM's code (the peer stage), per precision: training tokens/s ≥ 2× its,
    one sampling step ≤ 0.5× its time; bf16 not measured where the CPU has no bf16 unit."""
    rows = []
    for part, key, fmt, label, goal in VS_PEER:
        sign = "≥" if part == "train" else "≤"
        for precision in ("fp32", "bf16"):
            name, x = f"{label} ÷ Diffusion-LM's, {precision}", _get(peer, part, precision)
            if x is None:
                why = _get(peer, "bf16_skipped") if precision == "bf16" else None
                rows.append(_row(name, "–", f"{sign} {goal}×", None, why or ""))
                continue
            ok = x["ratio"] >= goal if part == "train" else x["ratio"] <= goal
            note = f"textdiff {x['textdiff'][key]:{fmt}} vs {x['reference'][key]:{fmt}}"
            rows.append(_row(name, f"{x['ratio']:.3f}×", f"{sign} {goal}×", ok, note))
    return rows


def targets(r: dict) -> list[dict]:
    """One row per target of the benchmark issue: measured figure, goal, met / missed, notes."""
    return [
        *_bound_rows(r),
        *sampling_targets(r),
        *_rounding_rows(r),
        _mfu_row(r),
        *_memory_rows(r),
        *peer_targets(r.get("peer")),
    ]


def _f(x, fmt: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def markdown(r: dict) -> str:
    """The results section: targets, then the figures behind them."""
    m = r["machine"]
    load = {k: v for k, v in (r.get("other_cpu_share") or {}).items() if v is not None}
    busy = [f"{k} {v:.0%}" for k, v in load.items() if v > BUSY]
    parts = [
        f"Preset `{r['preset']}`, run {r['finished_at']} ({r['elapsed_s'] / 60:.1f} min) on "
        f"{m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['torch_threads']} torch threads, "
        f"torch {m['torch']}, native bf16: {'yes' if m['native_bf16'] else 'no'}. Figures from "
        f"`results/{r['preset']}.json`."
        + (
            f" **Other processes used the CPUs during: {', '.join(busy)}** (share of all cores); "
            "timings of those stages are slower than on an idle machine."
            if busy
            else ""
        ),
        "### Targets",
        table(
            ["target", "measured", "goal", "status", "notes"],
            [[t["target"], t["measured"], t["goal"], t["status"], t["note"]] for t in r["targets"]],
        ),
    ]
    ev = r.get("evaluate") or {}
    if ev:
        rows = []
        for mode, e in ev.items():
            b, tr = e["bound"], _get(r, "train", mode) or {}
            rows.append(
                [
                    LABELS[mode],
                    tr.get("steps", "–"),
                    _num(b["perplexity_bound"]),
                    f"{b['nll_per_token']:.4f} ± {b['stderr_nll_per_token']:.4f}",
                    f"{b['sentences']} / {b['tokens']}",
                ]
            )
        parts += ["### Test bound (AR: exact NLL)", table(BOUND_COLUMNS, rows)]
    parts += sampling_sections(r)
    sp = r.get("speed") or {}
    if sp:
        peaks = [
            f"{k} {v['flops'] / 1e9:.1f} GFLOP/s at n = {v['size']}" for k, v in sp["peaks"].items()
        ]
        if sp.get("bf16_skipped"):
            peaks.append(f"bf16 not measured: {sp['bf16_skipped']}")
        parts += [
            f"### Training speed (matmul peak: {', '.join(peaks)})",
            table(
                ["model", "precision", "batch", "steps timed", "tokens/s", "GFLOP/s", "of peak"],
                [
                    [
                        LABELS[x["mode"]],
                        x["precision"],
                        x["batch_size"],
                        x["steps_timed"],
                        _f(x["tokens_per_s"], ",.0f"),
                        _f(x["model_flops"] and x["model_flops"] / 1e9, ".2f"),
                        _f(x["fraction_of_peak"], ".1%"),
                    ]
                    for x in sp["runs"]
                ],
            ),
        ]
    ro = r.get("rounding") or {}
    if ro:
        import rounding as rb

        cells = [rb.CellResult(**c) for c in ro["cells"]]
        parts += [
            f"### Rounding, FAISS vs tiled torch ({ro['queries']} queries a cell)",
            rb.markdown_table(cells),
        ]
    mem = r.get("memory") or {}
    if mem:
        rows = [
            [f"{LABELS[k]} training", f"{v['peak_rss_bytes'] / MIB:.0f}", v["source"]]
            for k, v in mem["training"].items()
        ]
        rows += [
            [
                f"{LABELS[k]} generation, {g['steps']} steps",
                f"{g['peak_rss_bytes'] / MIB:.0f}",
                f"{g['samples']} sentences; {g['peak_rss_loaded_bytes'] / MIB:.0f} MiB after load",
            ]
            for k, gs in mem["generation"].items()
            for g in gs
        ]
        parts += ["### Peak memory (RSS of the process)", table(["job", "MiB", "notes"], rows)]
    if r.get("peer"):
        from peer import peer_section  # the stage's own module (it imports this one)

        parts.append(peer_section(r["peer"]))
    parts.append(
        "Plots: [quality_speed.png](results/quality_speed.png), "
        "[acc_by_t.png](results/acc_by_t.png), "
        "[genppl_vs_steps.png](results/genppl_vs_steps.png), "
        "[training_curves.png](results/training_curves.png)."
    )
    return "\n\n".join(parts)


def write_readme(path: Path, section: str) -> None:
    """Put ``section`` between the results markers of ``path`` (appended if they are absent)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    block = f"{START}\n{section}\n{END}"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n## Results\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
