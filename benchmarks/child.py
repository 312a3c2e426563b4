"""One measured job of ``benchmarks/run.py``, in its own process, reporting its own peak memory.

The parent cannot tell its children's peaks apart (``RUSAGE_CHILDREN`` is the maximum over all
children that ever exited), so each job runs here and writes a JSON report on exit: the exit
code, wall-clock seconds and ``ru_maxrss`` of this process (its peak resident set, bytes).

Usage::

    python benchmarks/child.py REPORT.json train CONFIG [textdiff train options...]
    python benchmarks/child.py REPORT.json generate MODEL_DIR --samples N --steps S
        [--sampler NAME] [--batch-size B] [--seed K]

``train`` runs ``textdiff train`` (:func:`textdiff.infra.cli.main`) unchanged. ``generate`` loads a
model folder and calls :meth:`TextDiffusionPipeline.generate` once, without the trajectory; its
report also holds the peak before generation started (after loading), so the memory that
sampling adds is ``peak_rss_bytes − peak_rss_loaded_bytes``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes (``ru_maxrss``: KiB on Linux)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def run_generate(argv: list[str]) -> tuple[int, dict]:
    """Load a model and generate once; returns the exit code and the figures."""
    p = argparse.ArgumentParser(prog="child.py REPORT generate")
    p.add_argument("model_dir")
    p.add_argument("--samples", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--sampler")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from textdiff.models.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(args.model_dir)
    loaded = peak_rss_bytes()
    start = time.perf_counter()
    texts = pipe.generate(
        args.samples,
        num_steps=args.steps,
        sampler=args.sampler,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    return 0, {
        "generate_seconds": time.perf_counter() - start,
        "peak_rss_loaded_bytes": loaded,
        "samples": len(texts),
        "steps": args.steps,
        "batch_size": args.batch_size,
    }


def main() -> int:
    """Run the job named on the command line and write its report."""
    if len(sys.argv) < 3 or sys.argv[2] not in ("train", "generate"):
        print(__doc__, file=sys.stderr)
        return 2
    report_path, kind, rest = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    start = time.perf_counter()
    report: dict = {"kind": kind, "argv": rest}
    code = 1
    try:
        if kind == "train":
            from textdiff.infra.cli import main as cli_main

            code = cli_main(["train", *rest])
        else:
            code, figures = run_generate(rest)
            report.update(figures)
    finally:
        report.update(
            exit_code=code,
            seconds=time.perf_counter() - start,
            peak_rss_bytes=peak_rss_bytes(),
        )
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main())
