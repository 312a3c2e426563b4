"""Reliability: exact resume after a crash, safe loading, one-line refusals of bad input.

Exactness is checked against an uninterrupted run of the same config: the final weights (EMA and
raw) with ``torch.equal`` and every ``metrics.jsonl`` record except the wall-clock
``tokens_per_s``.
"""

import errno
import hashlib
import json
import logging
import os
import pickle
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import textdiff.infra.trainer as training
from textdiff.infra.batching import tokenize_split
from textdiff.infra.checkpoint import (
    CheckpointError,
    CheckpointManager,
    StopSignals,
    TrainingError,
    TrainingInterrupted,
    rng_states,
)
from textdiff.infra.cli import main
from textdiff.infra.config import ConfigError, load_config
from textdiff.infra.data import DataError, load_text_splits
from textdiff.infra.trainer import train
from textdiff.models.pipeline import ModelFolderError, TextDiffusionPipeline
from textdiff.models.tokenization import train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
# 12 steps of 2 accumulated batches, dropout on (torch's RNG matters), EMA on; checkpoints,
# log lines and evaluations fall on different steps so a checkpoint holds a partial log sum
EXACT = [
    "train.max_steps=12",
    "train.save_every=3",
    "train.keep_checkpoints=3",
    "train.log_every=2",
    "train.eval_every=4",
    "train.grad_accum=2",
    "train.eval_samples=1",
    "model.dropout=0.1",
    "data.max_train_samples=200",
]


def cli_args(out: Path, *extra: str) -> list[str]:
    sets = [a for o in EXACT for a in ("--set", o)]
    return [
        "train",
        str(TINY),
        "--output-dir",
        str(out),
        *sets,
        "--samples",
        "0",
        "--quiet",
        *extra,
    ]


def records(run: Path) -> list[dict]:
    """The training records (not the first line's data figures), wall-clock speed left out."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    rows = [{k: v for k, v in json.loads(x).items() if k != "tokens_per_s"} for x in lines]
    return [r for r in rows if r["split"] != "data"]


def newest_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(
        str(CheckpointManager(run / "checkpoints").checkpoints()[-1] / "model.safetensors")
    )


def assert_same_run(run: Path, reference: Path) -> None:
    for weights in (lambda r: load_file(str(r / "model" / "model.safetensors")), newest_weights):
        a, b = weights(run), weights(reference)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), "weights differ"
    assert records(run) == records(reference)


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory, e2e_dir) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    train(load_config(TINY, [f"train.output_dir={out}", *EXACT]), progress=False)
    return out


class Crash(Exception):
    """Stands for the process dying."""


def stop_after(monkeypatch, batches: int, action) -> None:
    """Run ``action`` when the trainer asks for batch number ``batches`` (counted from 0)."""
    real = training.Trainer._batches

    def counted(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == batches:
                action()
            yield item

    monkeypatch.setattr(training.Trainer, "_batches", counted)


# ------------------------------------------------------------------- 1. crash-safe training


def test_resume_after_a_crash_is_bit_identical_and_skips_damaged_checkpoints(
    tmp_path, reference, monkeypatch, caplog
):
    out = tmp_path / "run"
    cfg = load_config(TINY, [f"train.output_dir={out}", *EXACT])

    def crash():
        raise Crash

    stop_after(monkeypatch, 2 * 10, crash)  # dies in step 11, after logging step 10
    with pytest.raises(Crash):
        train(cfg, progress=False)
    monkeypatch.undo()
    ckpts = CheckpointManager(out / "checkpoints").checkpoints()
    assert [p.name for p in ckpts] == ["step-00000003", "step-00000006", "step-00000009"]
    assert max(r["step"] for r in records(out)) == 10  # logged after the last checkpoint

    # the newest checkpoint has flipped bytes; the one before carries a pickle payload in
    # optimizer.bin under a matching manifest: both are skipped, with one warning line each
    blob = bytearray((ckpts[2] / "model.safetensors").read_bytes())
    blob[-100:] = bytes(255 - b for b in blob[-100:])
    (ckpts[2] / "model.safetensors").write_bytes(bytes(blob))
    marker = tmp_path / "pwned"
    torch.save({"state": Payload(marker)}, ckpts[1] / "optimizer.bin")
    manifest = json.loads((ckpts[1] / "manifest.json").read_text())
    manifest["optimizer.bin"] = hashlib.sha256(
        (ckpts[1] / "optimizer.bin").read_bytes()
    ).hexdigest()
    (ckpts[1] / "manifest.json").write_text(json.dumps(manifest))
    # and a save cut short by the kill
    (out / "checkpoints" / ".tmp-step-00000012").mkdir()
    (out / "checkpoints" / ".tmp-step-00000012" / "model.safetensors").write_bytes(b"\0" * 10)

    with caplog.at_level(logging.WARNING, logger="textdiff.infra.checkpoint"):
        result = train(cfg, resume=True, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.name == "textdiff.infra.checkpoint"]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)
    assert "step-00000009 is unusable (model.safetensors is corrupt" in warnings[0]
    assert "step-00000006 is unusable (a file holds pickled objects" in warnings[1]
    assert not marker.exists()
    assert not (out / "checkpoints" / ".tmp-step-00000012").exists()
    assert result.steps == 12
    manager = CheckpointManager(out / "checkpoints")
    assert [p.name for p in manager.checkpoints()] == [f"step-0000000{i}" for i in (6, 9)] + [
        "step-00000012"
    ]
    assert all(manager.verify(p) is None for p in manager.checkpoints())
    assert_same_run(out, reference)


def test_sigint_saves_a_checkpoint_exits_130_and_resumes_exactly(
    tmp_path, reference, monkeypatch, capsys
):
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)
    stop_after(monkeypatch, 2 * 4 + 1, lambda: os.kill(os.getpid(), signal.SIGINT))  # in step 5
    assert main(cli_args(out)) == 130
    err = capsys.readouterr().err.strip()
    assert err == "interrupted at step 5; checkpoint saved, resume with --resume"
    assert signal.getsignal(signal.SIGINT) is before
    monkeypatch.undo()
    assert CheckpointManager(out / "checkpoints").checkpoints()[-1].name == "step-00000005"
    assert main(cli_args(out, "--resume")) == 0
    assert_same_run(out, reference)


def test_python_sees_sigint_as_training_interrupted(tmp_path, monkeypatch, e2e_dir):
    out = tmp_path / "run"
    cfg = load_config(TINY, [f"train.output_dir={out}", "train.max_steps=5", "train.save_every=4"])
    stop_after(monkeypatch, 1, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, progress=False)
    assert isinstance(info.value, KeyboardInterrupt) and info.value.step == 2
    assert info.value.checkpoint.name == "step-00000002"
    assert CheckpointManager(out / "checkpoints").verify(info.value.checkpoint) is None


def test_resume_before_the_first_checkpoint_starts_over_and_cuts_metrics(
    tmp_path, monkeypatch, e2e_dir
):
    out = tmp_path / "run"
    sets = ["train.max_steps=4", "train.save_every=4", "train.log_every=1", "train.eval_every=2"]
    cfg = load_config(TINY, [f"train.output_dir={out}", "data.max_train_samples=200", *sets])

    def crash():
        raise Crash

    stop_after(monkeypatch, 3, crash)
    with pytest.raises(Crash):
        train(cfg, progress=False)
    monkeypatch.undo()
    assert [r["step"] for r in records(out)] == [1, 2, 2, 3]  # it died in step 4
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "spl')  # a line cut short by the kill
    train(cfg, resume=True, progress=False)
    steps = [(r["step"], r["split"]) for r in records(out)]
    assert steps == [(1, "train"), (2, "train"), (2, "valid"), (3, "train"), (4, "train")] + [
        (4, "valid"),
        (4, "final"),
    ]


def test_stop_signals_defers_sigterm_and_restores_the_handlers():
    before = {s: signal.getsignal(s) for s in StopSignals.SIGNALS}
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
    assert {s: signal.getsignal(s) for s in StopSignals.SIGNALS} == before


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path, e2e_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "textdiff"]
    sets = ["--set", "train.log_every=1"]
    reference = tmp_path / "reference"
    subprocess.run([*cli, *cli_args(reference), *sets], env=env, check=True, timeout=300)
    rng = random.Random(20240531)
    kill_at, delay = rng.randint(2, 11), rng.uniform(0.0, 0.3)
    out = tmp_path / "run"
    proc = subprocess.Popen([*cli, *cli_args(out), *sets], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        logged = (out / "metrics.jsonl").read_text() if (out / "metrics.jsonl").exists() else ""
        if f'"step": {kill_at}, "split": "train"' in logged:
            break
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it was killed"
    resumed = subprocess.run(
        [*cli, *cli_args(out, "--resume"), *sets], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(out, reference)


# ------------------------------------------------------------------------- 2. safe loading


class Payload:
    """Unpickling this writes ``marker``: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_the_payload_is_live(tmp_path):
    pickle.loads(pickle.dumps(Payload(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()


@pytest.mark.parametrize("how", ["bin-only", "bin-named-safetensors", "bin-beside-safetensors"])
def test_a_model_folder_never_unpickles(tmp_path, reference, how):
    folder, marker = tmp_path / "model", tmp_path / "pwned"
    shutil.copytree(reference / "model", folder)
    weights = folder / "model.safetensors"
    if how == "bin-only":
        weights.unlink()
        torch.save({"weight": Payload(marker)}, folder / "pytorch_model.bin")
        with pytest.raises(ModelFolderError, match="never loads pickled weights"):
            TextDiffusionPipeline.from_pretrained(folder)
    elif how == "bin-named-safetensors":
        torch.save({"weight": Payload(marker)}, weights)
        with pytest.raises(ModelFolderError, match="not a readable safetensors file"):
            TextDiffusionPipeline.from_pretrained(folder)
    else:
        torch.save({"weight": Payload(marker)}, folder / "pytorch_model.bin")
        pipe = TextDiffusionPipeline.from_pretrained(folder)
        assert pipe.generate(1, num_steps=2)
    assert not marker.exists()


def test_library_never_calls_torch_load_unsafely():
    for path in (ROOT / "textdiff").rglob("*.py"):
        for line in path.read_text().splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path.name}: {line.strip()}"
            assert "pickle.load" not in line, f"{path.name}: {line.strip()}"


# --------------------------------------------------------------------------- 3. bad input


def refuse(capsys, args: list[str]) -> str:
    """Run the CLI; it must exit 2 with one line on stderr; returns that line."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.strip()


def write(path: Path, data: str | bytes) -> str:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def files(**splits: str) -> str:
    """A ``--set`` value that points the data at these files only."""
    return "data.data_files={" + ", ".join(f"{k}: {v}" for k, v in splits.items()) + "}"


@pytest.fixture
def bad_data(tmp_path) -> dict[str, list[str]]:
    """CLI ``--set`` values for each kind of unusable data."""
    good = write(tmp_path / "good.txt", "a b c\n" * 50)
    jsonl = write(tmp_path / "rows.jsonl", '{"sentence": "a b c"}\n' * 5)
    plain = ["data.format=plain"]
    return {
        "empty file": [files(train=write(tmp_path / "empty.txt", "")), *plain],
        "blank lines": [files(train=write(tmp_path / "blank.txt", "\n  \n\n")), *plain],
        "missing file": [files(train=str(tmp_path / "nope.txt")), *plain],
        "missing column": [files(train=jsonl), "data.dataset=json", *plain],
        "not UTF-8": [files(train=write(tmp_path / "latin1.txt", "café\n".encode("latin-1")))],
        "hub name offline": ["data.dataset=some_user/some_dataset", "data.data_files={}"],
        "no train split": [files(validation=good), *plain],
    }


BAD_DATA = {
    "empty file": "split 'train' is empty",
    "blank lines": "split 'train' is empty (no non-blank text)",
    "missing file": "does not exist; fix data.data_files",
    "missing column": "has no column 'text'; columns present: ['sentence']",
    "not UTF-8": "is not valid UTF-8; re-encode it",
    "hub name offline": "the Hugging Face hub cannot be reached",
    "no train split": "the data has no 'train' split",
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_refused_before_the_output_folder_is_touched(tmp_path, capsys, bad_data, case):
    out = tmp_path / "out"
    sets = [a for s in bad_data[case] for a in ("--set", s)]
    line = refuse(capsys, ["train", str(TINY), "--output-dir", str(out), *sets, "--quiet"])
    assert BAD_DATA[case] in line
    assert not out.exists()
    cfg = load_config(TINY, [f"train.output_dir={out}", *bad_data[case]])
    with pytest.raises(DataError, match=re.escape(BAD_DATA[case])):
        train(cfg, progress=False)


BAD_CONFIG = {
    "model.layers=3": "unknown config key 'model.layers'; valid keys:",
    "train.max_steps=abc": "train.max_steps: expected int, got str ('abc')",
    "train.max_steps=-5": "train.max_steps must be positive, got -5",
    "process.schedule=wiggly": "process.schedule 'wiggly' is not a gaussian schedule; choose",
    "sample.sampler=magic": "unknown sample.sampler 'magic' for process.noise=gaussian",
    "process.noise=pink": "process.noise 'pink' is unknown; choose one of",
    "model.embed_dim=0": "model.embed_dim must be positive, got 0",
    "model.hidden_size=-64": "model.hidden_size must be positive, got -64",
    "data.max_train_samples=0": "data.max_train_samples must be positive or null, got 0",
}


@pytest.mark.parametrize("override", sorted(BAD_CONFIG))
def test_bad_config_values_are_config_errors(tmp_path, capsys, override):
    out = tmp_path / "out"
    args = ["train", str(TINY), "--output-dir", str(out), "--set", override]
    assert BAD_CONFIG[override] in refuse(capsys, args)
    assert not out.exists()
    with pytest.raises(ConfigError):
        train(load_config(TINY, [f"train.output_dir={out}", override]), progress=False)
    assert not out.exists()


def test_missing_or_broken_config_file(tmp_path, capsys):
    assert "does not exist" in refuse(capsys, ["train", str(tmp_path / "none.yaml")])
    broken = write(tmp_path / "broken.yaml", "model: [unclosed\n")
    assert "is not valid YAML" in refuse(capsys, ["train", broken])


def test_an_output_folder_holding_a_run_is_never_overwritten(tmp_path, reference, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = snapshot(run)
    line = refuse(capsys, cli_args(run))  # the same run again
    assert "already holds a training run; pass --resume to continue it or --overwrite" in line
    line = refuse(capsys, cli_args(run, "--set", "model.num_layers=3"))
    assert "already holds a training run" in line
    line = refuse(capsys, cli_args(run, "--resume", "--set", "model.num_layers=3"))
    assert "cannot resume: model settings differ" in line and "model.num_layers" in line
    line = refuse(capsys, cli_args(run, "--resume", "--overwrite"))
    assert "resume and overwrite exclude each other" in line
    assert snapshot(run) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    write(foreign / "notes.txt", "mine")
    assert "holds no textdiff run" in refuse(capsys, cli_args(foreign))
    assert snapshot(foreign) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_model_folders_that_do_not_fit_together(tmp_path, reference, capsys):
    def broken(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(reference / "model", folder)
        return folder

    cases = []
    f = broken("no-weights")
    (f / "model.safetensors").unlink()
    cases.append((f, "missing ['model.safetensors']"))
    f = broken("no-tokenizer")
    (f / "tokenizer.json").unlink()
    cases.append((f, "missing ['tokenizer.json']"))
    f = broken("wider")
    edit_config(f, hidden_size=128)
    cases.append((f, "in_proj.weight is [64, 24] in the weights but [128, 24] in config.json"))
    f = broken("deeper")
    edit_config(f, num_layers=3)
    cases.append((f, "blocks.2.ln1.weight is missing (and 11 more)"))
    f = broken("bad-value")
    edit_config(f, hidden_size=65)
    cases.append((f, "must be divisible by model.num_heads"))
    f = broken("other-tokenizer")
    tok = train_tokenizer(["a b c d e f g"], min_frequency=1)
    tok.save_pretrained(f)
    cases.append((f, "the tokenizer has 11 tokens but the model's vocabulary is"))
    f = broken("broken-tokenizer")
    write(f / "tokenizer.json", "{}")
    cases.append((f, "could not load tokenizer folder"))
    f = broken("not-json")
    write(f / "config.json", "{")
    cases.append((f, "config.json is not valid JSON"))
    for folder, message in cases:
        with pytest.raises(ModelFolderError, match=re.escape(message)):
            TextDiffusionPipeline.from_pretrained(folder)
        assert message in refuse(capsys, ["generate", str(folder), "--quiet"])
    assert "does not exist" in refuse(capsys, ["generate", str(tmp_path / "none")])


def test_generate_refuses_bad_requests_and_keeps_files(tmp_path, reference, capsys):
    model = str(reference / "model")
    line = refuse(capsys, ["generate", model, "-n", "0", "--quiet"])
    assert line == (
        "error: argument -n/--num-samples: must be at least 1, got 0 (see textdiff generate --help)"
    )
    line = refuse(capsys, ["generate", model, "--steps", "500", "--quiet"])
    assert "num_steps 500 is more than this model supports" in line and "at most 200" in line
    assert "between 1 and 1000000, got 0" in refuse(capsys, ["generate", model, "--steps", "0"])
    assert "unknown sampler 'magic'" in refuse(capsys, ["generate", model, "--sampler", "magic"])
    kept = write(tmp_path / "kept.txt", "mine\n")
    line = refuse(capsys, ["generate", model, "--out", kept, "--quiet"])
    assert "exists; pass --overwrite" in line and Path(kept).read_text() == "mine\n"
    pipe = TextDiffusionPipeline.from_pretrained(model)
    assert pipe.max_steps == 200
    with pytest.raises(ValueError, match="more than this model supports"):
        pipe.generate(1, num_steps=201)


def test_long_lines_are_truncated_and_counted_not_refused(tmp_path, caplog):
    cfg = load_config(TINY, [files(train=write(tmp_path / "t.txt", "a b\n" + "w " * 80 + "\n"))])
    cfg.data.format = "plain"
    split = load_text_splits(cfg.data)["train"]
    tok = train_tokenizer(["a b w"], min_frequency=1)
    with caplog.at_level(logging.WARNING, logger="textdiff.infra.data"):
        rows = tokenize_split(split, tok, 8, name="train")
    assert rows.num_truncated == 1 and rows.ids.shape == (2, 8)
    assert "train: 1 of 2 lines were longer than 7 tokens and were truncated" in caplog.text


def test_nan_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    sets = ["train.lr=1.0e+30", "train.warmup_steps=0", "train.save_every=1", "train.max_steps=6"]
    args = ["train", str(TINY), "--output-dir", str(out), "--samples", "0", "--quiet"]
    args += [a for s in [*sets, "data.max_train_samples=200"] for a in ("--set", s)]
    line = refuse(capsys, args)
    assert line.startswith("error: the loss became nan at step 2; training stopped and ")
    ckpts = CheckpointManager(out / "checkpoints")
    assert [p.name for p in ckpts.checkpoints()] == ["step-00000001"]
    assert ckpts.verify(ckpts.checkpoints()[0]) is None
    assert str(ckpts.checkpoints()[0]) in line
    with pytest.raises(TrainingError, match="at step 2"):
        train(load_config(TINY, [f"train.output_dir={out}", *sets]), overwrite=True, progress=False)


class FakeAccelerator:
    """What CheckpointManager.save needs of an accelerator; ``save_state`` fails like a full
    disk."""

    process_index, is_main_process = 0, True

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, folder: str, **kwargs) -> None:
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    good = root / "step-00000001"
    good.mkdir(parents=True)
    write(good / "manifest.json", "{}")
    ckpt = CheckpointManager(root)
    rng = rng_states(torch.Generator().manual_seed(0))
    with pytest.raises(CheckpointError, match="step 2 .No space left on device") as info:
        ckpt.save(FakeAccelerator(), None, {"step": 2}, rng)
    assert "\n" not in str(info.value) and "previous checkpoints" in str(info.value)
    assert [p.name for p in root.iterdir()] == ["step-00000001"]


def test_disk_full_for_real_writers_during_training(tmp_path, capsys, monkeypatch, e2e_dir):
    """The second checkpoint is written under a file-size limit: the writers (safetensors,
    torch.save) fail the way they do on a full disk."""
    out = tmp_path / "run"
    real_save = CheckpointManager.save
    calls = []

    def save_with_a_full_disk(self, *args, **kwargs):
        calls.append(1)
        if len(calls) < 2:
            return real_save(self, *args, **kwargs)
        limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, limits[1]))
        try:
            return real_save(self, *args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            signal.signal(signal.SIGXFSZ, previous)

    monkeypatch.setattr(CheckpointManager, "save", save_with_a_full_disk)
    args = ["train", str(TINY), "--output-dir", str(out), "--samples", "0", "--quiet"]
    sets = ["train.max_steps=4", "train.save_every=2", "data.max_train_samples=200"]
    line = refuse(capsys, args + [a for s in sets for a in ("--set", s)])
    assert line.startswith("error: could not write the checkpoint of step 4 (")
    ckpts = CheckpointManager(out / "checkpoints")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    assert ckpts.verify(ckpts.checkpoints()[0]) is None


def test_disk_full_elsewhere_is_one_line(monkeypatch, capsys):
    def full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out.txt")

    monkeypatch.setattr("textdiff.infra.cli.cmd_generate", full)
    line = refuse(capsys, ["generate", "anything"])
    assert line.startswith("error: no space left on the disk while writing /data/out.txt; free")


def test_a_cli_refusal_in_a_fresh_process_is_one_line_without_traceback(tmp_path):
    args = ["train", str(TINY), "--output-dir", str(tmp_path / "out"), "--quiet"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "textdiff",
            *args,
            "--set",
            "data.dataset=some_user/some_data",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert (
        "hub cannot be reached" in proc.stderr
        and "`dataset: text` with `data_files`" in proc.stderr
    )


# --------------------------------------------------------------------------- 4. determinism


def test_same_seed_same_losses_and_same_samples(tmp_path, reference):
    again = tmp_path / "again"
    train(load_config(TINY, [f"train.output_dir={again}", *EXACT]), progress=False)
    assert_same_run(again, reference)
    a, b = (TextDiffusionPipeline.from_pretrained(r / "model") for r in (reference, again))
    assert a.generate(3, num_steps=5, seed=7) == b.generate(3, num_steps=5, seed=7)
