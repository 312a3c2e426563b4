"""The sampling part of the benchmark's report: quality and speed targets on the test split,
the samples table, the default chosen on validation and the sweep table.

Everything is read from the results dict of ``benchmarks/run.py``; nothing is computed anywhere
else, and nothing is written down by hand.
"""

from __future__ import annotations

from presets import LABELS, describe_options
from sweep import ENTROPY_SHARE, WORDS_TOLERANCE, within

MASK_PPL = 1.5  # mask target: generative perplexity ≤ 1.5 × the AR model's on real test text
SECONDS = 2.0  # 64 sentences in ≤ 2 s for the chosen setting of each mode that meets its target
MATCH = 1.1  # "matched" generative perplexity: within 10 % of the AR samples' own
SWEEP_COLUMNS = (
    "mode|sampler|steps + options|calls / 64|s / 64|gen. ppl|entropy|words|distinct-2|no [EOS]|"
    "[PAD] inside"
).split("|")
SAMPLE_COLUMNS = (
    "model|setting|calls / 64|s / 64|gen. ppl|entropy (nats)|words|distinct-2|self-BLEU|"
    "no [EOS]|[PAD] inside|[UNK] inside"
).split("|")


def _get(d, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _row(name: str, measured: str, goal: str, met: bool | None, note: str = "") -> dict:
    status = "not measured" if met is None else ("met" if met else "**missed**")
    return {"target": name, "measured": measured, "goal": goal, "status": status, "note": note}


def setting(x: dict) -> str:
    """A sampling setting as the tables name it: ``dpm-solver T=0.3, 24 steps + length``."""
    temp = "" if x.get("temperature") in (None, 1.0) else f" T={x['temperature']:g}"
    clamp = " + clamp" if x.get("clamp") else ""
    steps = "" if x.get("steps") is None or x.get("mode") == "ar" else f", {x['steps']} steps"
    options = describe_options(x.get("sampler_options", x.get("options")))
    return f"{x['sampler']}{temp}{clamp}{steps}" + (f" {options}" if options else "")


def _quality(
    s: dict, budget: int, ppl_bar: float, bar_name: str, prefix: str = "real_"
) -> tuple[str, list[str]]:
    """The measured figures of a test sample set against a quality target, and what missed;
    entropy and words against the real text of ``prefix`` (``real_``: test, ``train_real_``:
    training)."""
    calls, gen, ent, words = (
        s[k] for k in ("network_calls_per_batch", "generative_perplexity", "entropy", "words")
    )
    real_ent, real_words = s[f"{prefix}entropy"], s[f"{prefix}words"]
    measured = (
        f"{calls:.0f} calls; gen. ppl {gen:.2f} (bar {ppl_bar:.2f}); entropy {ent:.2f} = "
        f"{ent / real_ent:.3f}× real; {words:.1f} words = {words / real_words - 1:+.1%}"
    )
    missed = [
        name
        for name, ok in (
            (f"more than {budget} calls", calls <= budget),
            (f"gen. ppl above {bar_name}", gen <= ppl_bar),
            (f"entropy below {ENTROPY_SHARE:g}× real", ent >= ENTROPY_SHARE * real_ent),
            (f"words outside ±{WORDS_TOLERANCE:.0%}", within(words, real_words)),
        )
        if not ok
    ]
    return measured, missed


# the real text a quality target's entropy and words are compared with: the test text,
# and the training text the models imitate (E2E's test sentences are longer than its training ones)
REAL_TEXTS = {"real_": "test", "train_real_": "training"}


def quality_rows(r: dict) -> tuple[list[dict], dict[str, bool | None]]:
    """The mask and Gaussian quality targets on the test split, against real test text and
    against real training text; whether each mode met them against either."""
    budget = _get(r, "settings", "call_budget", default={})
    ddpm = _get(r, "settings", "reference_steps")
    rows, met = [], {}
    goals = {
        "mask": (f"{MASK_PPL:g}× the AR model's perplexity of real test text", "1.5× real"),
        "gaussian": (f"DDPM's at {ddpm} steps and the same temperature", "DDPM's"),
    }
    for mode in ("mask", "gaussian"):
        ev = _get(r, "evaluate", mode) or {}
        s, calls = ev.get("samples") or {}, budget.get(mode, 0)
        ref = _get(ev, "reference", "generative_perplexity")
        real = s.get("reference_perplexity_on_real")
        bar = MASK_PPL * real if mode == "mask" and real else ref if mode == "gaussian" else None
        met[mode] = None
        for prefix, text in REAL_TEXTS.items():
            name = (
                f"{LABELS[mode]}: ≤ {calls} calls, gen. ppl ≤ {goals[mode][0]}, entropy ≥ "
                f"{ENTROPY_SHARE:g}× and words within ±{WORDS_TOLERANCE:.0%} of real {text} text's"
            )
            needed = ("network_calls_per_batch", "generative_perplexity", "entropy")
            if bar is None or any(k not in s for k in (*needed, f"{prefix}entropy")):
                if prefix == "real_":  # an earlier result has no training figures: no row
                    rows.append(_row(name, "–", "all four", None))
                continue
            measured, missed = _quality(s, calls, bar, goals[mode][1], prefix)
            note = f"{setting(s)}, chosen on validation ({_get(ev, 'choice', 'rule')} rule)"
            if mode == "gaussian":
                rs = ev["reference"]
                note += f"; bar: DDPM {rs['steps']} steps at T={rs['temperature']:g}, {ref:.2f}"
            else:
                note += f"; real test text {real:.2f}"
            if missed:
                note += "; missed: " + ", ".join(missed)
            rows.append(_row(name, measured, "all four", not missed, note))
            met[mode] = bool(met[mode]) or not missed
    return rows, met


def time_rows(r: dict, met: dict[str, bool | None]) -> list[dict]:
    """64 sentences in ≤ 2 s for each mode's chosen setting, if it meets its quality target;
    the AR model's time and the CPU beside."""
    m, rows = r.get("machine") or {}, []
    ar = _get(r, "evaluate", "ar", "samples", "seconds_per_64")
    cpu = f"{m.get('cpu_model')}, {m.get('torch_threads')} threads"
    for mode in ("mask", "gaussian"):
        s = _get(r, "evaluate", mode, "samples") or {}
        name = f"{LABELS[mode]}: s / 64 sentences, chosen setting meeting its quality target"
        if "seconds_per_64" not in s:
            rows.append(_row(name, "–", f"≤ {SECONDS:g} s", None))
            continue
        sec = s["seconds_per_64"]
        note = f"{setting(s)} on {cpu}; AR (KV cache) {_f(ar, '.2f')} s"
        if not met.get(mode):
            note += (
                "; the setting misses its quality targets above (against test and training text)"
            )
        ok = bool(met.get(mode)) and sec <= SECONDS
        rows.append(_row(name, f"{sec:.2f} s", f"≤ {SECONDS:g} s", ok, note))
    return rows


def speed_vs_ar_row(r: dict) -> dict:
    """Diffusion s / 64 ≤ the AR model's at matched generative perplexity (the sweep)."""
    pts = _get(r, "sweep", "points", default=[]) if _get(r, "sweep", "real_entropy") else []
    ar = next((p for p in pts if p["mode"] == "ar" and p["sampler"] == "ancestral"), None)
    name = f"diffusion s / 64 sentences ≤ AR's at matched generative perplexity (≤ {MATCH}× AR's)"
    diff = [p for p in pts if p["mode"] != "ar"]
    if ar is None or not diff:
        return _row(name, "–", "≤ AR", None)
    bar = MATCH * ar["generative_perplexity"]
    matched = [p for p in diff if p["generative_perplexity"] <= bar]
    if not matched:
        close = min(diff, key=lambda p: p["generative_perplexity"])
        note = (
            f"validation: no diffusion setting reached {bar:.2f} (AR samples "
            f"{ar['generative_perplexity']:.2f}, {ar['seconds_per_64']:.2f} s); closest "
            f"{close['generative_perplexity']:.2f} ({LABELS[close['mode']]} {setting(close)}, "
            f"{close['seconds_per_64']:.2f} s)"
        )
        return _row(name, "no match", "≤ AR", False, note)
    best = min(matched, key=lambda p: p["seconds_per_64"])
    ok = best["seconds_per_64"] <= ar["seconds_per_64"]
    note = f"validation: {LABELS[best['mode']]} {setting(best)}, {best['network_calls']:.0f} calls"
    if not ok:
        note += (
            " over the full sequence vs AR's "
            f"{ar['network_calls']:.0f} one-position calls with cached keys/values"
        )
    measured = f"{best['seconds_per_64']:.2f} s vs {ar['seconds_per_64']:.2f} s"
    return _row(name, measured, "≤ AR", ok, note)


def earlier_rows(r: dict) -> list[dict]:
    """The benchmark's first sample targets, on the same test samples: generative perplexity
    ≤ 1.1× the AR model's of real test text, distinct-2 ≥ 0.9× real text's."""
    rows = []
    for mode in ("gaussian", "mask"):
        s = _get(r, "evaluate", mode, "samples") or {}
        gen, real = s.get("generative_perplexity"), s.get("reference_perplexity_on_real")
        d2, real_d2 = s.get("distinct_2"), s.get("real_distinct_2")
        name = f"{LABELS[mode]}: generative perplexity ÷ AR's on real test text"
        if gen is None or not real:
            rows.append(_row(name, "–", f"≤ {MATCH}", None))
        else:
            note = f"{gen:.2f} vs {real:.2f}, {setting(s)}"
            rows.append(_row(name, f"{gen / real:.3f}", f"≤ {MATCH}", gen / real <= MATCH, note))
        name = f"{LABELS[mode]}: distinct-2 ÷ real text's"
        if d2 is None or not real_d2:
            rows.append(_row(name, "–", "≥ 0.9", None))
        else:
            note = f"{d2:.3f} vs {real_d2:.3f}"
            rows.append(_row(name, f"{d2 / real_d2:.3f}", "≥ 0.9", d2 / real_d2 >= 0.9, note))
    return rows


def sampling_targets(r: dict) -> list[dict]:
    """The sampling targets: quality of each mode on test, its time, speed against AR, and the
    first sample targets."""
    rows, met = quality_rows(r)
    return [*rows, *time_rows(r, met), speed_vs_ar_row(r), *earlier_rows(r)]


def _f(x, fmt: str = ".3f") -> str:
    return "–" if x is None else format(x, fmt)


def _figures(x: dict, prefix: str = "") -> list[str]:
    """The figure columns shared by the samples and sweep tables."""
    return [
        _f(x.get(prefix + "entropy"), ".2f"),
        _f(x.get(prefix + "words"), ".1f"),
        _f(x.get(prefix + "distinct_2"), ".3f"),
    ]


def _faults(x: dict, prefix: str = "", keys=("no_eos", "pad_inside")) -> list[str]:
    return [_f(x.get(prefix + k), ".1%") for k in keys]


def samples_section(r: dict) -> list[str]:
    """The test samples of every model beside real test text, with the Gaussian bar."""
    ev = r.get("evaluate") or {}
    if not ev or any("real_entropy" not in e.get("samples", {}) for e in ev.values()):
        return []
    rows, faults = [], ("no_eos", "pad_inside", "unk_inside")
    runs = [(LABELS[m], e["samples"]) for m, e in ev.items()]
    if "reference" in ev.get("gaussian", {}):
        runs.insert(1, ("Gaussian (bar)", {**ev["gaussian"]["reference"], "options": {}}))
    for name, s in runs:
        rows.append(
            [name, setting(s) if name != "AR" else f"{_ar(s['sampler'])} (KV cache)"]
            + [f"{s['network_calls_per_batch']:.0f}", f"{s['seconds_per_64']:.2f}"]
            + [_f(s.get("generative_perplexity"), ".2f"), *_figures(s)]
            + [_f(s.get("self_bleu"), ".3f"), *_faults(s, keys=faults)]
        )
    s = next(iter(ev.values()))["samples"]
    rows.append(
        ["real test text", f"{s['count']} random sentences", "–", "–"]
        + [_f(s.get("reference_perplexity_on_real"), ".2f"), *_figures(s, "real_")]
        + [_f(s.get("real_self_bleu"), ".3f"), *_faults(s, "real_", faults)]
    )
    return [
        f"### Samples on the test split ({s['count']} a model; diffusion settings chosen on "
        "validation; gen. ppl: the AR model's perplexity of the samples)",
        table(SAMPLE_COLUMNS, rows),
    ]


def _ar(sampler: str) -> str:
    return "ancestral" if sampler == "auto" else sampler  # the AR process's default


def choice_section(r: dict) -> list[str]:
    """The default sampler chosen on validation for each mode, and the rule that chose it."""
    choice = r.get("choice") or {}
    rows = []
    for mode, c in choice.items():
        p = c["point"] or {}
        rows.append(
            [LABELS[mode], setting(p) if p else "the model's saved default", c["rule"]]
            + [f"{c['within_budget']} (≤ {c['budget']} calls)"]
            + [_f(p.get("generative_perplexity"), ".2f"), *_figures(p)]
        )
    if not rows:
        return []
    rules = "; ".join(f"`{k}`: {v}" for k, v in _rules(choice).items())
    header = ["mode", "chosen setting", "rule", "settings within budget", "gen. ppl", "entropy"]
    return [
        "### Default sampler of each mode, chosen on the validation split",
        table([*header, "words", "distinct-2"], rows),
        f"Rules, in order: {rules}.",
    ]


def _rules(choice: dict) -> dict:
    return {c["rule"]: c["why"] for c in choice.values()}


def sweep_section(r: dict) -> list[str]:
    """Every sweep point beside real validation text; the chosen defaults in bold."""
    sw = r.get("sweep") or {}
    if "real_entropy" not in sw:  # no sweep, or one of an earlier benchmark
        return []
    chosen = [c["point"] for c in (r.get("choice") or {}).values() if c["point"]]
    rows = [["real validation text", "–", f"{sw['real_count']} random sentences", "–", "–"]]
    rows[0] += [_f(sw["real_generative_perplexity"], ".2f"), *_figures(sw, "real_")]
    rows[0] += _faults(sw, "real_")
    if "train_real_entropy" in sw:  # the text the models imitate (E2E's is shorter)
        rows.append(["real training text", "–", f"{sw['train_real_count']} random sentences"])
        rows[-1] += ["–", "–", _f(sw["train_real_generative_perplexity"], ".2f")]
        rows[-1] += [*_figures(sw, "train_real_"), *_faults(sw, "train_real_")]
    for p in sw["points"]:
        name = setting({**p, "steps": None, "sampler_options": {}})
        steps = f"{p['steps']} {describe_options(p['sampler_options'])}".strip()
        if p["mode"] == "ar":
            name, steps = f"{p['sampler']} (KV cache)", "–"
        if p in chosen:
            name = f"**{name}** (chosen)"
        rows.append(
            [LABELS[p["mode"]], name, steps, f"{p['network_calls']:.0f}"]
            + [f"{p['seconds_per_64']:.2f}", f"{p['generative_perplexity']:.2f}", *_figures(p)]
            + _faults(p)
        )
    skipped = "; ".join(f"{s['label']} {s['steps']} steps ({s['why']})" for s in sw["skipped"])
    return [
        f"### Sampling sweep on the validation split ({sw['samples']} sentences a point, "
        "batches of 64, timed after a warm-up)",
        table(SWEEP_COLUMNS, rows),
        *([f"Skipped: {skipped}."] if skipped else []),
    ]


def sampling_sections(r: dict) -> list[str]:
    """The markdown sections of the sampling results."""
    return [*samples_section(r), *choice_section(r), *sweep_section(r)]


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
