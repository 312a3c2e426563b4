"""textdiff side by side with Diffusion-LM's reference code, at Diffusion-LM's E2E size.

Both are built in one process at one size (:class:`Size`, x0 prediction, sqrt schedule, T = 2000,
dropout 0.1) and timed on random ids in alternating turns, medians, in fp32 and (where the CPU
has a bf16 unit) bf16 autocast: a training step (loss forward + backward + AdamW, neither side's
clipping, LR schedule, logging or EMA) and one DDPM sampling step for 64 sequences in each
library's own loop, no clamping. textdiff's network runs under ``torch.compile`` as with
``train.compile: true`` (``--eager`` for without). The reference is imported from
``../shared/tools/dlm-speed/`` (never copied, its files unedited), patched at run time for
today's libraries.

Usage: ``.venv/bin/python benchmarks/peer.py [--smoke] [--eager] [--json PATH] [--threads N]``,
or as the stage ``peer`` of ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from measure import ROOT, alternate, machine_info, matmul_peak, step_summary
from presets import PRESETS, PeerBudget
from report import VS_PEER, peer_targets, table
from stages import StageError

from textdiff.diffusion.loop import sample
from textdiff.diffusion.registry import build_process
from textdiff.diffusion.rounding import Rounder
from textdiff.infra.config import load_config
from textdiff.infra.optimization import Denoiser, make_optimizer
from textdiff.models.devices import autocast, bf16_supported, reuse_freed_memory
from textdiff.models.modeling import make_config, model_class, process_settings, token_ids

REFERENCE = ROOT.parent / "shared" / "tools" / "dlm-speed"  # Diffusion-LM's code, not the repo's
CONFIG = "configs/e2e-diffusion-lm.yaml"


@dataclass(frozen=True)
class Size:
    """Diffusion-LM's E2E setting (its README's training command and ``run_train.py``'s
    defaults) at 256 wide and 6 layers; 64 positions are the reference's image_size 8, squared."""

    hidden: int = 256
    layers: int = 6
    heads: int = 4
    embed_dim: int = 16
    vocab: int = 821
    seq_len: int = 64
    batch: int = 64
    sample_batch: int = 64
    chain: int = 2000
    sample_steps: int = 200  # textdiff's grid; a step costs the same on any grid
    seed: int = 0
    # textdiff's train.compile (torch.compile; compiled in the warm-up): on, as the configs for
    # long runs ship it (configs/lm.yaml)
    compile: bool = True


def _alias_moved_helpers() -> list[str]:
    """transformers 5 moved two helpers the reference's ``transformer_utils`` imports and dropped
    a third; only its head pruning, never called here, uses them."""
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    done = []
    for name in ("apply_chunking_to_forward", "prune_linear_layer"):
        if not hasattr(mu, name) and hasattr(pu, name):
            setattr(mu, name, getattr(pu, name))
            done.append(f"transformers.modeling_utils.{name}: alias of transformers.pytorch_utils")
    if not hasattr(mu, "find_pruneable_heads_and_indices"):
        mu.find_pruneable_heads_and_indices = None  # imported, never called
        done.append("transformers.modeling_utils.find_pruneable_heads_and_indices: placeholder")
    return done


def _local_bert_config(tm2, size: Size, attention: str) -> str:
    """The reference's model fetches ``bert-base-uncased``'s config from the hub; it gets
    ``BertConfig()`` (the same values) at the benchmark's size, ``eager`` attention by default
    (the BERT math of its time)."""
    from transformers import BertConfig

    def local_config(name: str, *args, **kwargs) -> BertConfig:
        if name != "bert-base-uncased":
            raise StageError(f"the reference asked for the config {name!r}")
        shape = dict(num_hidden_layers=size.layers, num_attention_heads=size.heads)
        cfg = BertConfig(hidden_size=size.hidden, intermediate_size=4 * size.hidden, **shape)
        cfg._attn_implementation = attention
        return cfg

    tm2.AutoConfig = type("LocalBertConfig", (), {"from_pretrained": staticmethod(local_config)})
    return f"transformer_model2.AutoConfig: local BertConfig, {attention} attention"


class _OneProcessDDP(torch.nn.Module):
    """The reference's e2e loss reaches its network as DDP's ``.module``: a stand-in."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def check_reference() -> Path:
    """The reference's package folder (a :class:`StageError` saying where, if it is missing)."""
    package = REFERENCE / "improved_diffusion"
    if not (package / "script_util.py").is_file():
        raise StageError(
            f"Diffusion-LM's reference code is missing: expected {package.resolve()} "
            "(../shared/tools/dlm-speed/improved_diffusion beside the checkout)"
        )
    return package


def import_reference(size: Size, attention: str = "eager") -> tuple[object, dict]:
    """The reference's ``improved_diffusion.script_util`` from :data:`REFERENCE` with the run-time
    shims applied, and a record of where it came from and what was patched."""
    package = check_reference()
    shims = _alias_moved_helpers()
    if str(REFERENCE) not in sys.path:
        sys.path.insert(0, str(REFERENCE))
    quiet, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # leave its folder untouched
    try:
        import improved_diffusion.transformer_model2 as tm2
        from improved_diffusion import script_util
    finally:
        sys.dont_write_bytecode = quiet
    if Path(tm2.__file__).resolve().parent != package.resolve():
        raise StageError(f"improved_diffusion was imported from {tm2.__file__}, not {package}")
    shims += [
        _local_bert_config(tm2, size, attention),
        "model.module: a forwarding wrapper in place of DistributedDataParallel",
        "TrainLoop (needs mpi4py, blobfile): its forward/backward/AdamW step repeated here",
    ]
    commit = REFERENCE / "COMMIT"
    return script_util, {
        "path": "../shared/tools/dlm-speed",
        "commit": commit.read_text(encoding="utf-8").strip() if commit.is_file() else None,
        "attention": attention,
        "shims": shims,
    }


class ReferenceSide:
    """Diffusion-LM's TransformerNetModel2 with its E2E_MSE training diffusion, its TrainLoop
    step (``forward_backward`` + ``optimize_normal``'s AdamW step) and its sampling loop on the
    ``sigma_small`` diffusion of its ``text_sample.py``."""

    def __init__(self, su, size: Size):
        from improved_diffusion.fp16_util import zero_grad
        from improved_diffusion.resample import UniformSampler

        side = round(size.seq_len**0.5)
        if side * side != size.seq_len:
            raise StageError("the reference's sequence length is image_size², a square")
        kw = dict(su.model_and_diffusion_defaults(), image_size=side, num_channels=128)
        kw.update(dropout=0.1, diffusion_steps=size.chain, noise_schedule="sqrt", use_kl=False)
        kw.update(learn_sigma=False, predict_xstart=True, model_arch="transformer")
        kw.update(in_channel=size.embed_dim, out_channel=size.embed_dim, training_mode="e2e")
        kw.update(vocab_size=size.vocab, config_name="bert-base-uncased", num_heads=size.heads)
        gaussian = inspect.signature(su.create_gaussian_diffusion).parameters
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its config and loss type
            torch.manual_seed(size.seed)
            self.model, self.diffusion = su.create_model_and_diffusion(**kw)
            kw.update(steps=size.chain, sigma_small=True)
            self.sampling = su.create_gaussian_diffusion(
                **{k: v for k, v in kw.items() if k in gaussian}
            )
        self.size, self.zero_grad = size, zero_grad
        self.params = list(self.model.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=0.0)  # as its TrainLoop
        self.times, self.ddp = UniformSampler(self.diffusion), _OneProcessDDP(self.model)
        self.unused = torch.zeros(size.batch, size.seq_len, size.embed_dim)  # its x_start slot

    def train_step(self, ids: torch.Tensor, precision: str) -> torch.Tensor:
        self.zero_grad(self.params)
        t, weights = self.times.sample(ids.shape[0], "cpu")
        with autocast("cpu", precision):
            kwargs = {"input_ids": ids}
            losses = self.diffusion.training_losses(self.ddp, self.unused, t, model_kwargs=kwargs)
            loss = (losses["loss"] * weights).mean()
        loss.backward()
        self.opt.step()
        return loss.detach()

    def sample_steps(self, k: int, precision: str, gen: torch.Generator) -> list[float]:
        """Seconds of steps 2 .. k + 1 from x_T (the first also sets the loop up)."""
        shape = (self.size.sample_batch, self.size.seq_len, self.size.embed_dim)
        noise = torch.randn(shape, generator=gen)
        kw = dict(noise=noise, clip_denoised=False, denoised_fn=None, model_kwargs={}, top_p=-1.0)
        loop, seconds = self.sampling.p_sample_loop_progressive(self.model, shape, **kw), []
        with autocast("cpu", precision):
            for _ in range(k + 1):
                start = time.perf_counter()
                next(loop)
                seconds.append(time.perf_counter() - start)
        loop.close()
        return seconds[1:]


class TextdiffSide:
    """textdiff as its trainer builds it (``Trainer._build_model``), its ``Trainer.train_step``
    and its sampling loop as ``TextDiffusionPipeline.generate`` runs it."""

    def __init__(self, size: Size):
        s, self.size = size, size
        overrides = {
            "model": dict(hidden_size=s.hidden, num_layers=s.layers, num_heads=s.heads),
            "process": dict(prediction="x0", schedule="sqrt", chain_length=s.chain),
        }
        overrides["model"].update(embed_dim=s.embed_dim, seq_len=s.seq_len, dropout=0.1)
        overrides["model"].update(rotary="false", self_conditioning="false")
        sets = [f"{part}.{k}={v}" for part, kv in overrides.items() for k, v in kv.items()]
        compiled = f"train.compile={str(s.compile).lower()}"
        cfg = load_config(ROOT / CONFIG, [*sets, f"train.batch_size={s.batch}", compiled])
        tc, ids = cfg.train, dict(pad_token_id=0, eos_token_id=1, mask_token_id=2)
        hf = make_config(cfg.network_config(s.vocab), cfg.process, cfg.sample, **ids)
        torch.manual_seed(s.seed)
        self.model = model_class(hf.model_type)(hf)
        self.process = build_process(process_settings(hf), token_ids(hf))
        self.opt = make_optimizer(self.model, tc)  # the trainer's AdamW (fused where possible)
        if tc.compile:
            self.model.compile(dynamic=False)
        self.denoiser = Denoiser(self.model, self.model)
        self.gen = torch.Generator().manual_seed(tc.seed * 1000)
        self.rounder = Rounder(self.model.word_table())

    def train_step(self, ids: torch.Tensor, precision: str) -> torch.Tensor:
        with autocast("cpu", precision):
            terms = self.process.loss(self.denoiser, ids, generator=self.gen)
            terms.loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return terms.loss.detach()

    def sample_steps(self, k: int, precision: str, gen: torch.Generator) -> list[float]:
        """Seconds of steps 2 .. k + 1, stamped as the loop pulls each entry of its plan."""
        stamps: list[float] = []

        def timed(plan):
            for i, entry in enumerate(plan):
                stamps.append(time.perf_counter())
                if i > k:
                    return
                yield entry

        shape = (self.size.sample_batch, self.size.seq_len)
        kw = dict(steps=self.size.sample_steps, sampler="ddpm", generator=gen, progress=timed)
        with torch.inference_mode(), autocast("cpu", precision):
            sample(self.process, self.model, shape, rounder=self.rounder, **kw)
        return np.diff(stamps)[1:].tolist()


def time_training(sides: dict, budget: PeerBudget, precision: str, size: Size) -> dict:
    """Seconds per training step of each side after warm-up, tokens/s, and their ratio."""
    shape = (size.batch, size.seq_len)
    gens = [torch.Generator().manual_seed(size.seed + i) for i in range(8)]
    pool = [torch.randint(0, size.vocab, shape, generator=g) for g in gens]
    count, last = itertools.count(), {}
    for name, side in sides.items():
        side.model.train()
        for _ in range(max(1, budget.warmup)):
            last[name] = float(side.train_step(pool[next(count) % 8], precision))
    bad = {k: v for k, v in last.items() if not np.isfinite(v)}
    if bad:
        raise StageError(f"{precision} training gave a non-finite loss after warm-up: {bad}")

    def turn(side, n: int) -> list[float]:
        out = []
        for ids in (pool[next(count) % 8] for _ in range(n)):
            start = time.perf_counter()
            side.train_step(ids, precision)
            out.append(time.perf_counter() - start)
        return out

    seconds = alternate(sides, budget.steps, budget.round, turn)
    out = {name: step_summary(s) for name, s in seconds.items()}
    for r in out.values():
        r["tokens_per_s"] = size.batch * size.seq_len / r["median_s"]
    out["ratio"] = out["textdiff"]["tokens_per_s"] / out["reference"]["tokens_per_s"]
    return {**out, "loss_after_warmup": last}


def time_sampling(sides: dict, budget: PeerBudget, precision: str, size: Size) -> dict:
    """Seconds per DDPM sampling step of each side after warm-up; textdiff's ÷ the reference's."""
    gen = torch.Generator().manual_seed(size.seed)
    for side in sides.values():
        side.model.eval()  # as the reference's text_sample.py and textdiff's pipeline
        side.sample_steps(budget.sample_warmup, precision, gen)

    def turn(side, n: int) -> list[float]:
        return side.sample_steps(n, precision, gen)

    seconds = alternate(sides, budget.sample_steps, budget.round, turn)
    out = {name: step_summary(s) for name, s in seconds.items()}
    return {**out, "ratio": out["textdiff"]["median_s"] / out["reference"]["median_s"]}


def linear_flops_per_token(model: torch.nn.Module, size: Size) -> float:
    """Training FLOPs a token position, counted alike for both sides: ``6 ×`` the weights of
    every ``nn.Linear`` (forward + backward) plus ``12 · layers · L · D`` for attention's
    scores and values; lookups and element-wise work are not counted."""
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6.0 * weights + 12.0 * size.layers * size.seq_len * size.hidden


def mfu(result: dict, sides: dict, size: Size, log=print) -> dict:
    """Each side's training FLOP/s ÷ the square-matmul peak of the same dtype measured now."""
    out = {}
    for precision, timing in result["train"].items():
        dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        peak = matmul_peak(dtype, (512, 1024, 2048))
        out[precision] = {"peak_flops": peak["flops"], "peak_size": peak["size"]}
        for name, side in sides.items():
            flops = linear_flops_per_token(side.model, size) * timing[name]["tokens_per_s"]
            out[precision][name] = {"flops": flops, "mfu": flops / peak["flops"]}
        log(
            f"MFU {precision}: textdiff {out[precision]['textdiff']['mfu']:.1%}, reference "
            f"{out[precision]['reference']['mfu']:.1%} of {peak['flops'] / 1e9:.0f} GFLOP/s"
        )
    return out


def measure_peer(budget: PeerBudget, log=print, compile: bool = True) -> dict:
    """Build both sides; time training, then sampling, in fp32 (and bf16 where native);
    ``compile``: textdiff's network under torch.compile."""
    size = Size(compile=compile)
    # textdiff's trainer keeps freed memory for reuse (train.reuse_memory); it applies to the
    # whole process, so both sides run on it (at this size it matters: a textdiff sampling step
    # took 42.5 ms with it, 81.4 ms without, in bf16 on a 2-core Sapphire Rapids)
    allocator = "glibc heap, freed memory reused" if reuse_freed_memory() else "system default"
    su, reference = import_reference(size)
    np.random.seed(size.seed)  # the reference draws its training times with np.random
    sides = {"reference": ReferenceSide(su, size), "textdiff": TextdiffSide(size)}
    # a tied tensor (the reference's read-out is its word table) is yielded once
    params = {name: sum(p.numel() for p in s.model.parameters()) for name, s in sides.items()}
    log(f"parameters: textdiff {params['textdiff']:,}, reference {params['reference']:,}")
    native = bf16_supported("cpu")
    result = {
        "size": asdict(size),
        "budget": asdict(budget),
        "reference": reference,
        "machine": {**machine_info(), "transformers": transformers.__version__},
        "params": {**params, "ratio": params["textdiff"] / params["reference"]},
        "bf16_skipped": None if native else "the CPU has no bf16 unit (AVX-512-BF16 or AMX)",
        "textdiff_fused_adamw": bool(sides["textdiff"].opt.defaults.get("fused")),
        "textdiff_compiled": compile,
        "allocator": allocator,
        "train": {},
        "sample": {},
    }
    if not native:
        log(f"bf16 skipped: {result['bf16_skipped']}")
    for precision in ("fp32", "bf16") if native else ("fp32",):
        r = result["train"][precision] = time_training(sides, budget, precision, size)
        log(f"train {precision}: tokens/s textdiff ÷ reference = {r['ratio']:.3f}")
    result["mfu"] = mfu(result, sides, size, log)
    for precision in result["train"]:
        r = result["sample"][precision] = time_sampling(sides, budget, precision, size)
        log(f"sample {precision}: s/step textdiff ÷ reference = {r['ratio']:.3f}")
    return result


def peer_stage(ctx) -> dict:
    """``benchmarks/run.py``'s stage ``peer``: :func:`measure_peer` at the preset's budget."""
    return measure_peer(ctx.preset.peer, log=lambda message: ctx.log("peer", message))


def peer_section(peer: dict) -> str:
    """textdiff against Diffusion-LM's code (the peer stage): heading, medians, ratios."""
    m, s, n = {**peer["machine"], **peer["reference"]}, peer["size"], peer["params"]
    compiled = "compiled (torch.compile)" if peer.get("textdiff_compiled") else "eager"
    rows = [
        [f"{label}, {precision}", *(f"{x[k][key]:{fmt}}" for k in ("textdiff", "reference"))]
        + [f"{x['ratio']:.3f}", x["textdiff"]["n"]]
        for part, key, fmt, label, _ in VS_PEER
        for precision, x in peer[part].items()
    ]
    parts = [
        f"### Against Diffusion-LM's code (commit {str(m['commit'])[:12]}; "
        f"{m['cpu_model']}, torch {m['torch']}, {m['torch_threads']} torch threads)",
        f"Width {s['hidden']}, {s['layers']} layers, {s['heads']} heads, d = {s['embed_dim']}, "
        f"V = {s['vocab']}, {s['seq_len']} positions, batch {s['batch']}; parameters: textdiff "
        f"{n['textdiff']:,}, Diffusion-LM {n['reference']:,}. Training step: loss forward + "
        f"backward + AdamW (textdiff's fused: {'yes' if peer['textdiff_fused_adamw'] else 'no'}; "
        "no clipping, LR schedule, logging or EMA on either side); sampling step: DDPM, no "
        f"clamping; medians, taking turns; the reference's attention: {m['attention']}; "
        f"textdiff's network {compiled}.",
        table(["measure", "textdiff", "Diffusion-LM", "textdiff ÷ Diffusion-LM", "steps"], rows),
    ]
    if peer.get("mfu"):
        parts.append(
            "Training at "
            + "; ".join(
                f"{p}: textdiff {x['textdiff']['mfu']:.1%}, Diffusion-LM "
                f"{x['reference']['mfu']:.1%} of the {x['peak_flops'] / 1e9:.0f} GFLOP/s "
                f"{p} matmul peak"
                for p, x in peer["mfu"].items()
            )
            + " measured in the same run (MFU; FLOPs: 6 × the nn.Linear weights + attention, "
            "counted alike for both sides)."
        )
    if peer.get("bf16_skipped"):
        parts.append(f"bf16 not measured: {peer['bf16_skipped']}.")
    if peer["budget"]["steps"] < 10:
        parts.append("Smoke budget: too few timed steps for these figures to mean anything.")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table and the targets, and write the JSON if asked."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="2 warm-up + 3 timed steps (it runs)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, one a core)")
    p.add_argument(
        "--eager", action="store_true", help="textdiff's network eager (default: compiled)"
    )
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] peer: {message}", flush=True)

    try:
        budget = PRESETS["smoke" if args.smoke else "full"].peer
        result = measure_peer(budget, log=log, compile=not args.eager)
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    result["targets"] = peer_targets(result)
    keys = ("target", "measured", "goal", "status", "note")
    rows = [[t[k] for k in keys] for t in result["targets"]]
    print(f"\n{peer_section(result)}\n\n{table([*keys[:-1], 'notes'], rows)}\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
