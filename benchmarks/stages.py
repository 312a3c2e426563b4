"""Stages of ``benchmarks/run.py``: train, speed, rounding, memory (the sweep and the evaluation
with the settings it chooses are in ``sweep.py``, the peer stage in ``peer.py``).

Each stage function takes a :class:`Context` and returns a JSON-ready dict; ``run.py`` caches it.
Heavy work that needs its own peak memory (training, generation for the memory figures) runs in
child processes (``benchmarks/child.py``); the rest runs here.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from measure import (
    ROOT,
    flops_per_token,
    matmul_ceiling,
    matmul_peak,
    matmul_products,
    read_metrics,
    run_child,
    steady_tokens_per_s,
    tail,
)
from presets import MODES, Preset

from textdiff.infra.config import ExperimentConfig, load_config


class StageError(RuntimeError):
    """A stage cannot finish (a child failed, a model it needs is missing)."""


@dataclass
class Context:
    """A run: its preset, work folder and clock."""

    preset: Preset
    work: Path
    start: float = field(default_factory=time.perf_counter)

    def log(self, stage: str, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f}s] {stage}: {message}", flush=True)

    def run_dir(self, mode: str) -> Path:
        return self.work / mode

    def model_dir(self, mode: str) -> Path:
        return self.work / mode / "model"

    def need_models(self, *modes: str) -> None:
        missing = [m for m in modes if not (self.model_dir(m) / "config.json").is_file()]
        if missing:
            raise StageError(
                f"no trained model for {missing} under {self.work}; run the train stage first"
            )


def experiment(ctx: Context, mode: str) -> tuple[ExperimentConfig, list[str]]:
    """The training config of ``mode`` in this preset, and the overrides that make it."""
    path, overrides = ctx.preset.configs[mode]
    extra = [*overrides, f"train.output_dir={ctx.run_dir(mode)}"]
    steps = ctx.preset.train_steps
    if steps is not None:  # a short budget: warm up over the first fifth, evaluate once at the end
        base = load_config(ROOT / path, overrides)
        extra += [
            f"train.max_steps={steps}",
            f"train.warmup_steps={min(base.train.warmup_steps, steps // 5)}",
            f"train.eval_every={steps}",
            f"train.eval_batches={min(base.train.eval_batches, 2)}",
            f"train.save_every={steps}",
            f"train.log_every={max(1, min(base.train.log_every, steps // 10))}",
        ]
    return load_config(ROOT / path, extra), extra


def _train_job(path: str, overrides: list[str], *flags: str) -> list[str]:
    sets = [item for o in overrides for item in ("--set", o)]
    return ["train", str(ROOT / path), *sets, *flags, "--quiet", "--samples", "0"]


# ----------------------------------------------------------------------------- 1. train
TRAINED = ("model", "process", "data", "train")
"""The sections of a run config that decide its weights (``sample:`` holds generation defaults)."""


def normalised(config: dict | None) -> dict | None:
    """A run config (an ``experiment.yaml``, perhaps of an earlier textdiff) under today's names
    and defaults; ``None`` for no config."""
    from textdiff.schema import ConfigError, from_dict

    if not isinstance(config, dict):
        return None
    try:
        return from_dict(ExperimentConfig, config).to_dict()
    except ConfigError:
        return config


def trained_sections(config: dict | None) -> dict | None:
    """The :data:`TRAINED` sections of a run config (:func:`normalised`)."""
    config = normalised(config)
    return None if config is None else {k: config.get(k) for k in TRAINED}


def train_stage(ctx: Context, train: bool) -> dict:
    """Train (or reuse) each mode's model; return what each run did and cost.

    A run is reused when ``model/`` exists and its ``experiment.yaml`` has the model, process,
    data and train settings asked for (the ``sample:`` section may differ: it holds generation
    defaults, and every stage passes its sampling settings explicitly); a run with those
    settings but no model yet (interrupted) is resumed; a run with other settings is replaced.
    """
    import yaml

    out = {}
    for mode in MODES:
        cfg, overrides = experiment(ctx, mode)
        run = ctx.run_dir(mode)
        run_file = run / "experiment.yaml"
        saved = yaml.safe_load(run_file.read_text(encoding="utf-8")) if run_file.is_file() else None
        same = trained_sections(saved) == trained_sections(cfg.to_dict())
        done = same and (ctx.model_dir(mode) / "config.json").is_file()
        report = ctx.work / "reports" / f"train-{mode}.json"
        if train and not done:
            flag = "--resume" if saved is None or same else "--overwrite"
            what = {"--resume": "training" if saved is None else "resuming"}.get(flag, "retraining")
            ctx.log("train", f"{mode}: {what} {cfg.train.max_steps} steps in {run}")
            res = run_child(
                _train_job(ctx.preset.configs[mode][0], overrides, flag),
                report=report,
                log=ctx.work / "logs" / f"train-{mode}.log",
            )
            if res.exit_code != 0:
                raise StageError(f"training {mode} failed ({res.exit_code}):\n{tail(res.log)}")
            ctx.log("train", f"{mode}: done in {res.wall_s:.0f} s")
        elif done:
            now, was = cfg.to_dict(), normalised(saved)
            other = [k for k in now if was.get(k) != now[k]]  # not TRAINED: e.g. sample
            note = f" (its {', '.join(other)} settings differ: not retrained)" if other else ""
            ctx.log("train", f"{mode}: reusing {ctx.model_dir(mode)}{note}")
        elif saved is not None:
            ctx.log("train", f"{mode}: warning: {run} holds another or unfinished run")
        out[mode] = _training_info(ctx, mode, cfg, overrides, reused=done, report=report)
    return out


def _training_info(
    ctx: Context,
    mode: str,
    cfg: ExperimentConfig,
    overrides: list[str],
    *,
    reused: bool,
    report: Path,
) -> dict:
    """Budget, throughput, peak memory and loss curves of a finished (or reused) run."""
    records = read_metrics(ctx.run_dir(mode) / "metrics.jsonl")
    train = [r for r in records if r.get("split") == "train"]
    valid = [r for r in records if r.get("split") == "valid"]
    child = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else {}
    steps = train[-1]["step"] if train else 0
    return {
        "config": ctx.preset.configs[mode][0],
        "overrides": overrides,
        "reused": reused,
        "steps": steps,
        "batch_size": cfg.train.batch_size,
        "seq_len": cfg.model.seq_len,
        "tokens": steps * cfg.train.batch_size * cfg.model.seq_len * cfg.train.grad_accum,
        "run_tokens_per_s": train[-1].get("tokens_per_s") if train else None,
        "child_seconds": child.get("seconds"),
        "peak_rss_bytes": child.get("peak_rss_bytes"),
        "curve_train": [[r["step"], r["loss"]] for r in train],
        "curve_valid": [[r["step"], r["loss"]] for r in valid if "loss" in r],
        "last_valid": {k: v for k, v in (valid[-1] if valid else {}).items() if k != "samples"},
    }


# ----------------------------------------------------------------------------- 4. speed
def speed_stage(ctx: Context) -> dict:
    """Training tokens/s and model FLOP/s of every mode in fp32, and in bf16 where the CPU has a
    bf16 unit, each over the same-dtype matmul peak measured now; beside it the FLOP/s of the
    step's own matmuls run alone at its shapes (the most that fraction could be) and the share
    of the step's time they account for."""
    from textdiff.models.devices import bf16_supported

    p, native = ctx.preset, bf16_supported("cpu")
    precisions = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if native else {})}
    skipped = None
    if not native:
        skipped = (
            "the CPU has no bf16 unit (AVX-512-BF16 or AMX): bf16 autocast would be emulated, "
            "so bf16 training is not measured"
        )
        ctx.log("speed", f"bf16 skipped: {skipped}")
    peaks = {}
    for precision, dtype in precisions.items():
        peaks[precision] = matmul_peak(dtype, p.peak_sizes[precision])
        ctx.log("speed", f"{precision} matmul peak {peaks[precision]['flops'] / 1e9:.1f} GFLOP/s")
    runs = []
    for mode in MODES:
        for precision in precisions:
            run = _timed_training(ctx, mode, precision)
            run["model_flops"] = run["tokens_per_s"] * run["flops_per_token"]
            run["fraction_of_peak"] = run["model_flops"] / peaks[precision]["flops"]
            ceiling = run["matmul_ceiling"]
            ceiling["fraction_of_peak"] = ceiling["flops"] / peaks[precision]["flops"]
            run["matmul_share"] = run["model_flops"] / ceiling["flops"]  # of the step's time
            runs.append(run)
            ctx.log(
                "speed",
                f"{mode} {precision}: {run['tokens_per_s']:,.0f} tokens/s, "
                f"{run['model_flops'] / 1e9:.2f} GFLOP/s = {run['fraction_of_peak']:.0%} of "
                f"peak; its matmuls alone would reach {ceiling['fraction_of_peak']:.0%} and "
                f"take {run['matmul_share']:.0%} of the step",
            )
    return {"peaks": peaks, "runs": runs, "native_bf16": native, "bf16_skipped": skipped}


def _timed_training(ctx: Context, mode: str, precision: str) -> dict:
    """A short training run of ``mode`` at its config's batch logging every step, stopped once
    its last step is logged; its steady tokens/s and model FLOPs per token."""
    from textdiff.models.modeling import make_config
    from textdiff.models.tokenization import load_tokenizer

    p = ctx.preset
    path, overrides = p.configs[mode]
    base = load_config(ROOT / path, overrides)
    batch, steps = base.train.batch_size, 1 + p.speed_steps
    run = ctx.work / "speed" / f"{mode}-{precision}"
    sets = [
        *overrides,
        f"train.output_dir={run}",
        f"train.max_steps={steps}",
        f"train.precision={precision}",
        "train.grad_accum=1",
        "train.log_every=1",
        f"train.eval_every={steps}",
        f"train.save_every={steps}",
        "train.eval_batches=1",
        "train.eval_samples=0",
        f"data.max_train_samples={max(256, batch * steps)}",
    ]
    tokenizer = ctx.run_dir(mode) / "tokenizer"
    if (tokenizer / "tokenizer.json").is_file():  # skip training a tokenizer again
        sets.append(f"data.tokenizer={tokenizer}")
    metrics = run / "metrics.jsonl"
    if run.is_dir():  # this stage's own scratch run: its old metrics must not count
        shutil.rmtree(run)

    def logged_all() -> bool:
        records = read_metrics(metrics)
        return any(r.get("split") == "train" and r.get("step") == steps for r in records)

    ctx.log("speed", f"{mode} {precision}: {steps} steps of {batch} sequences")
    res = run_child(
        _train_job(path, sets, "--overwrite"),
        report=ctx.work / "reports" / f"speed-{mode}-{precision}.json",
        log=ctx.work / "logs" / f"speed-{mode}-{precision}.log",
        until=logged_all,
    )
    rate = steady_tokens_per_s(read_metrics(metrics), batch * base.model.seq_len)
    if rate["tokens_per_s"] is None:
        raise StageError(f"speed run {mode} {precision} logged no step:\n{tail(res.log)}")
    tok = load_tokenizer(str(run / "tokenizer"))
    hf = make_config(
        base.network_config(len(tok)),
        base.process,
        base.sample,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        mask_token_id=tok.mask_token_id,
    )
    fpt, how = flops_per_token(hf, batch)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    ceiling = matmul_ceiling(dtype, matmul_products(hf, batch))  # the child has ended
    return {
        "mode": mode,
        "precision": precision,
        "batch_size": batch,
        "seq_len": base.model.seq_len,
        "hidden_size": base.model.hidden_size,
        "num_layers": base.model.num_layers,
        "vocab_size": len(tok),
        **rate,
        "flops_per_token": fpt,
        "flops_counted_as": how,
        "matmul_ceiling": ceiling,
    }


# -------------------------------------------------------------------------- 5. rounding
def rounding_stage(ctx: Context) -> dict:
    """``benchmarks/rounding.py``'s FAISS vs tiled torch cells on this preset's grid."""
    import faiss
    import rounding as rb

    p = ctx.preset
    settings = rb.QUICK if p.rounding_quick else rb.FULL
    threads = torch.get_num_threads()  # rounding.py's own runs use rb.THREADS; --threads wins
    n = int(os.environ.get("OMP_NUM_THREADS", rb.THREADS))
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    cells = []
    try:
        for vocab in p.rounding_grid[0]:
            for dim in p.rounding_grid[1]:
                cells.append(rb.bench_cell(vocab, dim, p.rounding_queries, settings, seed=0))
                c = cells[-1]
                ctx.log(
                    "rounding",
                    f"V={vocab} d={dim}: faiss {c.faiss_ms:.1f} ms, torch {c.torch_ms:.1f} ms, "
                    f"ratio {c.ratio:.2f}",
                )
    finally:
        torch.set_num_threads(threads)
    return {
        "settings": {**asdict(settings), "quick": p.rounding_quick},
        "queries": p.rounding_queries,
        "threads": {"torch": n, "faiss_omp": faiss.omp_get_max_threads()},
        "cells": [asdict(c) for c in cells],
        "targets": rb.check_targets(cells),
    }


# ---------------------------------------------------------------------------- 6. memory
def memory_stage(ctx: Context, training: dict) -> dict:
    """Peak RSS of training (stage 1's child, or a short dedicated run) and of generation at
    two step counts, each in its own process, without the trajectory."""
    p = ctx.preset
    train_rss = {}
    for mode in MODES:
        rss = training.get(mode, {}).get("peak_rss_bytes")
        source = "stage 1 training process"
        if rss is None and mode == "gaussian":
            path, overrides = p.configs[mode]
            run = ctx.work / "memory" / "train"
            sets = [*overrides, f"train.output_dir={run}", "train.max_steps=5"]
            ctx.log("memory", f"{mode}: no stage-1 report; a 5-step training run")
            res = run_child(
                _train_job(path, sets, "--overwrite"),
                report=ctx.work / "reports" / "memory-train.json",
                log=ctx.work / "logs" / "memory-train.log",
            )
            if res.report is None or res.exit_code != 0:
                raise StageError(f"memory training run failed:\n{tail(res.log)}")
            rss, source = res.report["peak_rss_bytes"], "dedicated 5-step training process"
        if rss is not None:
            train_rss[mode] = {"peak_rss_bytes": rss, "source": source}
    ctx.need_models(*p.memory_modes)
    generation = {}
    for mode in p.memory_modes:
        from textdiff.models.pipeline import TextDiffusionPipeline

        limit = TextDiffusionPipeline.from_pretrained(ctx.model_dir(mode)).max_steps
        generation[mode] = []
        for steps in p.memory_steps:
            steps = min(steps, limit) if limit else steps
            n = p.memory_samples
            res = run_child(
                ["generate", str(ctx.model_dir(mode)), "--samples", str(n), "--steps", str(steps)]
                + ["--batch-size", str(n)],
                report=ctx.work / "reports" / f"memory-{mode}-{steps}.json",
                log=ctx.work / "logs" / f"memory-{mode}-{steps}.log",
            )
            if res.report is None or res.exit_code != 0:
                raise StageError(f"generation run failed:\n{tail(res.log)}")
            generation[mode].append(res.report)
            ctx.log(
                "memory",
                f"{mode} generation, {steps} steps: peak RSS "
                f"{res.report['peak_rss_bytes'] / 2**20:.0f} MiB "
                f"(after loading {res.report['peak_rss_loaded_bytes'] / 2**20:.0f} MiB)",
            )
    return {"training": train_rss, "generation": generation}
