"""Training with ``accelerate``: one process on a laptop CPU, many GPUs or nodes unchanged.

``train(cfg)`` builds the tokenizer, data, denoiser and forward process from an
:class:`ExperimentConfig` (or, with ``dataset=``, from the caller's ``datasets`` splits), runs
AdamW with warm-up and decay, gradient clipping and accumulation, optional bf16 / fp16 autocast
and EMA weights, validates periodically (every loss term, rounding accuracy of x̂_0 at several
noise levels, a few samples), logs to ``metrics.jsonl`` (and the trackers of
``train.report_to``), checkpoints so that ``resume=True`` continues exactly where a run stopped.
The device is the one accelerate picks (a GPU when there is one); mixed precision and gradient
accumulation from the accelerate config or launch flags win over ``train.precision`` /
``train.grad_accum`` (:mod:`textdiff.infra.optimization`).

Output folder::

    textdiff-run.json    every file textdiff wrote here (``--overwrite`` deletes only these)
    .textdiff-run.lock   held while a trainer runs (infra/runfolder.py)
    experiment.yaml      the resolved config (a resumed run must match it)
    tokenizer/           saved before the first step, so a resumed run reads the same one
    metrics.jsonl        the data figures, then one JSON object per log / evaluation
    logs/textdiff/       TensorBoard event files (train.report_to: tensorboard)
    checkpoints/step-N/  accelerate state + trainer_state_R.json + rng_state_R + model/ (the
                         EMA weights as a model folder: TextDiffusionPipeline loads it)
    model/               the final model folder (EMA weights, model card), for the pipeline
    best-model/          with ``train.keep_best``: the model folder of the evaluation with the
                         lowest validation loss (its step in ``metrics.jsonl``'s final line)
    figures/             training_curves.png, acc_by_t.png (``textdiff train``, ``textdiff plot``)

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
import signal
import time
from pathlib import Path

import torch

from ..diffusion.guidance import condition_positions, drop_conditions
from ..diffusion.registry import build_process
from ..models.devices import reuse_freed_memory
from ..models.modeling import make_config, model_class, process_settings, token_ids
from .checkpoint import (
    CheckpointManager,
    StopSignals,
    TrainingInterrupted,
    prepare_run_folder,
    restore_rng_states,
    rewind_metrics,
    rng_states,
    run_scope,
    write_folder,
)
from .config import ExperimentConfig
from .data import DataError, streams, text_splits
from .optimization import Denoiser, lr_lambda, make_accelerator, make_optimizer
from .prepare import VALIDATION_SPLITS, prepare_data
from .reporting import describe_data, validation_record, word_table_record, write_model_folder
from .tracking import log_record, record_logs, start_trackers

logger = logging.getLogger(__name__)
BEST_MODEL = "best-model"  # train.keep_best's folder in the run folder


@dataclasses.dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    steps: int
    seconds: float
    tokens_per_second: float
    last_eval: dict[str, float]
    main_process: bool = True  # False on the other ranks of a multi-process launch
    best: tuple[int, float] | None = None  # train.keep_best: (step, validation loss) of best-model/
    stopped_early: bool = False  # train.patience stopped the run before max_steps


def train(
    cfg: ExperimentConfig,
    *,
    dataset=None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train the model ``cfg`` describes; returns where it was saved and the last evaluation.

    ``dataset``: the caller's data instead of ``cfg.data``'s files — a ``datasets``
    ``DatasetDict`` / ``IterableDatasetDict`` with a ``"train"`` split (the first of
    ``validation`` / ``valid`` / ``test`` validates), or one ``Dataset`` / ``IterableDataset``
    to train on; ``cfg.data``'s column, format and tokenizer settings apply
    (:func:`textdiff.infra.data.text_splits`). Resuming needs the same data again.
    """
    with run_scope():  # the run folder stays locked until training ends, however it ends
        trainer = Trainer(cfg, dataset=dataset, resume=resume, overwrite=overwrite)
        tc = cfg.train
        bar = trainer.progress_bar(progress)
        with StopSignals() as stop:
            stalled = trainer.stalled(quiet=True)  # a resumed run that had stopped early
            while trainer.step < tc.max_steps and not stalled:
                loss = trainer.train_step()
                interrupted = trainer.after_step(loss, stop.signum is not None)
                step, last = trainer.step, trainer.step == tc.max_steps
                bar.update(1)
                if step % tc.log_every == 0 or last:
                    record = trainer.log_train()
                    speed = f"{record['tokens_per_s']:,.0f} tokens/s"
                    bar.set_postfix_str(f"loss={record['loss']:.4f}, {speed}")
                if step % tc.eval_every == 0 or last:
                    trainer.evaluate()
                    stalled = trainer.stalled()
                if step % tc.save_every == 0 or last or interrupted or stalled:
                    saved = trainer.save()
                if interrupted:
                    bar.close()
                    raise TrainingInterrupted(step, saved, stop.signum or signal.SIGINT)
        bar.close()
        return trainer.finish()


class Trainer:
    """One training run: builds the data, tokenizer, model, process and optimizer from ``cfg``
    (restoring the newest checkpoint with ``resume``), then takes optimizer steps
    (:meth:`train_step`, :meth:`after_step`), logs, evaluates, saves and finishes."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        *,
        dataset=None,
        resume: bool = False,
        overwrite: bool = False,
    ):
        if streams(dataset) and not cfg.data.streaming:  # the caller's IterableDataset
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, streaming=True))
        self.cfg, self.tc, self.resume = cfg, cfg.train, resume
        if self.tc.reuse_memory and reuse_freed_memory():
            logger.info("this process keeps freed memory for reuse (train.reuse_memory)")
        self.out = Path(self.tc.output_dir)
        self.accelerator = make_accelerator(self.tc, self.out / "logs")
        self.main = self.accelerator.is_main_process
        self.grad_accum = self.accelerator.gradient_accumulation_steps
        self.data_origin = describe_data(cfg, dataset)
        splits = text_splits(cfg.data, dataset)  # bad data is refused before the folder is used
        if "train" not in splits:
            raise DataError(
                f"the data has no 'train' split (found {sorted(splits)}); name one in "
                "data.data_files"
            )
        for knob, off in (("keep_best", "false"), ("patience", "0")):
            if getattr(self.tc, knob) and not set(VALIDATION_SPLITS) & set(splits):
                raise DataError(
                    f"train.{knob} needs a validation split (found {sorted(splits)}); name one "
                    f"in data.data_files or set train.{knob}={off}"
                )
        if self.main:
            prepare_run_folder(self.out, cfg, resume=resume, overwrite=overwrite)
        self.accelerator.wait_for_everyone()
        from accelerate.utils import set_seed

        set_seed(self.tc.seed + self.accelerator.process_index)
        data = prepare_data(cfg, splits, self.out, resume=resume, accelerator=self.accelerator)
        self.tokenizer, self.train_split, self.val_split, self.data_figures = data
        self._build_model()
        self._restore()
        self.metrics_path = self.out / "metrics.jsonl"
        self.last_eval = self._rewind_metrics() if resume and self.main else {}
        self.last_eval_step = self.step
        start_trackers(self.accelerator, cfg.to_dict(), self.out, self.step)
        if self.step == 0:  # a resumed run has its data line already
            self.log({"step": 0, "split": "data", **self.data_figures})
        self.stream = self._batches()
        self.module.train()
        self.t0, self.tokens0 = time.perf_counter(), self.state["tokens"]

    @property
    def step(self) -> int:
        """Optimizer steps taken."""
        return self.state["step"]

    def _rewind_metrics(self) -> dict:
        """Cut ``metrics.jsonl`` back to the restored step; its evaluation there, if logged."""
        history = rewind_metrics(self.metrics_path, self.step)
        last = history[-1] if history else {}
        if last.get("split") != "valid" or last.get("step") != self.step:
            return {}
        return {k: v for k, v in last.items() if k not in ("step", "split")}

    # ------------------------------------------------------------------ building
    def _build_model(self) -> None:
        """Model, EMA copy, process, AdamW and schedule, prepared by accelerate."""
        cfg, tc, tok = self.cfg, self.tc, self.tokenizer
        ids = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        hf_cfg = make_config(
            cfg.network_config(len(tok)),
            cfg.process,
            cfg.sample,
            mask_token_id=tok.mask_token_id,
            **ids,
        )
        torch.manual_seed(tc.seed)
        cls = model_class(hf_cfg.model_type)
        model = cls(hf_cfg)
        self.process = build_process(process_settings(hf_cfg), token_ids(hf_cfg))
        self.ema = None
        if tc.ema_decay > 0:
            self.ema = cls(hf_cfg).eval()
            self.ema.load_state_dict(model.state_dict())
            self.ema.requires_grad_(False)
        opt = make_optimizer(model, tc)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc))
        if tc.compile:
            model.compile(dynamic=False)
        self.prepared, self.opt, self.sched = self.accelerator.prepare(model, opt, sched)
        self.module = self.accelerator.unwrap_model(self.prepared)
        if self.ema is not None:
            self.ema = self.ema.to(self.accelerator.device)
        self.denoiser = Denoiser(self.prepared, self.module)

    def _restore(self) -> None:
        """Checkpoints, the noise generator, the trainer state (restored on resume) and the
        fixed validation batches."""
        acc, tc = self.accelerator, self.tc
        self.ckpt = CheckpointManager(self.out / "checkpoints", keep=tc.keep_checkpoints)
        if self.main:
            self.ckpt.clean()
        acc.wait_for_everyone()
        self.noise_gen = torch.Generator().manual_seed(tc.seed * 1000 + acc.process_index)
        self.state = {"step": 0, "epoch": 0, "batch": 0, "tokens": 0}
        self.running: dict[str, float] = {}  # loss terms summed since the last log line
        if self.resume:
            restored = self.ckpt.load_latest(acc, self.ema)
            if restored is not None:
                self.state, rng = restored
                self.running = self.state.pop("running", {})
                restore_rng_states(rng, self.noise_gen)
                logger.info("resumed from step %d", self.state["step"])
        self.eval_batches = []
        if self.val_split is not None:
            batches = self.val_split.batches(tc.batch_size, seed=tc.seed, epoch=0)
            pairs = zip(batches, range(tc.eval_batches), strict=False)
            self.eval_batches = [b.to(acc.device) for b, _ in pairs]

    def _batches(self):
        """(epoch, index, batch) forever, from the saved position on, this rank's share."""
        tc, acc = self.tc, self.accelerator
        epoch, start = self.state["epoch"], self.state["batch"]
        rank, world = acc.process_index, acc.num_processes
        while True:
            batches = self.train_split.batches(
                tc.batch_size, seed=tc.seed, epoch=epoch, start=start, rank=rank, world_size=world
            )
            for i, batch in enumerate(batches, start=start):
                yield epoch, i, batch
            epoch, start = epoch + 1, 0

    def progress_bar(self, enabled: bool):
        """A bar over the optimizer steps (a no-op one when disabled or not the main rank)."""
        from tqdm.auto import tqdm

        disable = not (enabled and self.main)
        return tqdm(
            total=self.tc.max_steps,
            initial=self.step,
            desc="training",
            unit="step",
            disable=disable,
        )

    # ------------------------------------------------------------------ stepping
    def train_step(self) -> float:
        """One optimizer step over ``grad_accum`` batches; returns its mean loss."""
        tc, acc, C = self.tc, self.accelerator, self.cfg.process.condition_len
        step_loss, accum = 0.0, self.grad_accum
        for _ in range(accum):
            epoch, index, batch = next(self.stream)
            batch, extra = batch.to(acc.device), {}
            if C:  # partial noising; condition dropout for classifier-free guidance
                p, null = self.cfg.process.condition_dropout, self.tokenizer.mask_token_id
                batch = drop_conditions(batch, C, null, p, generator=self.noise_gen)
                extra["clean"] = condition_positions(*batch.shape, C, batch.device)
            with acc.accumulate(self.prepared), acc.autocast():
                terms = self.process.loss(self.denoiser, batch, generator=self.noise_gen, **extra)
                acc.backward(terms.loss)
                if acc.sync_gradients and tc.clip_grad > 0:
                    acc.clip_grad_norm_(self.prepared.parameters(), tc.clip_grad)
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
            values = terms.floats()
            for k, v in values.items():
                self.running[k] = self.running.get(k, 0.0) + v / accum
            step_loss += values["loss"] / accum
        world_batch = tc.batch_size * acc.num_processes * accum
        self.state.update(
            step=self.step + 1,
            epoch=epoch,
            batch=index + 1,
            tokens=self.state["tokens"] + world_batch * self.cfg.model.seq_len,
        )
        return step_loss

    def after_step(self, loss: float, signalled: bool) -> bool:
        """Stop on a non-finite loss (on any rank), update the EMA weights; returns whether a
        signal asked to stop (on any rank)."""
        flags = torch.tensor([float(signalled), float(not math.isfinite(loss))])
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags.to(self.accelerator.device), "max").cpu()
        if flags[1]:
            self.ckpt.diverged(f"the loss became {loss} at step {self.step}")
        if self.ema is not None:
            decay = min(self.tc.ema_decay, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                params = (list(self.ema.parameters()), list(self.module.parameters()))
                torch._foreach_lerp_(*params, 1 - decay)
        return bool(flags[0])

    # ------------------------------------------------------------------ logging and saving
    def log(self, record: dict) -> None:
        """Append ``record`` to ``metrics.jsonl`` and send its numbers to the trackers."""
        if self.main:
            with self.metrics_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        log_record(self.accelerator, record)

    def log_train(self) -> dict:
        """Log the loss terms averaged since the last log line, the learning rate, tokens/s."""
        n = (
            self.tc.log_every
            if self.step % self.tc.log_every == 0
            else self.step % self.tc.log_every
        )
        elapsed = time.perf_counter() - self.t0
        record = {k: v / n for k, v in self.running.items()}
        record.update(
            step=self.step,
            split="train",
            lr=self.sched.get_last_lr()[0],
            tokens_per_s=(self.state["tokens"] - self.tokens0) / max(elapsed, 1e-9),
        )
        self.log(record)
        self.running = {}
        return record

    def evaluate(self) -> dict:
        """Validation loss terms, accuracy by noise level and a few samples, on their own
        seeds (the training RNG does not move); logged and kept as :attr:`last_eval`."""
        device = self.accelerator.device
        devices = [device] if device.type != "cpu" else []
        with torch.random.fork_rng(devices=devices, device_type=device.type):
            record = validation_record(self)
        self.module.train()
        self.log({"step": self.step, "split": "valid", **record})
        self.last_eval, self.last_eval_step = record, self.step
        self._keep_if_best(record)
        return record

    def _keep_if_best(self, record: dict) -> None:
        """The best validation loss so far and the evaluations since (``train.keep_best``,
        ``train.patience``); with ``keep_best`` ``best-model/`` becomes the current weights when
        this evaluation's validation loss is the lowest yet (the best step and loss are part of
        the trainer state, so a resumed run goes on comparing with them)."""
        if not (self.tc.keep_best or self.tc.patience) or "loss" not in record:
            return
        if record["loss"] >= self.state.get("best_loss", math.inf):
            self.state["stale_evals"] = self.state.get("stale_evals", 0) + 1
            return
        self.state.update(best_loss=record["loss"], best_step=self.step, stale_evals=0)
        if self.main and self.tc.keep_best:
            write_folder(self.out / BEST_MODEL, self.write_model)

    def stalled(self, quiet: bool = False) -> bool:
        """With ``train.patience``: whether that many evaluations in a row (on any rank) have
        not lowered the best validation loss; the run then stops early (logged unless
        ``quiet``). A resumed run that had stopped stays stopped unless the patience grew."""
        if not self.tc.patience:
            return False
        flag = torch.tensor([float(self.state.get("stale_evals", 0) >= self.tc.patience)])
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag.to(self.accelerator.device), "max").cpu()
        if not flag[0]:
            self.state.pop("stopped_early", None)  # a resumed run given more patience
        elif not quiet and self.step < self.tc.max_steps:
            self.state["stopped_early"] = self.step
            logger.info(
                "stopping early at step %d: %d evaluations without a lower validation loss "
                "than step %d's (train.patience)",
                self.step,
                self.tc.patience,
                self.state.get("best_step", 0),
            )
        return bool(flag[0])

    def save(self) -> Path:
        """A checkpoint of the current step (refused if the weights became non-finite)."""
        if not all(bool(torch.isfinite(p).all()) for p in self.module.parameters()):
            self.ckpt.diverged(f"the weights became non-finite at step {self.step}")
        state = {**self.state, "running": self.running}
        saved = self.ckpt.save(
            self.accelerator, self.ema, state, rng_states(self.noise_gen), self.write_model
        )
        record_logs(self.accelerator, self.out)
        return saved

    @property
    def precision(self) -> str:
        """The precision evaluation runs in: bf16 when training does, else fp32."""
        return "bf16" if self.accelerator.mixed_precision == "bf16" else "fp32"

    def write_model(self, folder: Path) -> None:
        """The model folder of the current weights (EMA if kept), with its model card."""
        write_model_folder(self, folder)

    def finish(self) -> TrainResult:
        """Evaluate if the run's last evaluation is missing, log the ranks' weight checksums,
        write ``model/`` (the EMA weights) and return the result."""
        acc = self.accelerator
        if not self.last_eval:  # resumed a run that had finished before its last evaluation
            self.evaluate()
        seconds = time.perf_counter() - self.t0
        with torch.no_grad():  # every rank must hold the same weights
            checksum = torch.stack([p.double().sum() for p in self.module.parameters()]).sum()
        sums = acc.gather(checksum.reshape(1).to(acc.device)).tolist()
        self.log(
            {
                "step": self.step,
                "split": "final",
                "world_size": acc.num_processes,
                "param_checksums": sums,
                "ranks_in_sync": len(set(sums)) == 1,
                **{
                    k: self.state[k]
                    for k in ("best_step", "best_loss", "stopped_early")
                    if k in self.state
                },
                **(word_table_record(self) if self.main else {}),
            }
        )
        model_dir = self.out / "model"
        if self.main:
            write_folder(model_dir, self.write_model)
        record_logs(acc, self.out)
        acc.wait_for_everyone()
        acc.end_training()
        tokens_per_s = (self.state["tokens"] - self.tokens0) / max(seconds, 1e-9)
        result = (self.out, model_dir, self.step, seconds, tokens_per_s, self.last_eval)
        best = (
            (self.state["best_step"], self.state["best_loss"])
            if "best_step" in self.state and self.tc.keep_best
            else None
        )
        early = "stopped_early" in self.state
        return TrainResult(*result, main_process=self.main, best=best, stopped_early=early)
