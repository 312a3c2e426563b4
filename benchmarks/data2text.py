"""E2E data-to-text: train ``configs/e2e-data2text.yaml`` (or reuse the finished run) and score
it on the E2E test set — BLEU against all references and slot error rate, beside the TGen
baseline's BLEU of 65.93 — at one or more classifier-free guidance scales.

    .venv/bin/python benchmarks/data2text.py                      # the config's budget
    .venv/bin/python benchmarks/data2text.py --quick              # 60 steps, 100 MRs, 50 steps
    .venv/bin/python benchmarks/data2text.py --guidance 1 2 --mrs 630 --sample-steps 200

Writes ``benchmarks/results/data2text[-quick].json``: the settings, the training budget (steps,
pairs seen, epochs, seconds), and per guidance scale the BLEU (lowercased 13a, the E2E
challenge protocol, and cased), slot error rate (and that of the first human reference), the
seconds generation took and ten examples. Needs sacrebleu (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textdiff.infra.config import load_config  # noqa: E402
from textdiff.infra.e2e import TGEN_BLEU, evaluate_data2text  # noqa: E402
from textdiff.infra.trainer import train  # noqa: E402
from textdiff.models.pipeline import TextDiffusionPipeline  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "e2e-data2text.yaml"))
    p.add_argument("--work", help="run folder (default: benchmarks/work/data2text[-quick])")
    p.add_argument("--quick", action="store_true", help="60 training steps, 100 MRs, 50 steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--mrs", type=int, help="score the first N test MRs (default: all 630)")
    p.add_argument("--sample-steps", type=int, help="sampling steps (default: the config's)")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="retrain a run with other settings")
    p.add_argument("--out", help="results JSON (default: benchmarks/results/<name>.json)")
    args = p.parse_args(argv)

    name = "data2text-quick" if args.quick else "data2text"
    work = Path(args.work) if args.work else ROOT / "benchmarks" / "work" / name
    overrides = [f"train.output_dir={work}", *args.set]
    mrs, steps = args.mrs, args.sample_steps
    if args.quick:
        quick = ["train.max_steps=60", "train.warmup_steps=10", "train.eval_every=60"]
        overrides = [*quick, "train.save_every=60", *overrides]
        mrs, steps = mrs or 100, steps or 50
    cfg = load_config(args.config, overrides)
    t0 = time.perf_counter()
    result = train(cfg, resume=not args.overwrite, overwrite=args.overwrite, progress=True)
    tc = cfg.train
    pairs = result.steps * tc.batch_size * tc.grad_accum
    budget = {
        "steps": result.steps,
        "batch_size": tc.batch_size * tc.grad_accum,
        "pairs_seen": pairs,
        "seq_len": cfg.model.seq_len,
        "condition_len": cfg.process.condition_len,
        # training time of this invocation (near 0 when a finished run was reused)
        "train_seconds": result.seconds,
        "tokens_per_second": result.tokens_per_second,
        "seconds_with_data_loading": time.perf_counter() - t0,
    }
    pipe = TextDiffusionPipeline.from_pretrained(result.model_dir)
    zip_path = Path(cfg.data.data_files["test"]).parent / "e2e-dataset-v1.0.0.zip"
    scores = {}
    for s in args.guidance:
        report = evaluate_data2text(
            pipe,
            zip_path,
            limit=mrs,
            num_steps=steps,
            seed=args.seed,
            guidance_scale=s,
            progress=True,
        )
        scores[f"{s:g}"] = report
        ser, human = report["slot_error_rate"], report["reference_slot_error_rate"]
        print(
            f"guidance {s:g}: BLEU {report['bleu']:.2f} (TGen {TGEN_BLEU}), SER {ser:.3f} "
            f"(first references {human:.3f}), {report['test_mrs']} MRs, {report['seconds']:.0f} s"
        )
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "config": str(args.config),
        "overrides": overrides,
        "noise": cfg.process.noise,
        "budget": budget,
        "sample_steps": steps or cfg.sample.steps,
        "tgen_bleu": TGEN_BLEU,
        "by_guidance_scale": scores,
        "machine": {"python": platform.python_version(), "processor": platform.processor()},
    }
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
