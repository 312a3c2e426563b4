"""textdiff's benchmark: perplexity bound, rounding accuracy, sample quality, speed and memory of
Gaussian and [MASK] diffusion, side by side with an autoregressive (AR) baseline of the same size.

What is measured, in one run, and how:

1. **train** — the three E2E models (``configs/e2e.yaml``, ``e2e-mask.yaml``, ``e2e-ar.yaml``)
   are trained, each by ``textdiff train --resume`` in a child process (``benchmarks/child.py``)
   that reports its own peak RSS, into ``benchmarks/work/[quick/|smoke/]<mode>/``. A finished
   run whose ``experiment.yaml`` has the model, process, data and train settings asked for is
   reused (its ``sample:`` defaults may differ: they do not change the weights).
2. **sweep** — ``benchmarks/sweep.py``: every candidate sampling setting of the preset (every
   sampler of both diffusion modes, steps, the length placed first or not, temperatures; the
   AR model greedy and ancestral) generates sentences (after a warm-up, batches of 64) that are
   described beside as many random real **validation** sentences: network calls, seconds per
   64, generative perplexity under the AR model, entropy, words, distinct-2, row faults. From
   these figures alone, each diffusion mode's default is chosen (``sweep.select``).
3. **evaluate** — :func:`textdiff.infra.evaluation.evaluate_model` on the test split: the NLL
   bound and perplexity (exact NLL for AR), token accuracy of the denoiser vs ``t``, the
   round-trip and margins of FAISS rounding, and samples generated with the chosen setting,
   scored by the AR model and described as in the sweep beside as many real test sentences
   (and, for the Gaussian model, DDPM at 200 steps and the same temperature, its target's bar).
4. **speed** — training tokens/s of every mode over a fixed number of steps after one warm-up
   step (from the trainer's ``metrics.jsonl`` logged every step), in fp32 and, where the CPU has
   a bf16 unit, bf16 (skipped, with the reason recorded, elsewhere), times the model FLOPs per
   token (``measure.flops_per_token``: ``TextDiffusionModel.num_flops_per_token`` plus
   self-conditioning's extra forward; ``6 N + 12 n_layer L D`` for GPT-2), over the best
   square-matmul FLOP/s of the same dtype measured in the same run; beside it the FLOP/s of the
   step's own matmuls run alone at its shapes (``measure.matmul_ceiling``: the most the
   fraction could be) and the share of the step's time they take.
5. **rounding** — ``benchmarks/rounding.py``'s FAISS vs tiled-torch cells.
6. **memory** — peak RSS of the training process (stage 1) and of generation processes at two
   step counts without the trajectory.
7. **peer** — ``benchmarks/peer.py``: training tokens/s and seconds per sampling step of textdiff
   against Diffusion-LM's reference code (``../shared/tools/dlm-speed/``) at its E2E size, in
   one process, taking turns; also runnable alone.

Each stage's result is cached in ``work/.../cache/<stage>.json`` under a key of its settings and
the model files, so a rerun reuses finished work. Results go to ``benchmarks/results/<preset>.json``
with machine information and timestamps; ``--quick`` and ``--full`` also write the PNG plots and
the markdown table between the results markers of ``benchmarks/README.md``.

Usage::

    .venv/bin/python benchmarks/run.py --smoke | --quick [--quick-steps N] | --full
        [--stages train,sweep,evaluate,speed,rounding,memory,peer] [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from measure import BENCH, ROOT, OtherLoad, fingerprint, machine_info
from peer import CONFIG as PEER_CONFIG
from peer import REFERENCE, check_reference, peer_stage
from plots import plots
from presets import MODES, PRESETS, Preset
from report import markdown, targets, write_readme
from stages import (
    Context,
    StageError,
    experiment,
    memory_stage,
    rounding_stage,
    speed_stage,
    train_stage,
    trained_sections,
)
from sweep import evaluate_stage, select, sweep_stage

STAGES = ("train", "sweep", "evaluate", "speed", "rounding", "memory", "peer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--smoke", action="store_true", help="tiny models, ~3 min (development)")
    size.add_argument("--quick", action="store_true", help="short training, ≤ ~10 min")
    size.add_argument("--full", action="store_true", help="the configs' budgets, ~90 min")
    p.add_argument(
        "--quick-steps", type=int, default=None, help="train.max_steps of --quick (default 40)"
    )
    p.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated subset of {','.join(STAGES)}; the others come from the cache",
    )
    p.add_argument("--force", action="store_true", help="recompute selected stages (not train)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch / OpenMP threads here and in every child (default: torch's, one a core); "
        "on a machine shared with other jobs, fewer threads than cores avoid spinning threads",
    )
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown:
        p.error(f"unknown stages {unknown}; choose from {list(STAGES)}")
    if args.quick_steps is not None and (not args.quick or args.quick_steps < 1):
        p.error("--quick-steps takes a positive number and goes with --quick")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be positive")
    return args


def check_data(preset: Preset, peer: bool) -> None:
    """Refuse early, in one message, when the E2E files the configs name are missing, or (for
    the peer stage) Diffusion-LM's reference code."""
    from textdiff.infra.config import ConfigError, load_config

    if peer:
        try:
            check_reference()
        except StageError as e:
            sys.exit(f"error: {e}")

    for path, overrides in preset.configs.values():
        try:
            cfg = load_config(ROOT / path, overrides)
        except ConfigError as e:
            sys.exit(f"error: {e}")
        missing = [f for f in cfg.data.data_files.values() if not Path(f).is_file()]
        if missing:
            sys.exit(
                f"error: the E2E data is missing: {', '.join(missing)} (named by {path}). The "
                f"benchmark reads the E2E NLG files from ../shared/data/e2e beside the checkout "
                f"({(ROOT.parent / 'shared' / 'data' / 'e2e').resolve()}); put them there."
            )


class Cache:
    """Stage results under ``work/cache/<stage>.json``, valid while their key matches."""

    def __init__(self, ctx: Context, selected: list[str], force: bool):
        self.ctx, self.selected, self.force = ctx, selected, force
        self.ran: dict[str, float] = {}
        self.other_load: dict[str, float | None] = {}

    def get(self, stage: str, key: str, compute) -> dict | None:
        """The stage's result: computed when selected (unless cached under ``key``), else the
        cached result if its key matches, else ``None``."""
        path = self.ctx.work / "cache" / f"{stage}.json"
        cached = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        fresh = cached is not None and cached["key"] == key
        if stage not in self.selected or (fresh and not self.force):
            note = "cached" if fresh else "not run (no cached result)"
            self.ctx.log(stage, note)
            if fresh:
                self.other_load[stage] = cached.get("other_cpu_share")
            return cached["result"] if fresh else None
        self.ctx.log(stage, "starting")
        start = time.perf_counter()
        with OtherLoad() as load:
            result = compute()
        self.ran[stage] = time.perf_counter() - start
        self.other_load[stage] = load.share
        self.ctx.log(
            stage,
            f"done in {self.ran[stage]:.0f} s (other processes: {load.share:.0%} of the CPUs)",
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "key": key,
            "finished_at": _now(),
            "seconds": self.ran[stage],
            "other_cpu_share": load.share,
            "result": result,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
        return result


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_stages(ctx: Context, cache: Cache, selected: list[str]) -> dict:
    """Each stage's result: computed if ``selected`` (and stale), else from the cache."""
    threads = torch.get_num_threads()  # timings depend on it: part of every cache key
    p = asdict(ctx.preset)
    models = [ctx.model_dir(m) / "model.safetensors" for m in MODES]
    with OtherLoad() as load:
        results = {"train": train_stage(ctx, train="train" in selected)}
    if "train" in selected:
        cache.other_load["train"] = load.share
    results["sweep"] = cache.get(
        "sweep",
        fingerprint(threads, p["sweep"], p["sweep_samples"], *models),
        lambda: sweep_stage(ctx),
    )
    results["choice"] = choice = select(results["sweep"], ctx.preset.call_budget)
    for mode, c in choice.items():
        point = c["point"]
        pick = f"{point['label']}, {point['steps']} steps" if point else "its saved default"
        ctx.log("choice", f"{mode}: {pick} (rule: {c['rule']})")
    results["evaluate"] = cache.get(
        "evaluate",
        fingerprint(
            threads,
            [p[k] for k in ("eval_limit", "num_t", "eval_samples", "reference_steps")],
            p["acc_sentences"],
            choice,
            *models,
        ),
        lambda: evaluate_stage(ctx, choice),
    )
    configs = [trained_sections(experiment(ctx, m)[0].to_dict()) for m in MODES]
    results["speed"] = cache.get(
        "speed",
        fingerprint(threads, p["speed_steps"], p["peak_sizes"], configs),
        lambda: speed_stage(ctx),
    )
    results["rounding"] = cache.get(
        "rounding",
        fingerprint(threads, p["rounding_quick"], p["rounding_grid"], p["rounding_queries"]),
        lambda: rounding_stage(ctx),
    )
    results["memory"] = cache.get(
        "memory",
        fingerprint(threads, p["memory_steps"], p["memory_samples"], p["memory_modes"], *models),
        lambda: memory_stage(ctx, results["train"]),
    )
    results["peer"] = cache.get(
        "peer",
        fingerprint(threads, p["peer"], ROOT / PEER_CONFIG, REFERENCE / "COMMIT"),
        lambda: peer_stage(ctx),
    )
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the selected stages, then write the JSON, and for quick / full the plots and table."""
    args = parse_args(argv)
    preset = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.quick_steps is not None:
        preset = replace(preset, train_steps=args.quick_steps)
    check_data(preset, peer="peer" in args.stages)
    if args.threads is not None:  # children inherit the environment
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    work = BENCH / "work" if preset.name == "full" else BENCH / "work" / preset.name
    ctx = Context(preset, work)
    started = _now()
    ctx.log("run", f"preset {preset.name}, stages {args.stages}, work folder {work}")
    cache = Cache(ctx, args.stages, args.force)
    try:
        results = run_stages(ctx, cache, args.stages)
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    results = {
        "preset": preset.name,
        "settings": asdict(preset),
        "machine": machine_info(),
        "started_at": started,
        "finished_at": _now(),
        "elapsed_s": time.perf_counter() - ctx.start,
        "stage_seconds": cache.ran,
        "other_cpu_share": cache.other_load,
        **results,
    }
    results["targets"] = targets(results)
    out = BENCH / "results" / f"{preset.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    section = markdown(results)
    print("\n" + section + "\n")
    ctx.log("run", f"wrote {out.relative_to(ROOT)}")
    for path in plots(results, out.parent if preset.name != "smoke" else work / "plots"):
        ctx.log("run", f"wrote {path.relative_to(ROOT)}")
    if preset.name != "smoke":
        write_readme(BENCH / "README.md", section)
        ctx.log("run", "wrote the results table in benchmarks/README.md")
    return 0


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the running child (a training, a generation) is stopped too
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
