"""Benchmark: rounding query vectors to word-table rows, FAISS ``Rounder`` vs plain torch.

What is measured:
    Exact nearest-neighbour "rounding" of N query vectors to the rows of a word-embedding table
    ``E`` (V, d), as done by :class:`textdiff.diffusion.rounding.Rounder` (FAISS
    ``IndexFlatL2``) and by :func:`textdiff.diffusion.rounding.torch_nearest` (tiled matmul
    with a running argmin). The grid is V ∈ {1000, 8000, 30000, 50000} × d ∈ {16, 64, 128}.
    Table rows are drawn from N(0, 1); each query is a randomly chosen row plus Gaussian noise
    (std 0.3). N defaults to 16384
    (64 sentences × 64 tokens × 4).

How:
    Both methods run on the CPU with the same thread count (``torch.set_num_threads(2)``; FAISS
    uses OpenMP with its default, which is recorded and checked). For each cell:

    1. Build a ``Rounder`` (build time recorded) and warm up both methods once on the first
       ``sweep_queries`` queries.
    2. Torch tile sweep: time ``torch_nearest`` for every (query_tile, vocab_tile) pair of a
       small sweep on those ``sweep_queries`` queries (median of ``sweep_repeats``) and keep the
       fastest pair. Query tiles are independent, so the cost per query of a pair does not
       depend on how many queries it sees. Tile sizes larger than N or V are clipped, and
       duplicate pairs are dropped.
    3. Time ``Rounder.round`` and ``torch_nearest`` (best pair) on all N queries, alternating
       between the two ``repeats`` times so both see the same machine conditions, and keep each
       method's median.
    4. Agreement: the fraction of queries where the FAISS ids equal the torch ids (fp32 near
       ties may rarely differ).

    Timings use ``time.perf_counter``. Every timed run is kept in the JSON, together with the
    CPU time that other processes used while each cell ran (from ``/proc/stat`` minus this
    process's own CPU time), so cells disturbed by other work on the machine can be spotted; such
    cells are also listed at the end. The script prints a markdown table, writes all figures
    plus machine information to JSON (``benchmarks/results/rounding.json`` by default), reports
    whether the targets hold (torch/FAISS time ratio ≥ 1.0 in every cell and ≥ 2.0 in every
    d = 16 cell) and exits with status 0 whether they hold or not.

Usage:
    .venv/bin/python benchmarks/rounding.py [--quick] [--queries N] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from textdiff.diffusion.rounding import Rounder, torch_nearest

VOCABS = (1000, 8000, 30000, 50000)
DIMS = (16, 64, 128)
NOISE_STD = 0.3
THREADS = 2
DEFAULT_QUERIES = 64 * 64 * 4
DISTURBED_SHARE = 0.1  # share of the cores' time used by other processes that flags a cell
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "rounding.json"


@dataclass(frozen=True)
class Settings:
    """Run settings that depend on ``--quick``.

    Attributes:
        repeats: timed repeats on all N queries (the median is kept).
        sweep_repeats: timed repeats per tile pair during the torch sweep.
        sweep_queries: queries used for the torch sweep (clipped to N).
        query_tiles: ``query_tile`` values swept.
        vocab_tiles: ``vocab_tile`` values swept; ``None`` stands for the whole vocabulary.
    """

    repeats: int
    sweep_repeats: int
    sweep_queries: int
    query_tiles: tuple[int, ...]
    vocab_tiles: tuple[int | None, ...]


FULL = Settings(
    repeats=5,
    sweep_repeats=3,
    sweep_queries=4096,
    query_tiles=(256, 1024, 4096),
    vocab_tiles=(1024, 8192, None),
)
QUICK = Settings(
    repeats=2,
    sweep_repeats=1,
    sweep_queries=4096,
    query_tiles=(1024, 4096),
    vocab_tiles=(1024, 8192),
)


@dataclass
class CellResult:
    """All figures for one (V, d) cell.

    Attributes:
        vocab: vocabulary size V.
        dim: embedding dimension d.
        faiss_build_ms: time to build the ``Rounder`` (index construction and copy).
        faiss_ms: median ``Rounder.round`` time over all queries.
        faiss_runs_ms: every timed FAISS run.
        torch_ms: median ``torch_nearest`` time over all queries with the best tiles.
        torch_runs_ms: every timed torch run with the best tiles.
        best_query_tile: winning ``query_tile``.
        best_vocab_tile: winning ``vocab_tile`` (after clipping to V).
        sweep: per tile pair, the median time on the sweep queries.
        ratio: ``torch_ms / faiss_ms`` (above 1 means FAISS is faster).
        faiss_qps: queries per second for FAISS.
        torch_qps: queries per second for torch.
        agreement: fraction of queries where both methods return the same id.
        mismatches: number of queries where they differ.
        wall_s: wall-clock time of the whole cell.
        other_cpu_s: CPU seconds used by other processes during the cell (``nan`` if unknown).
    """

    vocab: int
    dim: int
    faiss_build_ms: float
    faiss_ms: float
    faiss_runs_ms: list[float]
    torch_ms: float
    torch_runs_ms: list[float]
    best_query_tile: int
    best_vocab_tile: int
    sweep: list[dict[str, float]] = field(default_factory=list)
    ratio: float = 0.0
    faiss_qps: float = 0.0
    torch_qps: float = 0.0
    agreement: float = 0.0
    mismatches: int = 0
    wall_s: float = 0.0
    other_cpu_s: float = 0.0


def time_runs(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Time ``fn`` several times.

    Args:
        fn: the call to time; it takes no arguments.
        repeats: number of timed calls.

    Returns:
        The wall-clock times in seconds, and the result of the last call.
    """
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return times, out


def make_data(vocab: int, dim: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random word table and noisy queries near its rows.

    Args:
        vocab: rows V of the table.
        dim: dimension d.
        n: number of queries.
        seed: seed for the generator, combined with V and d so every cell differs.

    Returns:
        The table (V, d) with N(0, 1) entries and the queries (n, d): randomly chosen rows plus
        Gaussian noise of std ``NOISE_STD``.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + vocab * 1009 + dim)
    table = torch.randn(vocab, dim, generator=gen)
    rows = torch.randint(0, vocab, (n,), generator=gen)
    queries = table[rows] + NOISE_STD * torch.randn(n, dim, generator=gen)
    return table, queries


def tile_pairs(settings: Settings, vocab: int, n: int) -> list[tuple[int, int]]:
    """The (query_tile, vocab_tile) pairs to sweep, clipped to N and V, without duplicates.

    Args:
        settings: the run settings.
        vocab: vocabulary size V.
        n: number of queries in the full run.

    Returns:
        The distinct pairs in sweep order.
    """
    pairs: list[tuple[int, int]] = []
    for qt in settings.query_tiles:
        for vt in settings.vocab_tiles:
            pair = (min(qt, n), min(vt or vocab, vocab))
            if pair not in pairs:
                pairs.append(pair)
    return pairs


def bench_cell(vocab: int, dim: int, n: int, settings: Settings, seed: int) -> CellResult:
    """Benchmark one (V, d) cell.

    Args:
        vocab: vocabulary size V.
        dim: embedding dimension d.
        n: number of queries.
        settings: the run settings.
        seed: data seed.

    Returns:
        The cell's figures.
    """
    cell_start, busy_start = time.perf_counter(), other_cpu_seconds()
    table, queries = make_data(vocab, dim, n, seed)
    sub = queries[: min(settings.sweep_queries, n)]

    start = time.perf_counter()
    rounder = Rounder(table)
    build_s = time.perf_counter() - start
    rounder.round(sub)  # warm-up
    torch_nearest(sub, table)  # warm-up
    sweep = []
    for qt, vt in tile_pairs(settings, vocab, n):
        runs, _ = time_runs(
            lambda qt=qt, vt=vt: torch_nearest(sub, table, query_tile=qt, vocab_tile=vt),
            settings.sweep_repeats,
        )
        sweep.append({"query_tile": qt, "vocab_tile": vt, "ms": 1e3 * statistics.median(runs)})
    best = min(sweep, key=lambda s: s["ms"])
    qt, vt = int(best["query_tile"]), int(best["vocab_tile"])
    faiss_runs, torch_runs = [], []
    for _ in range(settings.repeats):  # alternate, so both see the same machine conditions
        runs, faiss_ids = time_runs(lambda: rounder.round(queries), 1)
        faiss_runs += runs
        runs, torch_ids = time_runs(
            lambda: torch_nearest(queries, table, query_tile=qt, vocab_tile=vt), 1
        )
        torch_runs += runs

    faiss_s, torch_s = statistics.median(faiss_runs), statistics.median(torch_runs)
    same = faiss_ids == torch_ids
    return CellResult(
        vocab=vocab,
        dim=dim,
        faiss_build_ms=1e3 * build_s,
        faiss_ms=1e3 * faiss_s,
        faiss_runs_ms=[1e3 * t for t in faiss_runs],
        torch_ms=1e3 * torch_s,
        torch_runs_ms=[1e3 * t for t in torch_runs],
        best_query_tile=qt,
        best_vocab_tile=vt,
        sweep=sweep,
        ratio=torch_s / faiss_s,
        faiss_qps=n / faiss_s,
        torch_qps=n / torch_s,
        agreement=same.float().mean().item(),
        mismatches=int((~same).sum().item()),
        wall_s=time.perf_counter() - cell_start,
        other_cpu_s=other_cpu_seconds() - busy_start,
    )


def other_cpu_seconds() -> float:
    """Machine-wide busy CPU seconds minus this process's own CPU seconds, since boot.

    Differences of this value over an interval give the CPU time other processes used in it.

    Returns:
        The CPU seconds, or ``nan`` where ``/proc/stat`` is unavailable.
    """
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    # user nice system idle iowait irq softirq steal ...: idle and iowait are not busy time.
    busy = sum(fields[:8]) - fields[3] - fields[4]
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK") - (own.user + own.system)


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (or ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> dict[str, bool]:
    """Whether the CPU reports AVX2 and AVX-512F (from ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return {"avx2": "avx2" in flags, "avx512f": "avx512f" in flags}
    except OSError:
        pass
    return {}


def machine_info(n: int) -> dict[str, Any]:
    """Machine and library details recorded next to the figures.

    Args:
        n: number of queries.

    Returns:
        A JSON-serialisable dictionary.
    """
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "faiss_compile_options": faiss.get_compile_options().strip(),
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss_omp_threads": faiss.omp_get_max_threads(),
        "queries": n,
    }


def markdown_table(cells: list[CellResult]) -> str:
    """Format the results as a markdown table.

    Args:
        cells: one result per (V, d) cell.

    Returns:
        The table, one row per cell.
    """
    lines = [
        "| V | d | faiss ms | best torch ms | torch tiles (q×v) | torch/faiss | faiss q/s "
        "| torch q/s | agreement |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(
            f"| {c.vocab} | {c.dim} | {c.faiss_ms:.1f} | {c.torch_ms:.1f} "
            f"| {c.best_query_tile}×{c.best_vocab_tile} | {c.ratio:.2f} "
            f"| {c.faiss_qps:,.0f} | {c.torch_qps:,.0f} | {c.agreement:.5f} |"
        )
    return "\n".join(lines)


def check_targets(cells: list[CellResult]) -> dict[str, Any]:
    """Check the speed targets.

    Args:
        cells: one result per (V, d) cell.

    Returns:
        For each target, whether it holds and the cells that miss it.
    """
    below_1 = [(c.vocab, c.dim, round(c.ratio, 3)) for c in cells if c.ratio < 1.0]
    below_2 = [(c.vocab, c.dim, round(c.ratio, 3)) for c in cells if c.dim == 16 and c.ratio < 2.0]
    return {
        "ratio_ge_1_all_cells": {"holds": not below_1, "failing": below_1},
        "ratio_ge_2_d16_cells": {"holds": not below_2, "failing": below_2},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The parsed arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats and a smaller tile sweep (≤ ~1 min)"
    )
    parser.add_argument(
        "--queries", type=int, default=DEFAULT_QUERIES, help="number of queries N per cell"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    args = parser.parse_args(argv)
    if args.queries < 1:
        parser.error("--queries must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table and targets, and write the JSON.

    Args:
        argv: command-line arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The exit status (always 0).
    """
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    torch.set_num_threads(THREADS)
    info = machine_info(args.queries)
    print(
        f"CPU: {info['cpu_model']} | torch {info['torch']} ({info['torch_threads']} threads) "
        f"| faiss {info['faiss']} ({info['faiss_omp_threads']} OpenMP threads) "
        f"| N = {args.queries} | {'quick' if args.quick else 'full'} run",
        flush=True,
    )
    if info["faiss_omp_threads"] != info["torch_threads"]:
        print(
            f"warning: FAISS uses {info['faiss_omp_threads']} threads, "
            f"torch {info['torch_threads']}",
            file=sys.stderr,
        )

    start = time.perf_counter()
    cells = []
    for vocab in VOCABS:
        for dim in DIMS:
            cell = bench_cell(vocab, dim, args.queries, settings, args.seed)
            cells.append(cell)
            print(
                f"  V={vocab:>6} d={dim:>4}: faiss {cell.faiss_ms:8.1f} ms, torch "
                f"{cell.torch_ms:8.1f} ms (tiles {cell.best_query_tile}×{cell.best_vocab_tile}), "
                f"ratio {cell.ratio:.2f}",
                flush=True,
            )
    elapsed = time.perf_counter() - start

    print()
    print(markdown_table(cells))
    targets = check_targets(cells)
    print()
    disturbed = [c for c in cells if c.other_cpu_s > DISTURBED_SHARE * c.wall_s * THREADS]
    if disturbed:
        print(
            "note: other processes used over "
            f"{DISTURBED_SHARE:.0%} of the CPU time during: "
            + ", ".join(
                f"V={c.vocab} d={c.dim} ({c.other_cpu_s / (c.wall_s * THREADS):.0%})"
                for c in disturbed
            )
            + "; those figures are less reliable."
        )
    for name, label in (
        ("ratio_ge_1_all_cells", "torch/faiss ≥ 1.0 in every cell"),
        ("ratio_ge_2_d16_cells", "torch/faiss ≥ 2.0 in every d = 16 cell"),
    ):
        t = targets[name]
        failing = ", ".join(f"V={v} d={d} ({r:.2f})" for v, d, r in t["failing"])
        print(f"target {label}: {'HOLDS' if t['holds'] else 'FAILS: ' + failing}")

    result = {
        "benchmark": "rounding: textdiff Rounder (FAISS IndexFlatL2) vs torch_nearest",
        "machine": info,
        "settings": {
            **asdict(settings),
            "quick": args.quick,
            "queries": args.queries,
            "noise_std": NOISE_STD,
            "seed": args.seed,
            "vocabs": list(VOCABS),
            "dims": list(DIMS),
            "timer": "time.perf_counter, median of repeats after one warm-up",
        },
        "cells": [asdict(c) for c in cells],
        "targets": targets,
        "disturbed_cells": [[c.vocab, c.dim] for c in disturbed],
        "elapsed_s": elapsed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
