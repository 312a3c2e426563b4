"""Hostile inputs and faults, tried as a new user would: nothing the user wrote is lost, two
trainers never share a run folder, every value is checked before anything is written, requests
larger than the machine are refused up front, and every refusal is one line with exit code 2.
"""

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from textdiff.errors import ResourceError, TextdiffError
from textdiff.infra import runfolder
from textdiff.infra.cli import main
from textdiff.infra.config import ConfigError, DataConfig, load_config
from textdiff.infra.data import DataError, build_tokenizer, load_text_splits
from textdiff.infra.evaluation import EvaluationData
from textdiff.infra.runfolder import MANIFEST_FILE, RunFolderError, RunLock
from textdiff.infra.trainer import train
from textdiff.models.pipeline import ModelFolderError, TextDiffusionPipeline
from textdiff.models.template import TemplateError

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
LEGACY = Path(__file__).parent / "legacy"
SMALL = [
    "train.max_steps=2",
    "train.save_every=1",
    "train.log_every=1",
    "train.eval_every=2",
    "train.eval_samples=1",
    "train.eval_batches=1",
    "train.batch_size=8",
    "sample.steps=2",
]


@pytest.fixture(scope="module")
def small_data(small_e2e_files) -> list[str]:
    """``--set`` values pointing the tiny config at 200 training and 40 validation lines."""
    return [small_e2e_files, *SMALL]


def train_args(out: Path, sets: list[str], *extra: str) -> list[str]:
    flags = [a for s in sets for a in ("--set", s)]
    return [
        "train",
        str(TINY),
        "--output-dir",
        str(out),
        *flags,
        "--samples",
        "0",
        "--quiet",
        *extra,
    ]


def refuse(capsys, args: list[str]) -> str:
    """Run the CLI; it must exit 2 with one line on stderr and no traceback; returns it."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.strip()


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != runfolder.LOCK_FILE
    }


def records(run: Path) -> list[tuple[int, str]]:
    """The training records (not the first line's data figures)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["split"]) for r in map(json.loads, lines) if r["split"] != "data"]


# ------------------------------------------------------------------------------- data loss


def test_overwrite_never_deletes_a_users_files(tmp_path, capsys, small_data):
    """The issue's folder: the user's own experiment.yaml, weights and checkpoint."""
    user = tmp_path / "U"
    (user / "model").mkdir(parents=True)
    (user / "checkpoints").mkdir()
    shutil.copyfile(TINY, user / "experiment.yaml")
    (user / "model" / "weights-I-trained-elsewhere.bin").write_bytes(b"\1" * 64)
    (user / "checkpoints" / "epoch=3.ckpt").write_bytes(b"\2" * 64)
    before = snapshot(user)
    for flag in ("--overwrite", "--resume"):
        line = refuse(capsys, train_args(user, small_data, flag))
        assert "holds no textdiff run" in line and "never deletes" in line
    assert snapshot(user) == before and not (user / MANIFEST_FILE).exists()
    # a model folder given as the output folder
    model = tmp_path / "model"
    shutil.copytree(LEGACY / "gaussian", model)
    before = snapshot(model)
    line = refuse(capsys, train_args(model, small_data, "--overwrite"))
    assert "looks like a model folder (config.json, model.safetensors" in line
    assert snapshot(model) == before and sorted(p.name for p in model.iterdir()) == sorted(before)


def test_overwrite_removes_only_what_textdiff_wrote(tmp_path, capsys, small_data):
    run = tmp_path / "run"
    assert main(train_args(run, small_data)) == 0
    written = json.loads((run / MANIFEST_FILE).read_text())["files"]
    assert "model/model.safetensors" in written and "checkpoints/step-00000002/manifest.json" in (
        written
    )
    assert set(written) == {f for f in runfolder.run_files(run)}  # every file is recorded
    (run / "notes.txt").write_text("mine")  # beside the run: kept, the run is replaced
    (run / "plots").mkdir()
    (run / "plots" / "loss.png").write_bytes(b"png")
    old_model = (run / "model" / "model.safetensors").read_bytes()
    assert main(train_args(run, [*small_data, "train.seed=1"], "--overwrite")) == 0
    assert (run / "notes.txt").read_text() == "mine" and (run / "plots" / "loss.png").exists()
    assert (run / "model" / "model.safetensors").read_bytes() != old_model
    assert records(run) == [(1, "train"), (2, "train"), (2, "valid"), (2, "final")]
    # a file of the user's inside the run's own folders: refused, nothing touched
    (run / "model" / "my-notes.txt").write_text("mine too")
    (run / "checkpoints" / "epoch=3.ckpt").write_text("and this")
    before = snapshot(run)
    line = refuse(capsys, train_args(run, small_data, "--overwrite"))
    assert "holds files textdiff did not write (checkpoints/epoch=3.ckpt, model/my-notes.txt)" in (
        line
    )
    assert snapshot(run) == before
    line = refuse(capsys, train_args(run, small_data, "--resume"))
    assert "did not write" in line and snapshot(run) == before


def test_a_run_of_an_earlier_textdiff_is_adopted_by_its_file_names(tmp_path, capsys, small_data):
    run = tmp_path / "run"
    assert main(train_args(run, small_data)) == 0
    (run / MANIFEST_FILE).unlink()  # as written before run manifests
    (run / "model" / "weights.bin").write_bytes(b"not textdiff's")
    before = snapshot(run)
    line = refuse(capsys, train_args(run, small_data, "--overwrite"))
    assert "did not write (model/weights.bin)" in line and snapshot(run) == before
    (run / "model" / "weights.bin").unlink()
    assert main(train_args(run, small_data, "--resume")) == 0  # finished: evaluates again
    assert "model/config.json" in json.loads((run / MANIFEST_FILE).read_text())["files"]
    # an experiment.yaml that is not a textdiff run config is never taken for a run
    other = tmp_path / "other"
    other.mkdir()
    for text in ("- a list\n- of things\n", "train: [unclosed\n", "just: a dict\n"):
        (other / "experiment.yaml").write_text(text)
        (other / "metrics.jsonl").write_text("{}\n")
        for flag in ("--resume", "--overwrite"):
            assert "holds no textdiff run" in refuse(capsys, train_args(other, small_data, flag))
        assert (other / "experiment.yaml").read_text() == text


def test_a_run_that_stopped_before_its_first_step_is_replaced(
    tmp_path, capsys, small_data, monkeypatch
):
    run = tmp_path / "run"
    line = refuse(capsys, train_args(run, [*small_data, "data.min_frequency=100000"]))
    assert "vocabulary would hold only the special tokens; lower data.min_frequency" in line
    assert (run / "experiment.yaml").exists()  # refused after the folder was prepared
    assert main(train_args(run, small_data)) == 0  # the corrected rerun is not refused
    assert records(run)[-1] == (2, "final")


# ------------------------------------------------------------------------------------- lock


def test_a_second_trainer_is_refused_at_once_and_the_first_metrics_are_exact(
    tmp_path, capsys, small_data
):
    run = tmp_path / "run"
    steps = 120  # long enough to still be training while the others are refused
    sets = [*small_data, f"train.max_steps={steps}", f"train.eval_every={steps // 2}"]
    sets.append(f"train.save_every={steps // 2}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        [sys.executable, "-m", "textdiff", *train_args(run, sets)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").stat().st_size:
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        for flag in ("--resume", "--overwrite"):
            t0 = time.monotonic()
            line = refuse(capsys, train_args(run, sets, flag))
            assert f"is in use by another training process (PID {first.pid})" in line
            assert time.monotonic() - t0 < 60
        assert first.poll() is None, "the first trainer ended before the others were refused"
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    expected = [(s, "train") for s in range(1, steps + 1)]
    expected.insert(steps // 2, (steps // 2, "valid"))
    assert records(run) == [*expected, (steps, "valid"), (steps, "final")]


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from textdiff.infra.runfolder import RunLock; "
            f"lock = RunLock(Path({str(tmp_path)!r})); print('locked', flush=True); "
            "time.sleep(600)",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=f"another training process .PID {holder.pid}."):
            RunLock(tmp_path)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
        lock = RunLock(tmp_path)  # the kernel released it: no stale lock
        assert (tmp_path / runfolder.LOCK_FILE).read_text().strip() == str(os.getpid())
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()


def test_the_lock_is_released_when_training_fails(tmp_path, small_data, monkeypatch):
    run = tmp_path / "run"
    cfg = load_config(TINY, [f"train.output_dir={run}", *small_data])

    def fail(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("textdiff.infra.trainer.Trainer.train_step", fail)
    with pytest.raises(RuntimeError, match="a bug") as info:
        train(cfg, progress=False)
    RunLock(run).release()  # free although the traceback still holds the trainer
    del info


# ----------------------------------------------------------------- values checked up front


BAD_VALUES = {
    "train.min_lr_ratio=-50": "train.min_lr_ratio must be in [0, 1]",
    "train.lr=.nan": "train.lr must be a finite number, got nan",
    "train.lr=.inf": "train.lr must be a finite number, got inf",
    "model.readout_scale=.nan": "model.readout_scale must be a finite number",
    "model.seq_len=1": "model.seq_len must be ≥ 2",
    "train.seed=-1": "train.seed must be in [0, 2147483647], got -1",
    "model.mlp_ratio=0.001": "feed-forward layer of 0 units",
    "sample.temperature=.nan": "sample.temperature must be a finite number",
    "model={seq_len: 1}": "model.seq_len must be ≥ 2",
    "model.seq_len=1000000000": "GiB of memory (attention alone",
    "train.batch_size=10000000": "GiB of memory",
}


@pytest.mark.parametrize("override", sorted(BAD_VALUES))
def test_bad_values_are_refused_before_anything_is_written(tmp_path, capsys, override):
    out = tmp_path / "out"
    line = refuse(capsys, train_args(out, [override]))
    assert BAD_VALUES[override] in line
    assert not out.exists()


def test_a_config_with_two_train_blocks_is_refused(tmp_path, capsys):
    text = TINY.read_text() + "train:\n  max_steps: 3\n"
    path = tmp_path / "two.yaml"
    path.write_text(text)
    assert "key 'train' appears twice" in refuse(capsys, ["train", str(path)])


def test_cli_flags_are_checked_like_config_keys(capsys):
    model = str(LEGACY / "gaussian")
    cases = {
        ("generate", model, "--seed", str(2**64 + 1)): "must be between 0 and 2147483647",
        ("generate", model, "--seed", "-1"): "must be between 0 and 2147483647",
        ("generate", model, "--temperature", "nan"): "must be a finite number",
        ("generate", model, "--steps", "0"): "argument --steps: must be between 1 and",
        ("generate", model, "-n", "1e8"): "expected an integer, got '1e8'",
        ("generate", model, "--guidance", "-1"): "must be at least 0",
        ("evaluate", model, "--limit", "0"): "argument --limit: must be at least 1, got 0",
        ("evaluate", model, "--limit", "-1"): "argument --limit: must be at least 1, got -1",
        ("evaluate", model, "--num-t", "0"): "argument --num-t: must be between 1 and",
        ("train", str(TINY), "--bogus"): "unrecognized arguments: --bogus",
    }
    for args, message in cases.items():
        assert message in refuse(capsys, [*args, "--quiet"] if args[0] != "train" else list(args))


# -------------------------------------------------------------------- degenerate sampling


@pytest.mark.parametrize("name", ["gaussian", "mask", "ar"])
def test_degenerate_sampling_values_are_refused(name, capsys):
    pipe = TextDiffusionPipeline.from_pretrained(LEGACY / name)
    bad = [
        dict(temperature=0.0),
        dict(temperature=float("nan")),
        dict(temperature=-1.0),
        dict(temperature=float("inf")),
        dict(top_p=0.0),
        dict(top_p=-0.5),
        dict(top_p=float("nan")),
    ]
    for kwargs in bad:
        with pytest.raises(ConfigError, match="must be (positive|finite)"):
            pipe.generate(2, num_steps=2, **kwargs)
    for flag, value in (("--temperature", "0"), ("--temperature", "-1"), ("--top-p", "0")):
        line = refuse(capsys, ["generate", str(LEGACY / name), flag, value, "--quiet"])
        assert "must be positive" in line


# ---------------------------------------------------------------------------- resource bounds


def test_requests_larger_than_the_machine_are_refused_up_front(tmp_path, capsys, monkeypatch):
    model = str(LEGACY / "gaussian")

    def never(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(TextDiffusionPipeline, "generate", never)
    line = refuse(capsys, ["generate", model, "-n", str(10**11), "--quiet"])
    assert "GiB of memory (the sentences alone" in line and "lower -n" in line
    big = ["-n", str(10**6), "--batch-size", str(10**6)]
    line = refuse(capsys, ["generate", model, *big, "--quiet"])
    assert "lower --batch-size" in line
    line = refuse(capsys, ["evaluate", model, "--samples", str(10**11), "--quiet"])
    assert "lower --samples" in line
    pipe = TextDiffusionPipeline.from_pretrained(model)
    monkeypatch.undo()
    t0 = time.monotonic()
    with pytest.raises(TemplateError, match="a span of 1000000000 tokens"):
        pipe.generate(1, template=["The", 10**9])
    assert time.monotonic() - t0 < 5
    from textdiff import memory
    from textdiff.infra import resources

    monkeypatch.setattr(memory, "machine_memory", lambda: 2**20)
    with pytest.raises(ResourceError, match="this machine has 0.0 GiB; lower"):
        resources.check_training_memory(load_config(TINY))


def test_an_over_long_line_is_refused_before_the_tokenizer_sees_it(tmp_path, monkeypatch):
    monkeypatch.setattr("textdiff.infra.data.MAX_TEXT_CHARS", 1000)
    path = tmp_path / "one-line.txt"
    path.write_text("a b\n" + "word " * 1000 + "\nc d\n")
    for streaming in (False, True):
        cfg = DataConfig(data_files={"train": str(path)}, streaming=streaming)
        with pytest.raises(DataError, match="line 2 is 5,000 characters long, more than one text"):
            load_text_splits(cfg)


# ------------------------------------------------------------------------- other tracebacks


def test_hostile_data_is_one_line(tmp_path, capsys):
    ints = tmp_path / "ints.jsonl"
    ints.write_text('{"text": 1}\n{"text": 2}\n')
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"text": "a b"}\n{"text": [1, 2]}\n')
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = {
        f"data.data_files={{train: {ints}}}": "row 0: column 'text' holds int 1, not text",
        f"data.data_files={{train: {mixed}}}": "row 1: column 'text' holds list [1, 2], not text",
        f"data.data_files={{train: {folder}}}": "is a folder; name a file, or the files in it",
        "data.data_files={train: 'https://example.org/train.txt'}": "'https://example.org/train",
    }
    for override, message in cases.items():
        out = tmp_path / "out"
        sets = [override, "data.format=plain"]
        if "jsonl" in override:
            sets.append("data.dataset=json")
        assert message in refuse(capsys, train_args(out, sets))
        assert not out.exists()
    with pytest.raises(DataError, match="only the special tokens"):
        build_tokenizer(DataConfig(min_frequency=1000), ["a b c"] * 3)


def test_unwritable_paths_are_one_line_and_checked_before_the_work(
    tmp_path, capsys, monkeypatch, small_data
):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    line = refuse(capsys, train_args(blocker / "run", small_data))
    assert "cannot create the output folder" in line and blocker.read_text() == "mine"
    assert "is a file, not a folder" in refuse(capsys, train_args(blocker, small_data))

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        return (read_only if tmp_path in self.parents else real_mkdir)(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Path, "mkdir", mkdir)
        line = refuse(capsys, train_args(tmp_path / "ro", small_data))
        assert "Read-only file system" in line and "--output-dir" in line
    model = str(LEGACY / "gaussian")
    monkeypatch.setattr(TextDiffusionPipeline, "generate", lambda *a, **k: pytest.fail("ran"))
    for out, message in (
        (blocker / "out.txt", "the folder"),
        (tmp_path / "missing" / "out.txt", "does not exist"),
        (tmp_path, "is a folder; name a file"),
    ):
        assert message in refuse(capsys, ["generate", model, "--out", str(out), "--quiet"])
    with monkeypatch.context() as m:
        m.setattr("tempfile.mkstemp", lambda **k: read_only(Path(k["dir"])))
        line = refuse(capsys, ["generate", model, "--out", str(tmp_path / "o.txt"), "--quiet"])
        assert "Read-only file system" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_deep_or_huge_templates_are_one_line(capsys):
    model = str(LEGACY / "gaussian")
    deep = "[" * 3000 + "]" * 3000
    assert "nests too deeply" in refuse(capsys, ["generate", model, "--template", deep])
    line = refuse(capsys, ["generate", model, "--template", f"[{10**9}]", "--quiet"])
    assert "a span of 1000000000 tokens" in line


def test_model_folder_settings_name_the_file(tmp_path, capsys):
    def edited(name: str, source: str, change) -> Path:
        folder = tmp_path / name
        shutil.copytree(LEGACY / source, folder)
        config = json.loads((folder / "config.json").read_text())
        change(config)
        (folder / "config.json").write_text(json.dumps(config))
        return folder

    cases = [
        (edited("gpt2", "gaussian", lambda c: c.update(model_type="gpt2")), "model_type 'gpt2'"),
        (edited("steps", "gaussian", lambda c: c["sample"].update(steps=0)), "sample.steps"),
        (edited("nan", "mask", lambda c: c["sample"].update(temperature="nan")), "finite"),
        (edited("noproc", "ar", lambda c: c.pop("process")), "has no 'process'"),
    ]
    for folder, message in cases:
        with pytest.raises(ModelFolderError, match=f"{folder}/config.json.*{message}"):
            TextDiffusionPipeline.from_pretrained(folder)
        assert message in refuse(capsys, ["generate", str(folder), "--quiet"])


def test_evaluation_leaves_out_and_counts_sentences_longer_than_the_model(tmp_path, capsys):
    pipe = TextDiffusionPipeline.from_pretrained(LEGACY / "gaussian")  # 16 positions
    vocab = [w for w in pipe.tokenizer.get_vocab() if not w.startswith("[")][:20]
    lines = [" ".join(vocab[:n]) for n in (3, 15, 16, 20, 5)]  # 16 and 20 words do not fit
    (tmp_path / "test.txt").write_text("\n".join(lines) + "\n")
    cfg = load_config(None, [f"data.data_files={{test: {tmp_path / 'test.txt'}}}"])
    data = EvaluationData.load(pipe, cfg, "test", None)
    assert data.left_out == 2 and len(data.ids) == 3
    assert (data.ids == pipe.tokenizer.eos_token_id).sum(1).tolist() == [1, 1, 1]
    assert len(EvaluationData.load(pipe, cfg, "test", 2).ids) == 2
    line = refuse(
        capsys, ["evaluate", str(LEGACY / "gaussian"), "--reference", str(LEGACY / "mask")]
    )
    assert "is a mask diffusion model, whose perplexity is only a bound" in line


def test_refusals_in_a_fresh_process_have_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    bomb = tmp_path / "bomb.yaml"
    laughs = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        laughs.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    bomb.write_text("\n".join(laughs) + "\n")
    for args in (["train", str(bomb)], ["generate", str(LEGACY / "gaussian"), "-n", "0"]):
        proc = subprocess.run(
            [sys.executable, "-m", "textdiff", *args], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "Traceback" not in proc.stderr


def test_every_user_error_is_a_textdiff_error():
    from textdiff.infra.cli import UsageError
    from textdiff.infra.evaluation import EvaluationError
    from textdiff.infra.resources import OutputError

    errors = (RunFolderError, ResourceError, ConfigError, DataError, TemplateError, UsageError)
    for cls in (*errors, EvaluationError, OutputError, ModelFolderError):
        assert issubclass(cls, TextdiffError) and issubclass(cls, ValueError)


def test_rewinding_metrics_keeps_each_record_once(tmp_path):
    from textdiff.infra.checkpoint import rewind_metrics

    path = tmp_path / "metrics.jsonl"
    rows = [(1, "train"), (2, "train"), (1, "train"), (2, "valid"), (2, "train"), (3, "train")]
    lines = [json.dumps({"step": s, "split": p}) for s, p in rows]
    path.write_text("\n".join([*lines, '{"step": "x"}', '{"step": 1}']) + "\n")
    kept = rewind_metrics(path, 2)
    assert [(r["step"], r["split"]) for r in kept] == [(1, "train"), (2, "train"), (2, "valid")]
    assert records(tmp_path) == [(1, "train"), (2, "train"), (2, "valid")]
