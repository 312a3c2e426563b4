"""Training through the same entry point the CLI uses, the pipeline, and the CLI itself."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from textdiff.infra.cli import main
from textdiff.infra.config import load_config
from textdiff.infra.trainer import train
from textdiff.models.pipeline import TextDiffusionPipeline

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"


def tiny(out: Path, *extra: str):
    return load_config(
        TINY,
        [
            f"train.output_dir={out}",
            "train.max_steps=8",
            "train.eval_every=4",
            "train.save_every=4",
            "train.log_every=2",
            "data.max_train_samples=300",
            *extra,
        ],
    )


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, e2e_dir):
    out = tmp_path_factory.mktemp("run") / "tiny"
    return train(tiny(out), progress=False)


def test_training_logs_every_term_and_saves_a_model_folder(trained):
    logs = records(trained.output_dir)
    train_logs = [r for r in logs if r["split"] == "train"]
    assert [r["step"] for r in train_logs] == [2, 4, 6, 8]
    for r in train_logs:
        assert {"loss", "mse", "prior", "rounding", "lr", "tokens_per_s"} <= set(r)
    valid = [r for r in logs if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [4, 8]
    assert {"acc_t0.1", "acc_t0.5", "mse", "rounding"} <= set(valid[-1])
    assert len(valid[-1]["samples"]) == 2
    final = logs[-1]
    assert final["split"] == "final" and final["world_size"] == 1 and final["ranks_in_sync"]
    assert 0 < final["table_roundtrip"] <= 1 and final["table_margin_min"] >= 0
    data = [r for r in logs if r["split"] == "data"]
    assert data[0]["step"] == 0 and data[0]["seq_len"] == load_config(TINY).model.seq_len
    assert 0 <= data[0]["unk_share"] < 1 and data[0]["vocab_size"] > 4
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (trained.model_dir / name).is_file()
    assert not list(trained.model_dir.glob("*.bin"))


def test_same_seed_same_text_and_save_reload_identity(trained, tmp_path):
    pipe = TextDiffusionPipeline.from_pretrained(trained.model_dir)
    a = pipe.generate(3, num_steps=10, seed=5)
    assert a == pipe.generate(3, num_steps=10, seed=5)
    assert len(a) == 3 and all(isinstance(s, str) for s in a)
    pipe.save_pretrained(tmp_path / "copy")
    again = TextDiffusionPipeline.from_pretrained(tmp_path / "copy")
    assert again.generate(3, num_steps=10, seed=5) == a
    out = again.generate(2, num_steps=4, seed=1, return_ids=True, return_trajectory=True)
    assert out.ids.shape == (2, 32) and len(out.trajectory[0]) == 4 and out.nfe == 4


def test_generate_refuses_bad_requests(trained):
    pipe = TextDiffusionPipeline.from_pretrained(trained.model_dir)
    with pytest.raises(ValueError, match="num_samples"):
        pipe.generate(0)
    with pytest.raises(ValueError, match="num_steps"):
        pipe.generate(1, num_steps=-3)
    with pytest.raises(ValueError, match="seq_len"):
        pipe.generate(1, seq_len=1000)


def test_cli_trains_generates_and_refuses_in_one_line(tmp_path, capsys, e2e_dir):
    out = tmp_path / "cli-run"
    args = [
        "train",
        str(TINY),
        "--output-dir",
        str(out),
        "--set",
        "train.max_steps=2",
        "--set",
        "data.max_train_samples=100",
        "--samples",
        "2",
        "--quiet",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "trained 2 steps" in printed and "samples:" in printed and "rounding" in printed
    assert main(["generate", str(out / "model"), "-n", "3", "--steps", "5", "--quiet"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    # the folder now holds a run: refused without --resume / --overwrite, nothing touched
    before = (out / "metrics.jsonl").read_text()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--resume" in err and len(err.splitlines()) == 1
    assert (out / "metrics.jsonl").read_text() == before
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "-n", "1"]) == 2
    assert "not a textdiff model" in capsys.readouterr().err


def test_cli_errors_have_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "textdiff", "train", str(TINY), "--set", "model.layers=3"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "unknown config key 'model.layers'" in proc.stderr


def test_two_processes_with_accelerate_launch_stay_in_sync(tmp_path, e2e_dir):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        "1",
        "--main_process_port",
        "29517",
        "-m",
        "textdiff",
        "train",
        str(TINY),
        "--output-dir",
        str(out),
        "--quiet",
        "--samples",
        "1",
        "--set",
        "train.max_steps=4",
        "--set",
        "data.max_train_samples=200",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = records(out)[-1]
    assert final["world_size"] == 2
    assert final["ranks_in_sync"] and len(final["param_checksums"]) == 2


def test_keep_best_keeps_the_weights_of_the_lowest_validation_loss(tmp_path, e2e_dir):
    from safetensors.torch import load_file

    out = tmp_path / "best"
    extra = ["train.eval_every=2", "train.save_every=2", "train.keep_checkpoints=4"]
    result = train(tiny(out, *extra, "train.keep_best=true", "train.lr=0.05"), progress=False)
    valid = [r for r in records(out) if r["split"] == "valid"]
    best = min(valid, key=lambda r: r["loss"])
    assert result.best == (best["step"], best["loss"])
    final = records(out)[-1]
    assert (final["best_step"], final["best_loss"]) == result.best
    kept = load_file(out / "best-model" / "model.safetensors")
    checkpoint = out / "checkpoints" / f"step-{best['step']:08d}" / "model"  # its EMA weights
    at_best = load_file(checkpoint / "model.safetensors")
    assert kept.keys() == at_best.keys()
    assert all((kept[k] == at_best[k]).all() for k in kept)
    if best["step"] != 8:  # the final weights differ from the best ones
        last = load_file(result.model_dir / "model.safetensors")
        assert any((kept[k] != last[k]).any() for k in kept)
    assert TextDiffusionPipeline.from_pretrained(out / "best-model").generate(1, num_steps=4)


def test_patience_stops_after_that_many_evaluations_without_a_lower_loss(
    tmp_path, e2e_dir, monkeypatch
):
    import textdiff.infra.trainer as trainer_module

    # best at step 2; no later evaluation beats it
    losses = itertools.chain([3.0, 2.0, 2.5, 2.0], itertools.repeat(2.2))
    monkeypatch.setattr(trainer_module, "validation_record", lambda trainer: {"loss": next(losses)})
    out = tmp_path / "patient"
    sets = ["train.eval_every=1", "train.save_every=100", "train.patience=2"]
    result = train(tiny(out, *sets, "train.keep_best=true"), progress=False)
    assert result.steps == 4 and result.best == (2, 2.0) and result.stopped_early
    final = records(out)[-1]
    assert final["stopped_early"] == 4 and final["best_step"] == 2
    assert (out / "checkpoints" / "step-00000004").is_dir()  # saved where it stopped
    again = train(tiny(out, *sets, "train.keep_best=true"), resume=True, progress=False)
    assert again.steps == 4  # a resumed run that had stopped stays stopped
    longer = ["train.eval_every=1", "train.save_every=100", "train.patience=3"]
    grown = train(tiny(out, *longer), resume=True, progress=False)  # unless it grew
    assert grown.steps == 5 and grown.best is None  # (best-model/ is keep_best's)
    assert records(out)[-1]["stopped_early"] == 5
    ran_out = train(
        tiny(out, "train.eval_every=1", "train.patience=9"), resume=True, progress=False
    )
    assert ran_out.steps == 8 and not ran_out.stopped_early
    assert "stopped_early" not in records(out)[-1]


def test_keep_best_without_validation_split_is_refused(tmp_path, e2e_dir):
    from textdiff.infra.data import DataError

    train_file = str(Path(e2e_dir) / "src1_train.txt")
    sets = ["train.keep_best=true", "data.data_files={}", f"data.data_files.train={train_file}"]
    cfg = load_config(TINY, [f"train.output_dir={tmp_path / 'run'}", *sets])
    with pytest.raises(DataError, match="keep_best needs a validation split"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()
    cfg = load_config(TINY, [f"train.output_dir={tmp_path / 'run'}", "train.patience=2", *sets[1:]])
    with pytest.raises(DataError, match="patience needs a validation split"):
        train(cfg, progress=False)
