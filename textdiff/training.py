"""Training with ``accelerate``: one process on a laptop CPU, many GPUs or nodes unchanged.

``train(cfg)`` builds the tokenizer, data, denoiser and forward process from an
:class:`ExperimentConfig`, runs AdamW with warm-up and decay, gradient clipping and accumulation,
optional bf16 autocast and EMA weights, validates periodically (every loss term, rounding accuracy
of x̂_0 at several noise levels, a few samples), logs to ``metrics.jsonl`` and checkpoints so that
``resume=True`` continues exactly where a run stopped.

Output folder::

    experiment.yaml      the resolved config (a resumed run must match it)
    tokenizer/           saved before the first step, so a resumed run reads the same one
    metrics.jsonl        one JSON object per log / evaluation
    checkpoints/step-N/  accelerate state + EMA weights + trainer_state_R.json + rng_state_R
    model/               the final model folder (EMA weights), for TextDiffusionPipeline

Exact resume: a run killed at any moment (even by SIGKILL) and rerun with ``resume=True`` goes on
from its newest usable checkpoint and, on CPU with the same config, ends bit-identical to a run
never interrupted (weights, optimizer, scheduler, EMA, every RNG, the data position and the
pending log sums are restored; evaluation does not move the training RNG). On resume
``metrics.jsonl`` is cut back to the checkpoint's step — what was logged after it is logged
again — so it reads as the uninterrupted run's, wall-clock ``tokens_per_s`` aside. SIGINT /
SIGTERM save a checkpoint after the current step and raise :class:`TrainingInterrupted`; a
non-finite loss raises :class:`TrainingError` naming the step, and no checkpoint follows it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import signal
import time
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import (
    CheckpointManager,
    StopSignals,
    prepare_run_folder,
    restore_rng_states,
    rewind_metrics,
    rng_states,
    write_folder,
)
from .config import ExperimentConfig
from .data import DataError, build_tokenizer, iter_texts, load_text_splits, tokenize_split
from .guidance import condition_positions, drop_conditions
from .modeling import make_config, model_class
from .pipeline import TextDiffusionPipeline, bf16_supported, build_process
from .tokenization import load_tokenizer

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM stopped training after the checkpoint of ``step`` was saved."""

    def __init__(self, step: int, checkpoint: Path, signum: int = signal.SIGINT):
        super().__init__(f"interrupted at step {step}; checkpoint saved, resume with --resume")
        self.step, self.checkpoint, self.signum = step, checkpoint, signum


@dataclasses.dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    steps: int
    seconds: float
    tokens_per_second: float
    last_eval: dict[str, float]


class _Denoiser:
    """The view of a prepared (possibly DDP-wrapped) model that the math is given: calls go
    through the wrapper (so gradients are synchronised), the word table and read-out are
    reached on the module itself."""

    def __init__(self, prepared, module):
        self.prepared, self.module = prepared, module
        self.embed_dim = getattr(module, "embed_dim", None)
        self.self_conditioning = getattr(module, "self_conditioning", False)
        self.device = module.device

    def embed(self, ids: Tensor) -> Tensor:
        return self.module.embed(ids)

    def logits(self, x: Tensor) -> Tensor:
        return self.module.logits(x)

    def word_table(self) -> Tensor:
        return self.module.word_table()

    def __call__(self, *args, **kwargs):
        return self.prepared(*args, **kwargs)


def lr_lambda(cfg) -> callable:
    """Linear warm-up to 1, then cosine / linear decay to ``min_lr_ratio`` (or constant)."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_decay == "constant":
            return 1.0
        frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * frac)) if cfg.lr_decay == "cosine" else 1 - frac
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape

    return factor


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matmul weights only (not on the word table, norms or biases)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() == 2 and "embedding" not in name else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` where bf16 matmuls are native, else ``fp32``; accelerate's names."""
    if precision == "auto":
        precision = "bf16" if bf16_supported(device) else "fp32"
    return "bf16" if precision == "bf16" else "no"


def _batches(split, cfg, epoch: int, start: int, rank: int, world: int):
    """(epoch, index, batch) forever, from ``(epoch, start)`` on, this rank's share."""
    while True:
        for i, batch in enumerate(
            split.batches(
                cfg.batch_size, seed=cfg.seed, epoch=epoch, start=start, rank=rank, world_size=world
            ),
            start=start,
        ):
            yield epoch, i, batch
        epoch, start = epoch + 1, 0


@torch.no_grad()
def evaluate_batches(
    process,
    model,
    batches: list[Tensor],
    *,
    seed: int,
    pad_id: int,
    rounder=None,
    condition_len: int = 0,
) -> dict:
    """Mean loss terms and accuracy of the denoiser's token prediction at the process's
    ``eval_times`` over the real tokens (not padding; not the condition part of a data-to-text
    model), on fixed batches with fixed noise, so evaluations at different steps compare."""
    gen = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}

    def clean(batch: Tensor) -> dict:
        return {"clean": condition_positions(*batch.shape, condition_len, batch.device)}

    extra = clean if condition_len else lambda batch: {}
    for batch in batches:
        for k, v in process.loss(model, batch, generator=gen, **extra(batch)).floats().items():
            sums[k] = sums.get(k, 0.0) + v / len(batches)
    for t in process.eval_times:
        hits = total = 0
        for batch in batches:
            pred, where = process.predict_ids(
                model, batch, t, rounder=rounder, generator=gen, **extra(batch)
            )
            where = where & (batch != pad_id)
            hits += ((pred == batch) & where).sum().item()
            total += where.sum().item()
        sums[f"acc_t{t:g}"] = hits / max(total, 1)
    return sums


def train(
    cfg: ExperimentConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train the model ``cfg`` describes; returns where it was saved and the last evaluation."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    tc = cfg.train
    out = Path(tc.output_dir)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=resolve_precision(
            tc.precision, torch.device("cuda" if torch.cuda.is_available() else "cpu")
        ),
        gradient_accumulation_steps=tc.grad_accum,
    )
    main = accelerator.is_main_process
    splits = load_text_splits(cfg.data)  # bad data is refused before the output folder is touched
    if "train" not in splits:
        raise DataError(
            f"the data has no 'train' split (found {sorted(splits)}); name one in data.data_files"
        )
    if main:
        prepare_run_folder(out, cfg, resume=resume, overwrite=overwrite)
    accelerator.wait_for_everyone()
    set_seed(tc.seed + accelerator.process_index)

    tok_dir = out / "tokenizer"
    C = cfg.process.condition_len
    if resume and (tok_dir / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(str(tok_dir))
    else:
        columns = ("condition", "text") if C else ("text",)  # data-to-text: MR words too
        tokenizer = build_tokenizer(
            cfg.data,
            iter_texts(splits["train"], 1_000_000 if cfg.data.streaming else None, columns),
        )
        if main:
            write_folder(tok_dir, tokenizer.save_pretrained)
    accelerator.wait_for_everyone()
    L = cfg.model.seq_len
    train_split = tokenize_split(
        splits["train"], tokenizer, L, cfg.data.packing, name="train", condition_len=C
    )
    val_name = next((s for s in ("validation", "valid", "test") if s in splits), None)
    val_split = (
        tokenize_split(
            splits[val_name], tokenizer, L, cfg.data.packing, name=val_name, condition_len=C
        )
        if val_name
        else None
    )

    hf_cfg = make_config(
        cfg.network_config(len(tokenizer)),
        cfg.process,
        cfg.sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        mask_token_id=tokenizer.mask_token_id,
    )
    torch.manual_seed(tc.seed)
    cls = model_class(hf_cfg.model_type)
    model = cls(hf_cfg)
    process = build_process(hf_cfg)
    ema = None
    if tc.ema_decay > 0:
        ema = cls(hf_cfg).eval()
        ema.load_state_dict(model.state_dict())
        ema.requires_grad_(False)
    opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc))
    prepared, opt, sched = accelerator.prepare(model, opt, sched)
    module = accelerator.unwrap_model(prepared)
    ema = ema.to(accelerator.device) if ema is not None else None
    denoiser = _Denoiser(prepared, module)

    ckpt = CheckpointManager(out / "checkpoints", keep=tc.keep_checkpoints)
    if main:
        ckpt.clean()
    accelerator.wait_for_everyone()
    noise_gen = torch.Generator().manual_seed(tc.seed * 1000 + accelerator.process_index)
    state = {"step": 0, "epoch": 0, "batch": 0, "tokens": 0}
    running: dict[str, float] = {}  # loss terms summed since the last log line
    if resume:
        restored = ckpt.load_latest(accelerator, ema)
        if restored is not None:
            state, rng = restored
            running = state.pop("running", {})
            restore_rng_states(rng, noise_gen)
            logger.info("resumed from step %d", state["step"])

    eval_batches = []
    if val_split is not None:
        eval_batches = [
            b.to(accelerator.device)
            for b, _ in zip(
                val_split.batches(tc.batch_size, seed=tc.seed, epoch=0),
                range(tc.eval_batches),
                strict=False,
            )
        ]
    metrics_path = out / "metrics.jsonl"
    history = rewind_metrics(metrics_path, state["step"]) if resume and main else []

    def log(record: dict) -> None:
        if main:
            with metrics_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    @torch.random.fork_rng(devices=[accelerator.device] if torch.cuda.is_available() else [])
    def run_eval(step: int) -> dict:  # on its own seeds: the training RNG does not move
        evaluated = ema if ema is not None else module
        pipe = TextDiffusionPipeline(evaluated, tokenizer, precision=tc.precision)
        record = {}
        if eval_batches:
            record = evaluate_batches(
                process,
                evaluated,
                eval_batches,
                seed=tc.seed,
                pad_id=tokenizer.pad_token_id,
                rounder=pipe.rounder,
                condition_len=C,
            )
        if tc.eval_samples:
            steps = min(cfg.sample.steps, 100, pipe.max_steps or 100)
            n, conditions = tc.eval_samples, None
            if C:  # data-to-text: sentences for the first distinct MRs of the validation split
                conditions = list(dict.fromkeys((val_split or train_split).cond))[:n]
                record["sample_conditions"] = conditions
                n = len(conditions)
            record["samples"] = pipe.generate(
                n, seed=tc.seed, num_steps=steps, condition=conditions
            )
        module.train()
        log({"step": step, "split": "valid", **record})
        return record

    stream = _batches(
        train_split,
        tc,
        state["epoch"],
        state["batch"],
        accelerator.process_index,
        accelerator.num_processes,
    )
    world_batch = tc.batch_size * accelerator.num_processes
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.max_steps, initial=state["step"], desc="training", unit="step")
    module.train()
    last_eval: dict = {}
    if history and history[-1]["split"] == "valid" and history[-1]["step"] == state["step"]:
        last_eval = {k: v for k, v in history[-1].items() if k not in ("step", "split")}
    t0, tokens0 = time.perf_counter(), state["tokens"]
    with StopSignals() as stop:
        while state["step"] < tc.max_steps:
            step_loss = 0.0
            for _ in range(tc.grad_accum):
                epoch, index, batch = next(stream)
                batch, extra = batch.to(accelerator.device), {}
                if C:  # partial noising; condition dropout for classifier-free guidance
                    p, null = cfg.process.condition_dropout, tokenizer.mask_token_id
                    batch = drop_conditions(batch, C, null, p, generator=noise_gen)
                    extra["clean"] = condition_positions(*batch.shape, C, batch.device)
                with accelerator.accumulate(prepared), accelerator.autocast():
                    terms = process.loss(denoiser, batch, generator=noise_gen, **extra)
                    accelerator.backward(terms.loss)
                    if accelerator.sync_gradients and tc.clip_grad > 0:
                        accelerator.clip_grad_norm_(prepared.parameters(), tc.clip_grad)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                values = terms.floats()
                for k, v in values.items():
                    running[k] = running.get(k, 0.0) + v / tc.grad_accum
                step_loss += values["loss"] / tc.grad_accum
            state.update(
                step=state["step"] + 1,
                epoch=epoch,
                batch=index + 1,
                tokens=state["tokens"] + world_batch * L * tc.grad_accum,
            )
            step = state["step"]
            interrupted, diverged = _agree(accelerator, stop.signum is not None, step_loss)
            if diverged:
                _diverged(f"the loss became {step_loss} at step {step}", ckpt)
            if ema is not None:
                decay = min(tc.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    torch._foreach_lerp_(
                        list(ema.parameters()), list(module.parameters()), 1 - decay
                    )
            if bar is not None:
                bar.update(1)
            if step % tc.log_every == 0 or step == tc.max_steps:
                n = tc.log_every if step % tc.log_every == 0 else step % tc.log_every
                elapsed = time.perf_counter() - t0
                record = {k: v / n for k, v in running.items()}
                record.update(
                    step=step,
                    split="train",
                    lr=sched.get_last_lr()[0],
                    tokens_per_s=(state["tokens"] - tokens0) / max(elapsed, 1e-9),
                )
                log(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                running = {}
            if step % tc.eval_every == 0 or step == tc.max_steps:
                last_eval = run_eval(step)
            if step % tc.save_every == 0 or step == tc.max_steps or interrupted:
                if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
                    _diverged(f"the weights became non-finite at step {step}", ckpt)
                saved = ckpt.save(
                    accelerator, ema, {**state, "running": running}, rng_states(noise_gen)
                )
            if interrupted:
                if bar is not None:
                    bar.close()
                raise TrainingInterrupted(step, saved, stop.signum or signal.SIGINT)
    if bar is not None:
        bar.close()
    if not last_eval:  # resumed a run that had finished before its last evaluation
        last_eval = run_eval(state["step"])
    seconds = time.perf_counter() - t0
    with torch.no_grad():  # every rank must hold the same weights
        checksum = torch.stack([p.double().sum() for p in module.parameters()]).sum()
    sums = accelerator.gather(checksum.reshape(1).to(accelerator.device)).tolist()
    log(
        {
            "step": state["step"],
            "split": "final",
            "world_size": accelerator.num_processes,
            "param_checksums": sums,
            "ranks_in_sync": len(set(sums)) == 1,
        }
    )
    model_dir = out / "model"
    if main:
        final = ema if ema is not None else module

        def write_model(folder: Path) -> None:
            TextDiffusionPipeline(final, tokenizer).save_pretrained(folder)
            shutil.copyfile(out / "experiment.yaml", folder / "experiment.yaml")  # its data

        write_folder(model_dir, write_model)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(
        out,
        model_dir,
        state["step"],
        seconds,
        (state["tokens"] - tokens0) / max(seconds, 1e-9),
        last_eval,
    )


def _agree(accelerator, interrupted: bool, loss: float) -> tuple[bool, bool]:
    """``(interrupted, diverged)`` as every rank sees it, so all ranks stop at the same step."""
    flags = torch.tensor([float(interrupted), float(not math.isfinite(loss))])
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags.to(accelerator.device), "max").cpu()
    return bool(flags[0]), bool(flags[1])


def _diverged(what: str, ckpt: CheckpointManager) -> None:
    kept = ckpt.checkpoints()
    where = f"{kept[-1]} is the last good checkpoint" if kept else "no checkpoint was saved yet"
    raise TrainingError(
        f"{what}; training stopped and {where}; lower train.lr or raise train.warmup_steps"
    )
