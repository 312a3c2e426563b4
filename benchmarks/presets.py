"""The run sizes of ``benchmarks/run.py`` (smoke / quick / full) and what each one sets.

``full`` trains with the E2E configs' own budgets and evaluates on the whole test split;
``quick`` trains a few dozen steps and evaluates on a few hundred sentences (figures far from the
targets, but every stage and output exercised in about ten minutes); ``smoke`` runs everything
on ``configs/tiny.yaml`` in a few minutes, for developing the benchmark itself. The peer stage
always runs at Diffusion-LM's E2E size; the presets set only its number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

MODES = ("gaussian", "mask", "ar")
LABELS = {"gaussian": "Gaussian", "mask": "mask", "ar": "AR"}


@dataclass(frozen=True)
class SweepLine:
    """Candidate settings of the sampling sweep: a mode, a sampler, its step counts, clamping
    on/off, a sampling temperature (``None``: the model's saved default) and the sampler's
    options (``sampler_options`` of ``generate``). An AR line's steps are ``(None,)``: its
    length sets the calls."""

    mode: str
    sampler: str
    steps: tuple[int | None, ...]
    clamp: bool | None = None
    temperature: float | None = None
    sampler_options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        clamp = " + clamp" if self.clamp else ""
        temp = "" if self.temperature is None else f" T={self.temperature:g}"
        options = describe_options(self.sampler_options)
        return f"{LABELS[self.mode]} {self.sampler}{clamp}{temp}" + (
            f" {options}" if options else ""
        )

    @property
    def options(self) -> dict:
        """The ``generate`` arguments this line sets besides the steps. A diffusion sampler's
        options are spelled out in full (``length_first`` off unless set), since ``generate``
        merges the given options into the saved ones when the sampler is the saved one."""
        chosen = {"clamp": self.clamp, "temperature": self.temperature}
        out = {"sampler": self.sampler, **{k: v for k, v in chosen.items() if v is not None}}
        if self.mode != "ar":
            out["sampler_options"] = {"length_first": False, **self.sampler_options}
        return out


def describe_options(options: dict | None) -> str:
    """A sampler's options as the tables show them: values first (``threshold > 0.9``,
    ``order 1``), then ``+ 4 remask`` and ``+ length``; defaults (``length_first`` off, no
    remasking) left out."""
    values, extras = [], []
    for key, value in (options or {}).items():
        if key == "length_first":
            extras += ["+ length"] if value else []
        elif key == "remask_steps":
            extras += [f"+ {value} remask"] if value else []
        elif key == "threshold":
            values.append(f"> {value:g}")
        elif key == "length_temperature":
            values += [f"length τ {value:g}"] if value != 1.0 else []
        else:
            values.append(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}")
    return " ".join(values + sorted(extras, reverse=True))


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
        acc_sentences: sentences for accuracy vs t.
        sweep_samples: sentences per point of the sweep (batches of 64), and real validation
            sentences beside them.
        sweep: the sweep's candidate settings (every sampler of both modes, and the AR model).
        call_budget: per diffusion mode, the most network calls (a batch of 64) a setting may
            make to be chosen as the default.
        reference_steps: the Gaussian target's yardstick: DDPM with this many steps at the
            chosen setting's temperature, generated on the test split beside it.
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
    acc_sentences: int
    sweep_samples: int
    sweep: tuple[SweepLine, ...]
    call_budget: dict[str, int]
    reference_steps: int
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
    "gaussian": ("configs/tiny.yaml", ("process.prediction=posterior",)),
    "mask": (
        "configs/tiny.yaml",
        ("process.noise=mask", "process.schedule=linear", "sample.sampler=ancestral"),
    ),
    "ar": ("configs/tiny.yaml", ("process.noise=autoregressive",)),
}
G, M, LENGTH = "gaussian", "mask", {"length_first": True}
SHARP_LENGTH = {tau: {**LENGTH, "length_temperature": tau} for tau in (0.5, 0.7)}
AR_POINTS = (SweepLine("ar", "greedy", (None,)), SweepLine("ar", "ancestral", (None,)))
VOCABS, DIMS = (1000, 8000, 30000, 50000), (16, 64, 128)

FULL = Preset(
    name="full",
    configs={m: (p, ()) for m, p in E2E.items()},
    train_steps=None,
    eval_limit=None,
    num_t=8,
    eval_samples=500,
    acc_sentences=1024,
    sweep_samples=128,
    sweep=(
        SweepLine(G, "ddpm", (200, 50), temperature=0.3),
        *(SweepLine(G, "ddpm", (200,), temperature=t) for t in (0.5, 1.0)),
        SweepLine(G, "ddpm", (24,), temperature=0.3, sampler_options=LENGTH),
        SweepLine(G, "ddim", (24,), temperature=0.3),
        SweepLine(G, "pc", (12,), temperature=0.3),
        *(
            SweepLine(G, "dpm-solver", (10, 15, 24), temperature=t, sampler_options=o)
            for t in (0.3, 0.5)
            for o in ({}, LENGTH)
        ),
        *(
            SweepLine(G, "dpm-solver", (24,), temperature=1.0, sampler_options=o)
            for o in ({}, LENGTH)
        ),
        SweepLine(G, "dpm-solver-sde", (24,), temperature=0.3, sampler_options=LENGTH),
        # the Gaussian model's length distribution at t = 1 runs ~9% long (E2E main job): sharper
        *(
            SweepLine(G, "dpm-solver", steps, temperature=0.3, sampler_options=o)
            for steps, o in (((15, 24), SHARP_LENGTH[0.7]), ((24,), SHARP_LENGTH[0.5]))
        ),
        SweepLine(M, "ancestral", (128, 16)),
        SweepLine(M, "ancestral", (15,), sampler_options=LENGTH),
        SweepLine(M, "confidence", (16,)),
        SweepLine(M, "confidence", (7, 15), sampler_options=LENGTH),
        SweepLine(M, "confidence", (11,), sampler_options={**LENGTH, "remask_steps": 4}),
        SweepLine(M, "threshold", (15,), sampler_options={**LENGTH, "threshold": 0.9}),
        *AR_POINTS,
    ),
    call_budget={"gaussian": 25, "mask": 16},
    reference_steps=200,
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
    acc_sentences=300,
    sweep_samples=64,
    sweep=(
        SweepLine(G, "ddpm", (50,), temperature=0.3),
        SweepLine(G, "ddpm", (24,), temperature=0.3, sampler_options=LENGTH),
        SweepLine(G, "ddim", (24,), temperature=0.3),
        SweepLine(G, "pc", (12,), temperature=0.3),
        *(
            SweepLine(G, "dpm-solver", (24,), temperature=0.3, sampler_options=o)
            for o in ({}, LENGTH)
        ),
        SweepLine(G, "dpm-solver", (15,), temperature=0.5, sampler_options=LENGTH),
        SweepLine(G, "dpm-solver-sde", (24,), temperature=0.3, sampler_options=LENGTH),
        SweepLine(M, "ancestral", (16,)),
        SweepLine(M, "ancestral", (15,), sampler_options=LENGTH),
        SweepLine(M, "confidence", (16,)),
        SweepLine(M, "confidence", (15,), sampler_options=LENGTH),
        SweepLine(M, "confidence", (11,), sampler_options={**LENGTH, "remask_steps": 4}),
        SweepLine(M, "threshold", (15,), sampler_options={**LENGTH, "threshold": 0.9}),
        *AR_POINTS,
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
    acc_sentences=40,
    sweep_samples=16,
    sweep=(
        SweepLine(G, "ddpm", (10,), temperature=0.5),
        SweepLine(G, "ddpm", (9,), temperature=0.3, sampler_options=LENGTH),
        SweepLine(G, "ddim", (10,), temperature=1.0),
        SweepLine(G, "ddim", (5,), clamp=True),
        SweepLine(G, "pc", (5,), temperature=0.3),
        *(
            SweepLine(G, "dpm-solver", (5, 10), temperature=0.3, sampler_options=o)
            for o in ({}, LENGTH)
        ),
        SweepLine(G, "dpm-solver", (400,), temperature=0.3),  # over the tiny chain: skipped
        SweepLine(G, "dpm-solver-sde", (10,), temperature=0.5, sampler_options=LENGTH),
        SweepLine(M, "ancestral", (16,)),
        SweepLine(M, "ancestral", (15,), sampler_options=LENGTH),
        SweepLine(M, "confidence", (16,)),
        SweepLine(M, "confidence", (7, 15), sampler_options=LENGTH),
        SweepLine(M, "confidence", (11,), sampler_options={**LENGTH, "remask_steps": 4}),
        SweepLine(M, "threshold", (15,), sampler_options={**LENGTH, "threshold": 0.9}),
        *AR_POINTS,
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
