"""The run sizes of ``benchmarks/run.py`` (smoke / quick / full) and what each one sets.

``full`` trains with the E2E configs' own budgets and evaluates on the whole test split;
``quick`` trains a few dozen steps and evaluates on a few hundred sentences (figures far from the
targets, but every stage and output exercised in about ten minutes); ``smoke`` runs everything
on ``configs/tiny.yaml`` in a few minutes, for developing the benchmark itself. The peer stage
always runs at Diffusion-LM's E2E size; the presets set only its number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MODES = ("gaussian", "mask", "ar")
LABELS = {"gaussian": "Gaussian", "mask": "mask", "ar": "AR"}


@dataclass(frozen=True)
class SweepLine:
    """One curve of the sampling-steps sweep: a mode, a sampler, clamping on/off, step counts,
    and a sampling temperature (``None``: the model's saved default)."""

    mode: str
    sampler: str
    steps: tuple[int, ...]
    clamp: bool | None = None
    temperature: float | None = None

    @property
    def label(self) -> str:
        clamp = " + clamp" if self.clamp else ""
        temp = "" if self.temperature is None else f" T={self.temperature:g}"
        return f"{LABELS[self.mode]} {self.sampler}{clamp}{temp}"

    @property
    def options(self) -> dict:
        """The ``generate`` arguments this line sets besides the steps."""
        chosen = {"clamp": self.clamp, "temperature": self.temperature}
        return {"sampler": self.sampler, **{k: v for k, v in chosen.items() if v is not None}}


@dataclass(frozen=True)
class PeerBudget:
    """Steps of the side-by-side stage (``benchmarks/peer.py``), per implementation and precision.

    Attributes:
        warmup: training steps before timing.
        steps: timed training steps.
        round: steps of one implementation before the other takes its turn.
        sample_warmup: sampling steps before timing.
        sample_steps: timed sampling steps.
    """

    warmup: int = 5
    steps: int = 30
    round: int = 5
    sample_warmup: int = 3
    sample_steps: int = 20


@dataclass(frozen=True)
class Preset:
    """Everything a run size (smoke / quick / full) sets.

    Attributes:
        name: ``smoke``, ``quick`` or ``full``; names the work folder and results file.
        configs: per mode, the YAML (relative to the project root) and its overrides.
        train_steps: ``train.max_steps`` override (``None``: the configs' own budgets).
        eval_limit: test sentences for the bound (``None``: all).
        num_t: time samples per sentence for the bound.
        eval_samples: sentences generated and scored by the evaluation.
        eval_steps: sampling steps of the evaluation per mode (absent: the model's default).
        acc_sentences: sentences for accuracy vs t.
        sweep_samples: sentences per point of the sweep (one batch when ≤ 64).
        sweep: the sweep's curves.
        speed_steps: timed training steps after one warm-up step, per mode and precision (bf16
            only on CPUs with a bf16 unit; elsewhere autocast would emulate it).
        peak_sizes: per dtype, the square matmul sizes tried for the peak.
        rounding_quick: use ``benchmarks/rounding.py``'s quick settings.
        rounding_grid: vocabulary sizes and dimensions of the rounding benchmark.
        rounding_queries: queries per rounding cell.
        memory_steps: the two step counts of the generation-memory runs.
        memory_samples: sentences (one batch) of each generation-memory run.
        memory_modes: modes whose generation memory is measured.
        peer: steps of the side-by-side stage against Diffusion-LM's code (``peer.py``).
    """

    name: str
    configs: dict[str, tuple[str, tuple[str, ...]]]
    train_steps: int | None
    eval_limit: int | None
    num_t: int
    eval_samples: int
    eval_steps: dict[str, int]
    acc_sentences: int
    sweep_samples: int
    sweep: tuple[SweepLine, ...]
    speed_steps: int
    peak_sizes: dict[str, tuple[int, ...]]
    rounding_quick: bool
    rounding_grid: tuple[tuple[int, ...], tuple[int, ...]]
    rounding_queries: int
    memory_steps: tuple[int, int]
    memory_samples: int
    memory_modes: tuple[str, ...] = ("gaussian",)
    peer: PeerBudget = PeerBudget()


E2E = {"gaussian": "configs/e2e.yaml", "mask": "configs/e2e-mask.yaml", "ar": "configs/e2e-ar.yaml"}
TINY = {
    "gaussian": ("configs/tiny.yaml", ()),
    "mask": (
        "configs/tiny.yaml",
        ("process.noise=mask", "process.schedule=linear", "sample.sampler=ancestral"),
    ),
    "ar": ("configs/tiny.yaml", ("process.noise=autoregressive",)),
}
VOCABS, DIMS = (1000, 8000, 30000, 50000), (16, 64, 128)

FULL = Preset(
    name="full",
    configs={m: (p, ()) for m, p in E2E.items()},
    train_steps=None,
    eval_limit=None,
    num_t=8,
    eval_samples=500,
    eval_steps={},
    acc_sentences=1024,
    sweep_samples=64,
    sweep=(
        SweepLine("gaussian", "ddpm", (10, 25, 50, 100, 200)),
        SweepLine("gaussian", "ddpm", (50, 200), temperature=1.0),
        SweepLine("gaussian", "ddpm", (200,), temperature=0.7),
        SweepLine("gaussian", "ddpm", (200,), temperature=0.3),
        SweepLine("gaussian", "ddim", (10, 25, 50, 100), clamp=False),
        SweepLine("gaussian", "ddim", (10, 25, 50), clamp=True),
        SweepLine("mask", "ancestral", (16, 32, 64, 128)),
    ),
    speed_steps=10,
    peak_sizes={"fp32": (512, 1024, 2048), "bf16": (512, 1024, 2048)},
    rounding_quick=False,
    rounding_grid=(VOCABS, DIMS),
    rounding_queries=64 * 64 * 4,
    memory_steps=(50, 400),
    memory_samples=16,
    memory_modes=("gaussian", "mask"),
)
QUICK = replace(
    FULL,
    name="quick",
    train_steps=40,
    eval_limit=300,
    num_t=4,
    eval_samples=64,
    eval_steps={"gaussian": 50, "mask": 32},
    acc_sentences=300,
    sweep=(
        SweepLine("gaussian", "ddpm", (10, 50)),
        SweepLine("gaussian", "ddim", (10,), clamp=False),
        SweepLine("mask", "ancestral", (16, 64)),
    ),
    speed_steps=4,
    peak_sizes={"fp32": (512, 1024, 2048), "bf16": (512, 1024, 2048)},
    rounding_quick=True,
    rounding_grid=(VOCABS[:3], DIMS),
    memory_steps=(25, 200),
    memory_modes=("gaussian",),
    peer=PeerBudget(warmup=3, steps=10, sample_warmup=2, sample_steps=10),
)
SMOKE = replace(
    QUICK,
    name="smoke",
    configs=TINY,
    train_steps=20,
    eval_limit=40,
    num_t=2,
    eval_samples=8,
    eval_steps={"gaussian": 10, "mask": 8},
    acc_sentences=40,
    sweep_samples=8,
    sweep=(
        SweepLine("gaussian", "ddpm", (5, 10)),
        SweepLine("gaussian", "ddim", (5, 10), clamp=False),
        SweepLine("gaussian", "ddim", (5,), clamp=True),
        SweepLine("mask", "ancestral", (4, 8)),
    ),
    speed_steps=3,
    peak_sizes={"fp32": (256, 512), "bf16": (256, 512)},
    rounding_grid=((1000,), (16,)),
    rounding_queries=2048,
    memory_steps=(10, 80),
    memory_samples=8,
    peer=PeerBudget(warmup=2, steps=3, round=3, sample_warmup=2, sample_steps=3),
)
PRESETS = {"smoke": SMOKE, "quick": QUICK, "full": FULL}
