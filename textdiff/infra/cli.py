"""The ``textdiff`` command (also ``python -m textdiff``): ``train``, ``generate``, ``evaluate``.

Every refusal is one line on stderr and exit code 2, never a traceback. A training run stopped
by Ctrl-C (or SIGTERM) saves a checkpoint first and exits with 128 + the signal number (130).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
from pathlib import Path


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..errors import TextdiffError
    from .e2e import MissingDependencyError

    return (
        TextdiffError,
        MissingDependencyError,
        ValueError,
        FileNotFoundError,
        PermissionError,
    )


def _print_metrics(record: dict) -> None:
    for key in sorted(k for k in record if k not in ("samples", "sample_conditions")):
        value = record[key]
        print(f"  {key:<16} {value:.4f}" if isinstance(value, float) else f"  {key:<16} {value}")


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .trainer import train

    overrides = list(args.set or [])
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    print(
        f"trained {result.steps} steps in {result.seconds / 60:.1f} min "
        f"({result.tokens_per_second:,.0f} tokens/s); model saved to {result.model_dir}"
    )
    if result.last_eval:
        print("validation:")
        _print_metrics(result.last_eval)
    if args.samples < 1:
        return 0
    from ..models.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(result.model_dir)
    conditions = result.last_eval.get("sample_conditions")  # data-to-text: validation MRs
    n = len(conditions) if conditions else args.samples
    texts = pipe.generate(n, seed=cfg.train.seed, condition=conditions, progress=not args.quiet)
    print("samples:")
    for i, text in enumerate(texts):
        print(f"  {conditions[i]}  →  {text}" if conditions else f"  {text}")
    return 0


def _template(text: str | None) -> list | None:
    """``--template`` JSON, e.g. '["The Eagle is a", 4, "."]'; checked by the pipeline."""
    if text is None:
        return None
    from ..models.template import EXAMPLE, TemplateError

    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TemplateError(
            f"--template is not valid JSON ({e.msg}); write a JSON list, e.g. '{EXAMPLE}'"
        ) from None


def cmd_generate(args: argparse.Namespace) -> int:
    from ..models.pipeline import TextDiffusionPipeline

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    pipe = TextDiffusionPipeline.from_pretrained(args.model_dir, precision=args.precision)
    texts = pipe.generate(
        args.num_samples,
        num_steps=args.steps,
        sampler=args.sampler,
        seed=args.seed,
        batch_size=args.batch_size,
        clamp=args.clamp,
        temperature=args.temperature,
        top_p=args.top_p,
        sampler_options=_options(args.options),
        progress=not args.quiet,
        template=_template(args.template),
        condition=args.condition,
        guidance_scale=args.guidance,
    )
    if out is not None:
        out.write_text("\n".join(texts) + "\n", encoding="utf-8")
        print(f"wrote {len(texts)} sentences to {out}")
    else:
        print("\n".join(texts))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_model

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    report = evaluate_model(
        args.model_dir,
        split=args.split,
        data_config=args.config,
        max_sentences=args.limit,
        num_t=args.num_t,
        num_samples=args.samples,
        steps=args.steps,
        sampler=args.sampler,
        sampler_options=_options(args.options),
        seed=args.seed,
        reference_model=args.reference,
        progress=not args.quiet,
        bleu=args.bleu,
        references=args.references,
        bleu_mrs=args.bleu_mrs,
        guidance_scale=args.guidance,
    )
    text = json.dumps(report, indent=2)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {out}")
    for key, value in report.get("summary", {}).items():
        print(f"  {key:<28} {value}")
    return 0


SAMPLER_HELP = (
    "gaussian: ddpm | ddim | pc | dpm-solver | dpm-solver-sde; mask: ancestral | confidence | "
    "threshold; default: the model's"
)
OPTION_HELP = (
    "a sampler option, repeatable, e.g. --option threshold=0.8 --option length_first=true "
    "(README: samplers)"
)


def _options(pairs: list[str] | None) -> dict | None:
    """``--option KEY=VALUE`` pairs as a dict, values read as YAML (numbers, true/false)."""
    if not pairs:
        return None
    import yaml

    from ..schema import ConfigError

    options = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {pair!r} must look like KEY=VALUE, e.g. threshold=0.8")
        options[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="textdiff", description="Text diffusion language models.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", help="YAML experiment config, e.g. configs/e2e.yaml")
    t.add_argument("--output-dir", help="where the run goes (overrides train.output_dir)")
    t.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.max_steps=100",
    )
    t.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    t.add_argument("--overwrite", action="store_true", help="replace the run in the output folder")
    t.add_argument("--samples", type=int, default=8, help="sentences to print at the end")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="generate sentences from a trained model folder")
    g.add_argument("model_dir", help="a model folder (e.g. runs/e2e/model)")
    g.add_argument("-n", "--num-samples", type=int, default=8, help="sentences to generate")
    g.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    g.add_argument("--sampler", help=SAMPLER_HELP)
    g.add_argument(
        "--option", action="append", metavar="KEY=VALUE", help=OPTION_HELP, dest="options"
    )
    g.add_argument("--seed", type=int, default=0, help="the same seed gives the same sentences")
    g.add_argument("--batch-size", type=int, default=64, help="sentences per network call")
    g.add_argument(
        "--clamp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="snap x̂_0 to the word table at every step (Gaussian)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        help="< 1 sharpens: the posterior over words (Gaussian, prediction=posterior) or the "
        "token distribution (mask, AR); default: the model's",
    )
    g.add_argument("--top-p", type=float, help="nucleus sampling (mask, AR)")
    g.add_argument(
        "--template",
        help='JSON list of known text and span lengths, e.g. \'["The Eagle is a", 4, "."]\'',
    )
    g.add_argument("--condition", help="the MR to generate from (data-to-text models)")
    g.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free guidance scale (default 1)"
    )
    g.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="auto: bf16 where the CPU/GPU has native bf16 matmuls, else fp32",
    )
    g.add_argument("--out", help="write the sentences to this file")
    g.add_argument("--overwrite", action="store_true", help="replace the --out file")
    g.add_argument("--quiet", action="store_true", help="no progress bars or logs")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("evaluate", help="NLL bound, rounding accuracy and sample quality")
    e.add_argument("model_dir")
    e.add_argument("--split", default="test")
    e.add_argument("--config", help="experiment YAML naming the data (default: the model's run)")
    e.add_argument("--out", help="write the JSON report here")
    e.add_argument("--overwrite", action="store_true")
    e.add_argument("--limit", type=int, help="evaluate at most this many sentences")
    e.add_argument("--num-t", type=int, default=8, help="time samples per sentence for the bound")
    e.add_argument("--samples", type=int, default=256, help="sentences to generate and score")
    e.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    e.add_argument("--sampler", help=SAMPLER_HELP)
    e.add_argument(
        "--option", action="append", metavar="KEY=VALUE", help=OPTION_HELP, dest="options"
    )
    e.add_argument("--reference", help="autoregressive model folder that scores the samples")
    e.add_argument(
        "--bleu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="E2E test-set BLEU and slot error rate (default: for data-to-text models)",
    )
    e.add_argument("--references", help="E2E release zip (default: beside the data files)")
    e.add_argument("--bleu-mrs", type=int, help="score only the first N test MRs")
    e.add_argument("--guidance", type=float, default=1.0, help="guidance scale (data-to-text)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for name in ("httpx", "urllib3", "filelock", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.quiet:
        _quiet_libraries()
    try:
        return args.func(args)
    except KeyboardInterrupt as e:  # a TrainingInterrupted says where its checkpoint is
        print(str(e) or "interrupted", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)
    except Exception as e:  # one line for the user's mistakes, a traceback for our bugs
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" while writing {e.filename}" if e.filename else ""
            print(
                f"error: no space left on the disk{where}; free some space and run the command "
                "again (a training run goes on with --resume)",
                file=sys.stderr,
            )
            return 2
        if isinstance(e, _user_errors() + (FileExistsError,)):
            print("error: " + " ".join(str(e).split()), file=sys.stderr)
            return 2
        raise


def _quiet_libraries() -> None:
    """No progress bars from transformers / datasets (loading and saving weights, mapping)."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


if __name__ == "__main__":
    sys.exit(main())
