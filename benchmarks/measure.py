"""Measuring helpers for ``benchmarks/run.py``: child processes, matmul peak, model FLOPs per
token, steady-state training throughput from ``metrics.jsonl``, two implementations timed in
alternating turns, machine information.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rounding import cpu_flags, cpu_model

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


@dataclass
class ChildResult:
    """How a child job ended.

    Attributes:
        exit_code: the process's exit status (negative: killed by that signal).
        wall_s: wall-clock seconds seen by the parent.
        report: the JSON the child wrote (``None`` if it was killed before writing it).
        timed_out: whether the parent killed it at its time cap (not when ``until`` held).
        log: the file holding the child's stdout and stderr.
    """

    exit_code: int
    wall_s: float
    report: dict[str, Any] | None
    timed_out: bool
    log: Path


def run_child(
    job: list[str],
    *,
    report: Path,
    log: Path,
    timeout: float | None = None,
    until: Callable[[], bool] | None = None,
) -> ChildResult:
    """Run ``benchmarks/child.py REPORT job...`` from the project root.

    Args:
        job: ``["train", CONFIG, ...]`` or ``["generate", MODEL_DIR, ...]`` (see child.py).
        report: where the child writes its JSON report (removed first).
        log: file receiving the child's stdout and stderr.
        timeout: seconds after which the child is killed (SIGKILL; its report is then absent).
        until: polled twice a second; once it returns true the child has done what was needed
            and is killed the same way (e.g. a speed run once its last step is logged).

    Returns:
        The child's exit status, timing and report.
    """
    report.unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    start, timed_out = time.perf_counter(), False
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [sys.executable, str(BENCH / "child.py"), str(report), *job],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        code = None
        try:
            while code is None:
                try:
                    code = proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    over = timeout is not None and time.perf_counter() - start > timeout
                    if over or (until is not None and until()):
                        proc.kill()
                        code, timed_out = proc.wait(), over
        finally:  # the benchmark stopped (Ctrl-C, SIGTERM, an error): never leave a child running
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    data = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else None
    return ChildResult(code, time.perf_counter() - start, data, timed_out, log)


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a text file (for error messages)."""
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...], seconds: float = 1.0) -> dict:
    """Best achieved FLOP/s of square ``n × n @ n × n`` matmuls (``2 n³`` FLOPs each).

    Each size is warmed up once, then timed repeatedly for about ``seconds`` (at least three
    times); the fastest run counts. The peak is the best over sizes.

    Args:
        dtype: ``torch.float32`` or ``torch.bfloat16``.
        sizes: the values of ``n`` tried.
        seconds: time budget per size.

    Returns:
        ``{"flops": best, "size": n of the best, "by_size": {n: FLOP/s}, "threads": ...}``.
    """
    gen = torch.Generator().manual_seed(0)
    by_size = {}
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(dtype)
        b = torch.randn(n, n, generator=gen).to(dtype)
        t = time.perf_counter()
        a @ b  # warm-up
        one = time.perf_counter() - t
        best, spent, runs = float("inf"), 0.0, 0
        while runs < 3 or spent < seconds - one:
            t = time.perf_counter()
            a @ b
            dt = time.perf_counter() - t
            best, spent, runs = min(best, dt), spent + dt, runs + 1
        by_size[str(n)] = 2 * n**3 / best
    size = max(by_size, key=by_size.get)
    return {
        "flops": by_size[size],
        "size": int(size),
        "by_size": by_size,
        "threads": torch.get_num_threads(),
    }


def flops_per_token(config, batch_size: int) -> tuple[float, str]:
    """Training FLOPs per token position (forward + backward = 3 × forward, plus a
    self-conditioned model's extra forward) of a saved model config, and how they were counted.

    The textdiff denoiser counts itself (``TextDiffusionModel.num_flops_per_token``: every
    matmul plus attention scores and values, ``4 L D`` a layer). A self-conditioned Gaussian
    model also runs a no-gradient forward for its own ``x̂_0`` on the even rows of each batch
    (``GaussianProcess._train_forward``), which ``num_flops_per_token`` leaves out; it is added
    here as ``⌈B / 2⌉ / B`` (0.5 for an even batch ``B``) forward passes a token. The GPT-2
    baseline is counted the same way: ``6 N + 12 n_layer L D`` with ``N`` the matmul weights
    (``4 D² + 2 D D_ff`` a layer, plus the ``D × V`` output head; the input and position tables
    are lookups, not matmuls) and ``L`` the full sequence length (attention runs over all
    positions).
    """
    if config.model_type == "gpt2":
        D, L, layers = config.n_embd, config.n_positions, config.n_layer
        ff = config.n_inner or 4 * D
        matmul_params = layers * (4 * D * D + 2 * D * ff) + D * config.vocab_size
        how = "6·N + 12·n_layer·L·D, N = matmul weights incl. the output head"
        return float(6 * matmul_params + 12 * layers * L * D), how
    from textdiff.models.modeling import TextDiffusionModel, process_settings

    with torch.device("meta"):
        model = TextDiffusionModel(config)
    flops = float(model.num_flops_per_token(training=True))
    how = "TextDiffusionModel.num_flops_per_token"
    if model.self_conditioning and process_settings(config).noise == "gaussian":
        share = -(-batch_size // 2) / batch_size  # the even rows' no-gradient forward
        flops += share * model.num_flops_per_token(training=False)
        how += f" + {share:g} × forward (self-conditioning's no-gradient x̂_0 on the even rows)"
    return flops, how


def matmul_products(config, batch_size: int) -> list[tuple[int, int, int, int]]:
    """Every matrix product of one training step of a saved model config, as ``(g, m, k, n)``:
    ``g`` independent ``(m × k) @ (k × n)`` products, ``2 g m k n`` FLOPs.

    The same products :func:`flops_per_token` counts, so their FLOPs sum to it times the
    step's ``batch_size × seq_len`` tokens: each weight matrix's forward product and its two
    backward ones (input and weight gradients), attention's scores and values and their
    backward products, and a self-conditioned Gaussian model's no-gradient forward on the
    even rows.
    """
    if config.model_type == "gpt2":
        D, L, layers, V = config.n_embd, config.n_positions, config.n_layer, config.vocab_size
        F, H, ins, outs, extra = config.n_inner or 4 * D, config.n_head, [], [(D, V)], 0
    else:
        from textdiff.models.modeling import process_settings

        cfg = config.model_config()
        D, L, layers, H = cfg.hidden_size, cfg.seq_len, cfg.num_layers, cfg.num_heads
        F = int(cfg.mlp_ratio * D)
        ins = [(cfg.embed_dim * (2 if cfg.self_conditioning else 1) + cfg.pos_dim, D)]
        outs = [(D, cfg.embed_dim if cfg.output == "embedding" else cfg.vocab_size)]
        gaussian = process_settings(config).noise == "gaussian"
        extra = -(-batch_size // 2) if cfg.self_conditioning and gaussian else 0
    weights = ins + layers * [(D, 3 * D), (D, D), (D, F), (F, D)] + outs

    def forward(rows: int) -> list[tuple[int, int, int, int]]:
        heads, dh = rows * H, D // H
        attention = [(heads, L, dh, L), (heads, L, L, dh)]  # q @ kᵀ, softmax(·) @ v
        return [(1, rows * L, k, n) for k, n in weights] + layers * attention

    products = []
    for g, m, k, n in forward(batch_size):  # each product, then its two gradients
        products += [(g, m, k, n), (g, m, n, k), (g, k, m, n)]
    return products + (forward(extra) if extra else [])


def matmul_ceiling(
    dtype: torch.dtype, products: list[tuple[int, int, int, int]], seconds: float = 1.0
) -> dict:
    """FLOP/s of ``products`` (:func:`matmul_products`) alone, run back to back in ``dtype`` on
    contiguous random operands: what a step that did nothing but its matmuls would reach. The
    fastest of repeated runs (about ``seconds`` in all, at least three) counts."""
    gen = torch.Generator().manual_seed(0)

    def operand(*shape: int) -> torch.Tensor:
        return torch.randn(*(shape[1:] if shape[0] == 1 else shape), generator=gen).to(dtype)

    pairs = [(operand(g, m, k), operand(g, k, n)) for g, m, k, n in products]
    flops = sum(2 * g * m * k * n for g, m, k, n in products)

    def run() -> float:
        t = time.perf_counter()
        for a, b in pairs:
            torch.matmul(a, b)  # mm for a weight's products, bmm for attention's
        return time.perf_counter() - t

    one = run()  # warm-up
    best, spent, runs = float("inf"), 0.0, 0
    while runs < 3 or spent < seconds - one:
        dt = run()
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return {"flops": flops / best, "step_matmul_s": best, "products": len(products)}


def alternate(
    sides: dict[str, Any], total: int, turn_size: int, turn: Callable[[Any, int], list[float]]
) -> dict[str, list[float]]:
    """Step times of each of two implementations, taking turns: ``turn(side, n)`` runs ``n``
    steps of ``side`` and returns their seconds; turns of ``turn_size`` steps (the last one
    shorter) until each has ``total``, the first side first in even rounds, the other in odd
    ones, so a change of the machine's load over time falls on both alike."""
    names = list(sides)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    turns = [turn_size] * (total // turn_size) + ([total % turn_size] if total % turn_size else [])
    for r, n in enumerate(turns):
        for name in names if r % 2 == 0 else names[::-1]:
            seconds[name] += turn(sides[name], n)
    return seconds


def step_summary(seconds: list[float]) -> dict:
    """Median, quartiles, minimum and count of step times."""
    q = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else [seconds[0]] * 3
    return {
        "median_s": statistics.median(seconds),
        "iqr_s": [q[0], q[2]],
        "min_s": min(seconds),
        "n": len(seconds),
    }


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a line cut short by a kill is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def steady_tokens_per_s(records: list[dict], tokens_per_step: int) -> dict:
    """Training throughput between the first and the last logged step, leaving out the first
    step (warm-up: allocation, first-call dispatch).

    The trainer logs ``tokens_per_s`` as tokens since the start over seconds since the start,
    so each record gives its elapsed time ``step · tokens_per_step / tokens_per_s``; the rate
    between two records is their token difference over their time difference.

    Args:
        records: the run's ``metrics.jsonl`` records (``log_every`` = 1 gives every step).
        tokens_per_step: sequences per step × sequence length.

    Returns:
        ``{"tokens_per_s", "steps_timed", "seconds_timed"}``; with a single logged step the
        warm-up step itself is the figure (``steps_timed`` = 1, ``includes_warmup`` true).
    """
    train = [r for r in records if r.get("split") == "train" and r.get("tokens_per_s")]
    if not train:
        return {"tokens_per_s": None, "steps_timed": 0, "seconds_timed": 0.0}
    elapsed = [(r["step"], r["step"] * tokens_per_step / r["tokens_per_s"]) for r in train]
    if len(elapsed) == 1:
        step, sec = elapsed[0]
        return {
            "tokens_per_s": step * tokens_per_step / sec,
            "steps_timed": step,
            "seconds_timed": sec,
            "includes_warmup": True,
        }
    (s0, e0), (s1, e1) = elapsed[0], elapsed[-1]
    return {
        "tokens_per_s": (s1 - s0) * tokens_per_step / (e1 - e0),
        "steps_timed": s1 - s0,
        "seconds_timed": e1 - e0,
        "includes_warmup": False,
    }


def others_cpu_seconds() -> float:
    """Machine-wide busy CPU seconds since boot minus those of this process and its waited-for
    children; differences over an interval give the CPU time other processes used in it
    (``nan`` where ``/proc/stat`` is unavailable)."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
    own = os.times()
    mine = own.user + own.system + own.children_user + own.children_system
    return busy / os.sysconf("SC_CLK_TCK") - mine


class OtherLoad:
    """Context manager: ``share`` is the fraction of the machine's CPU time that other processes
    used while the block ran (0: the benchmark had the machine to itself)."""

    def __enter__(self) -> OtherLoad:
        self.start, self.cpu, self.share = time.perf_counter(), others_cpu_seconds(), None
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.start
        self.share = (others_cpu_seconds() - self.cpu) / max(wall * (os.cpu_count() or 1), 1e-9)


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able settings and files (a file counts by path, size and mtime)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            stat = part.stat() if part.exists() else None
            part = [str(part), stat.st_size if stat else None, stat.st_mtime_ns if stat else None]
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def machine_info() -> dict[str, Any]:
    """CPU model and flags, cores, library versions and whether bf16 matmuls are native."""
    from textdiff.models.devices import bf16_supported

    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "native_bf16": bf16_supported("cpu"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
