"""What each ``textdiff`` command does (:mod:`textdiff.infra.cli` holds the argument table and
turns refusals into one line): ``train``, ``generate``, ``evaluate``, ``plot``."""

from __future__ import annotations

import argparse
import json

from .resources import OutputFile


def _print_metrics(record: dict) -> None:
    for key in sorted(k for k in record if k not in ("samples", "sample_conditions")):
        value = record[key]
        print(f"  {key:<16} {value:.4f}" if isinstance(value, float) else f"  {key:<16} {value}")


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .trainer import BEST_MODEL, train

    overrides = list(args.set or [])
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    _quiet_transformers()
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if not result.main_process:  # one report, one figures folder, one set of samples
        return 0
    early = f" (stopped early: train.patience={cfg.train.patience})" if result.stopped_early else ""
    print(
        f"trained {result.steps} steps{early} in {result.seconds / 60:.1f} min "
        f"({result.tokens_per_second:,.0f} tokens/s); model saved to {result.model_dir}"
    )
    if result.best is not None:
        step, loss = result.best
        print(f"lowest validation loss {loss:.4f} at step {step}: {result.output_dir / BEST_MODEL}")
    if result.last_eval:
        print("validation:")
        _print_metrics(result.last_eval)
    if args.plots:
        _plot_after_training(result.output_dir)
    if args.samples < 1:
        return 0
    from ..models.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(result.model_dir, device="auto")
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
    except RecursionError:
        raise TemplateError(
            f"--template nests too deeply; a template is a flat list, e.g. '{EXAMPLE}'"
        ) from None


def cmd_generate(args: argparse.Namespace) -> int:
    from ..models.pipeline import TextDiffusionPipeline, check_generation_memory

    out = OutputFile(args.out, args.overwrite) if args.out else None
    _quiet_transformers()
    pipe = TextDiffusionPipeline.from_pretrained(
        args.model_dir, device=args.device, precision=args.precision
    )
    check_generation_memory(pipe, args.num_samples, args.batch_size, "-n")
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
        out.write("\n".join(texts) + "\n")
        print(f"wrote {len(texts)} sentences to {out.path}")
    else:
        print("\n".join(texts))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..models.pipeline import default_device
    from .evaluation import evaluate_model

    out = OutputFile(args.out, args.overwrite) if args.out else None
    _quiet_transformers()
    with default_device(args.device):  # every model the evaluation loads goes there
        report = _evaluate(evaluate_model, args)
    if out is not None:
        out.write(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out.path}")
    for key, value in report.get("summary", {}).items():
        print(f"  {key:<28} {value}")
    return 0


def _evaluate(evaluate_model, args: argparse.Namespace) -> dict:
    return evaluate_model(
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
        mbr=args.mbr,
        mbr_utility=args.mbr_utility,
        temperature=args.temperature,
    )


def cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_run

    for path in plot_run(args.run, args.out):
        print(f"wrote {path}")
    return 0


def _plot_after_training(run) -> None:
    """``figures/`` of a finished run; without matplotlib, a hint instead."""
    from .plot import PlotError, plot_run

    try:
        paths = plot_run(run)
    except PlotError as e:
        print(f"no figures: {e}")
        return
    print(f"figures: {', '.join(str(p) for p in paths)}")


def _quiet_transformers() -> None:
    """No progress bars from transformers for loading and saving (textdiff's models are
    small; they only interleave with textdiff's own bars)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()


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
