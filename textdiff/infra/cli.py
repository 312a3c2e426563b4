"""The ``textdiff`` command (also ``python -m textdiff``): ``train``, ``generate``, ``evaluate``,
``plot``; ``textdiff --version``. This module is the argument table and the error handling; what
each command does is :mod:`textdiff.infra.commands`.

Every refusal is one line on stderr and exit code 2, never a traceback: a bad flag (checked
like the config key it stands for), a bad config, data or model folder, a request larger than
the machine's memory, a path that cannot be written. A ``--out`` file is checked before any work
and written aside, then renamed into place. A training run stopped by Ctrl-C (or SIGTERM) saves a
checkpoint first and exits with 128 + the signal number (130).
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import signal
import sys

from .. import __version__
from ..errors import TextdiffError
from ..models.devices import reuse_freed_memory
from .commands import cmd_evaluate, cmd_generate, cmd_plot, cmd_train
from .config import MAX_EVAL_SAMPLES, MAX_SAMPLE_STEPS, MAX_SEED
from .e2e import MBR_UTILITIES

# libraries whose INFO lines are not the user's business (faiss: 8 lines about its loader)
_QUIET_LOGGERS = ("httpx", "urllib3", "filelock", "datasets", "accelerate", "faiss")

# what a path the user gave can run into on the file system: a one-line refusal, not a bug
_PATH_ERRNOS = {
    getattr(errno, name)
    for name in "EROFS EACCES EPERM ENOTDIR EISDIR ENAMETOOLONG ELOOP EEXIST ENOENT EFBIG".split()
}


class UsageError(TextdiffError, ValueError):
    """A command-line flag is missing, unknown or out of range."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .e2e import MissingDependencyError

    return (
        TextdiffError,
        MissingDependencyError,
        ValueError,
        FileNotFoundError,
        PermissionError,
    )


def _int(low: int, high: int | None = None):
    """An argparse type: an integer in ``[low, high]``."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return integer


def _number(low: float | None = None):
    """An argparse type: a finite number (≥ ``low``)."""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {value:g}")
        return value

    return number


class _Parser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one-line :class:`UsageError` refusals."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


SAMPLER_HELP = (
    "gaussian: ddpm | ddim | pc | dpm-solver | dpm-solver-sde; mask: ancestral | confidence | "
    "threshold; default: the model's"
)
OPTION_HELP = (
    "a sampler option, repeatable, e.g. --option threshold=0.8 --option length_first=true "
    "(README: samplers)"
)
DEVICE_HELP = (
    "where the network runs: auto (a GPU when there is one: CUDA, MPS, XPU; else the CPU), cpu, "
    "cuda, cuda:N, mps, xpu"
)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="textdiff", description="Text diffusion language models.")
    p.add_argument("--version", action="version", version=f"textdiff {__version__}")
    seed, steps = _int(0, MAX_SEED), _int(1, MAX_SAMPLE_STEPS)
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
    t.add_argument(
        "--samples", type=_int(0, MAX_EVAL_SAMPLES), default=8, help="sentences to print at the end"
    )
    t.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write figures/ at the end (needs matplotlib: pip install 'textdiff[plot]')",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="generate sentences from a trained model folder")
    g.add_argument(
        "model_dir", help="a model, run or checkpoint folder (e.g. runs/e2e/model), or a hub id"
    )
    g.add_argument("-n", "--num-samples", type=_int(1), default=8, help="sentences to generate")
    g.add_argument("--steps", type=steps, help="sampling steps (default: the model's)")
    g.add_argument("--sampler", help=SAMPLER_HELP)
    g.add_argument(
        "--option", action="append", metavar="KEY=VALUE", help=OPTION_HELP, dest="options"
    )
    g.add_argument("--seed", type=seed, default=0, help="the same seed gives the same sentences")
    g.add_argument("--batch-size", type=_int(1), default=64, help="sentences per network call")
    g.add_argument(
        "--clamp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="snap x̂_0 to the word table at every step (Gaussian)",
    )
    g.add_argument(
        "--temperature",
        type=_number(),
        help="< 1 sharpens: the posterior over words (Gaussian, prediction=posterior) or the "
        "token distribution (mask, AR); default: the model's",
    )
    g.add_argument("--top-p", type=_number(), help="nucleus sampling (mask, AR)")
    g.add_argument(
        "--template",
        help='JSON list of known text and span lengths, e.g. \'["The Eagle is a", 4, "."]\'',
    )
    g.add_argument("--condition", help="the MR to generate from (data-to-text models)")
    g.add_argument(
        "--guidance",
        type=_number(0),
        default=1.0,
        help="classifier-free guidance scale (default 1)",
    )
    g.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="auto: bf16 where the CPU/GPU has native bf16 matmuls, else fp32",
    )
    g.add_argument("--device", default="auto", help=DEVICE_HELP)
    g.add_argument("--out", help="write the sentences to this file")
    g.add_argument("--overwrite", action="store_true", help="replace the --out file")
    g.add_argument("--quiet", action="store_true", help="no progress bars or logs")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("evaluate", help="NLL bound, rounding accuracy and sample quality")
    e.add_argument("model_dir", help="a model, run or checkpoint folder, or a hub id")
    e.add_argument("--split", default="test", help="the data split to evaluate on (default test)")
    e.add_argument("--config", help="experiment YAML naming the data (default: the model's run)")
    e.add_argument("--out", help="write the JSON report here")
    e.add_argument("--overwrite", action="store_true", help="replace the --out file")
    e.add_argument("--limit", type=_int(1), help="evaluate at most this many sentences")
    e.add_argument(
        "--num-t", type=_int(1, 10_000), default=8, help="time samples per sentence for the bound"
    )
    e.add_argument("--samples", type=_int(1), default=256, help="sentences to generate and score")
    e.add_argument("--steps", type=steps, help="sampling steps (default: the model's)")
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
    e.add_argument("--bleu-mrs", type=_int(1), help="score only the first N test MRs")
    e.add_argument("--guidance", type=_number(0), default=1.0, help="guidance scale (data-to-text)")
    e.add_argument(
        "--mbr",
        type=_int(1),
        default=1,
        help="data-to-text: k candidates per test MR, one kept by minimum Bayes risk (default 1)",
    )
    e.add_argument(
        "--mbr-utility",
        choices=MBR_UTILITIES,
        default="bleu-slots",
        help="what --mbr keeps: consensus BLEU, fewest missed slots, or consensus − 0.1 × missed",
    )
    e.add_argument("--temperature", type=_number(), help="as for generate (default: the model's)")
    e.add_argument("--seed", type=seed, default=0, help="seed of the bound's noise and samples")
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument("--quiet", action="store_true", help="no progress bars or logs")
    e.set_defaults(func=cmd_evaluate)

    f = sub.add_parser("plot", help="training curves and accuracy by noise level, as PNGs")
    f.add_argument("run", help="a training run's output folder (holding metrics.jsonl)")
    f.add_argument("--out", help="write the PNGs into this folder (default: RUN/figures)")
    f.add_argument("--quiet", action="store_true", help="no logs")
    f.set_defaults(func=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        return _refuse(str(e))
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.func is not cmd_train:  # the trainer follows train.reuse_memory
        reuse_freed_memory()
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
            return _refuse(
                f"no space left on the disk{where}; free some space and run the command "
                "again (a training run goes on with --resume)"
            )
        if isinstance(e, OSError) and e.errno in _PATH_ERRNOS and e.filename:
            return _refuse(f"{e.strerror}: {e.filename}; check the path and its permissions")
        if isinstance(e, _user_errors() + (FileExistsError,)):
            return _refuse(str(e))
        raise


def _refuse(message: str) -> int:
    """Print ``message`` as one ``error:`` line on stderr; the exit code of a refusal."""
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return 2


def _quiet_libraries() -> None:
    """No progress bars from transformers / datasets (loading and saving weights, mapping)."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


if __name__ == "__main__":
    sys.exit(main())
