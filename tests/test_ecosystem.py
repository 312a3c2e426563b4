"""textdiff among the libraries around it: transformers' Auto classes, the Hugging Face hub (a
local fake: the hub is never reached), devices, accelerate's settings and trackers, the
datasets cache, the caller's own datasets, plots, and the command line's feedback."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

from textdiff.infra.cli import build_parser, main
from textdiff.infra.config import ConfigError, load_config
from textdiff.infra.data import DataError, load_text_splits, text_splits
from textdiff.infra.runfolder import MANIFEST_FILE, RunLock
from textdiff.infra.trainer import train
from textdiff.models.hub import HubError
from textdiff.models.modeling import TextDiffusionModel, make_config
from textdiff.models.pipeline import (
    DeviceError,
    ModelFolderError,
    TextDiffusionPipeline,
    default_device,
    resolve_device,
)
from textdiff.models.tokenization import encode, train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
SMALL = [
    "train.max_steps=4",
    "train.save_every=2",
    "train.log_every=1",
    "train.eval_every=2",
    "train.eval_samples=1",
    "train.eval_batches=1",
    "train.batch_size=8",
    "sample.steps=2",
]
WORDS = "the a cheap pub near river serves food with high rating family friendly".split()


def sentences(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 9, (n,), generator=g).tolist()
    return [
        " ".join(WORDS[i] for i in torch.randint(len(WORDS), (k,), generator=g).tolist())
        for k in lengths
    ]


def refuse(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.strip()


def run_python(code: str, *args: str, env: dict | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained tiny Gaussian model folder, saved as training saves one."""
    tok = train_tokenizer(sentences(200), min_frequency=1)
    cfg = load_config(TINY)
    ids = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    hf = make_config(cfg.network_config(len(tok)), cfg.process, cfg.sample, mask_token_id=2, **ids)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("saved") / "model"
    TextDiffusionPipeline(TextDiffusionModel(hf), tok).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def small_data(small_e2e_files) -> list[str]:
    return [small_e2e_files, *SMALL]


def train_args(out: Path, sets: list[str], *extra: str) -> list[str]:
    flags = [a for s in sets for a in ("--set", s)]
    return ["train", str(TINY), "--output-dir", str(out), *flags, "--samples", "0", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_data) -> Path:
    """``textdiff train`` of 4 steps reporting to TensorBoard, checkpoints at steps 2 and 4."""
    pytest.importorskip("tensorboard")
    out = tmp_path_factory.mktemp("runs") / "tb"
    assert main(train_args(out, [*small_data, "train.report_to=tensorboard"], "--quiet")) == 0
    return out


# ------------------------------------------------------------------ transformers' Auto classes

AUTO = """
import sys
import textdiff
assert "torch" not in sys.modules and "transformers" not in sys.modules, "import is not light"
from transformers import AutoConfig, AutoModel, AutoTokenizer
model = AutoModel.from_pretrained(sys.argv[1])
tok = AutoTokenizer.from_pretrained(sys.argv[1])
print(type(AutoConfig.from_pretrained(sys.argv[1])).__name__, type(model).__name__)
print(tok.model_max_length, len(tok))
"""

AUTO_FIRST = """
import sys
from transformers import AutoModel
import textdiff
print(type(AutoModel.from_pretrained(sys.argv[1])).__name__)
"""

REMOTE_CODE = """
import sys
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
print(type(model).__module__, type(model).__name__, "textdiff" in sys.modules)
"""


def test_import_textdiff_registers_the_auto_classes_without_importing_torch(model_dir):
    out = run_python(AUTO, str(model_dir)).split("\n")
    assert out[0] == "TextDiffusionConfig TextDiffusionModel"
    assert out[1] == f"32 {len(TextDiffusionPipeline.from_pretrained(model_dir).tokenizer)}"
    assert run_python(AUTO_FIRST, str(model_dir)).strip() == "TextDiffusionModel"


def test_importing_a_submodule_first_registers_quietly():
    """``from textdiff.infra.classify import ...`` (the README's control example) loads
    transformers' Auto modules mid-import: no warning, and the classes are registered."""
    code = (
        "import textdiff.infra.classify\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "print('textdiff' in CONFIG_MAPPING)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "True" and "could not register" not in proc.stderr, proc.stderr


def test_a_saved_config_names_its_classes_for_remote_code(model_dir, tmp_path):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "textdiff_auto.TextDiffusionConfig",
        "AutoModel": "textdiff_auto.TextDiffusionModel",
    }
    assert json.loads((model_dir / "tokenizer_config.json").read_text())["model_max_length"] == 32
    out = run_python(REMOTE_CODE, str(model_dir), env={"HF_MODULES_CACHE": str(tmp_path)})
    assert out.split() == ["textdiff.models.modeling", "TextDiffusionModel", "True"]


def test_the_saved_length_adds_no_transformers_warning(model_dir):
    long = json.dumps([" ".join(["the"] * 40), 2])  # refused by textdiff's own check, alone
    args = ["-m", "textdiff", "generate", str(model_dir), "-n", "1", "--template", long]
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "more than the 32 the model generates" in proc.stderr


def test_a_model_folder_has_a_model_card(model_dir):
    card = (model_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: textdiff\n")
    assert "`gaussian` noise" in card and "Not recorded" in card
    assert "TextDiffusionPipeline.from_pretrained" in card


# --------------------------------------------------------------------------------- the hub


def hub_fake(monkeypatch, hub: Path) -> list[dict]:
    """``huggingface_hub`` answered from ``hub/<namespace>/<name>`` folders; returns the calls."""
    import huggingface_hub

    calls: list[dict] = []

    def snapshot_download(repo_id, **kwargs):
        calls.append({"download": repo_id, **kwargs})
        if not (hub / repo_id).is_dir():
            from huggingface_hub.errors import RepositoryNotFoundError

            err = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
            Exception.__init__(err, "404")
            raise err
        return str(hub / repo_id)

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, **kwargs):
            calls.append({"create": repo_id, **kwargs})

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            calls.append({"upload": repo_id, "files": sorted(os.listdir(folder_path)), **kwargs})
            shutil.copytree(folder_path, hub / repo_id, dirs_exist_ok=True)
            return f"https://hub.example/{repo_id}/commit/1"

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return calls


def test_push_to_hub_and_load_by_hub_id(model_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    calls = hub_fake(monkeypatch, tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    pipe = TextDiffusionPipeline.from_pretrained(model_dir)
    url = pipe.push_to_hub("someone/tiny", private=True)
    assert url == "https://hub.example/someone/tiny/commit/1"
    assert calls[0] == {"create": "someone/tiny", "private": True, "exist_ok": True}
    uploaded = set(calls[1]["files"])
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= uploaded
    again = TextDiffusionPipeline.from_pretrained("someone/tiny", revision="main")
    assert calls[2]["download"] == "someone/tiny" and calls[2]["revision"] == "main"
    assert "model.safetensors" in calls[2]["allow_patterns"]
    assert again.generate(3, num_steps=4, seed=1) == pipe.generate(3, num_steps=4, seed=1)
    assert again.model_card == (model_dir / "README.md").read_text()
    with pytest.raises(ModelFolderError, match="neither a local folder nor a model on the"):
        TextDiffusionPipeline.from_pretrained("someone/missing")


def test_without_network_a_hub_id_is_one_line(model_dir, capsys, monkeypatch):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # tests never reach the hub
    with pytest.raises(HubError, match="offline mode is on") as e:
        TextDiffusionPipeline.from_pretrained("nobody/no-such-model")
    assert "\n" not in str(e.value)
    line = refuse(capsys, ["generate", "nobody/no-such-model", "-n", "1"])
    assert "is not a local folder, offline mode is on" in line
    pipe = TextDiffusionPipeline.from_pretrained(model_dir)
    with pytest.raises(HubError, match="offline mode is on"):
        pipe.push_to_hub("someone/tiny")
    with pytest.raises(HubError, match="namespace/name"):
        pipe.push_to_hub("../not a repo")
    line = refuse(capsys, ["generate", "./no/such/folder", "-n", "1"])
    assert "does not exist" in line


# ------------------------------------------------------------------------------- devices


def test_devices(model_dir, capsys):
    pipe = TextDiffusionPipeline.from_pretrained(model_dir, device="auto")
    expected = resolve_device("auto")
    assert pipe.device.type == expected.type
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu")
    assert pipe.generate(2, num_steps=3, seed=0) == pipe.generate(2, num_steps=3, seed=0)
    with pytest.raises(DeviceError, match="unknown device 'gpu0'"):
        pipe.to("gpu0")
    with default_device("cpu"):
        assert TextDiffusionPipeline.from_pretrained(model_dir).device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="'cuda:0' is not available on this machine"):
            pipe.to("cuda:0")
        assert "not available on this machine" in refuse(
            capsys, ["generate", str(model_dir), "--device", "cuda", "-n", "1"]
        )
        assert "not available" in refuse(capsys, ["evaluate", str(model_dir), "--device", "cuda"])


_GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None
_TENSOR_STEP = """
import ctypes, json, resource, torch
from textdiff.models.devices import reuse_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def step():  # a 64 MiB tensor made, written and freed, as a training step does
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    before = libc.mallinfo2()
    tensor = torch.ones(16 * 2**20).add_(1)
    during = libc.mallinfo2()
    del tensor
    after = libc.mallinfo2()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    # MiB mapped for this block alone, MiB of free heap kept once it is freed, page faults
    return (during.hblkhd - before.hblkhd) >> 20, after.fordblks >> 20, faults

def rounds():
    return [step() for _ in range(16)][1:]

print(json.dumps([rounds(), reuse_freed_memory(), rounds()]))
"""


def _tensor_steps(**env):
    """Run _TENSOR_STEP with glibc's own malloc (no LD_PRELOAD) unless ``env`` says otherwise."""
    env = {**{k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}, **env}
    out = subprocess.run(
        [sys.executable, "-c", _TENSOR_STEP], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(not _GLIBC, reason="glibc only")
def test_reuse_freed_memory_serves_large_tensors_from_a_kept_heap():
    """By default glibc maps a 64 MiB tensor afresh and unmaps it on free; after the call it
    comes from the heap, which keeps the block once freed for the next step to reuse."""
    default, took, reused = _tensor_steps()
    assert took is True
    assert all(mapped == 64 and kept < 64 for mapped, kept, _ in default), default
    assert all(mapped == 0 and kept >= 64 for mapped, kept, _ in reused), reused


@pytest.mark.slow
@pytest.mark.skipif(not _GLIBC, reason="glibc only")
def test_reuse_freed_memory_stops_page_faults_of_large_tensors():
    """What the kept heap is for: without it every 64 MiB tensor faults its 16,384 pages in
    afresh; with it they stay mapped once the heap has grown to fit the block with its
    alignment slack (a few steps, more or fewer with what glibc's per-thread cache of small
    chunks holds: not reproducible enough for the default suite)."""
    default, _, reused = _tensor_steps()
    assert all(faults > 10_000 for _, _, faults in default), default
    assert all(faults < 500 for _, _, faults in reused[-4:]), reused


@pytest.mark.skipif(not _GLIBC, reason="glibc only")
def test_reuse_freed_memory_leaves_another_allocator_alone():
    """With jemalloc or tcmalloc preloaded, glibc's settings would not reach torch's tensors:
    the call says it did nothing."""
    import ctypes.util

    found = [ctypes.util.find_library(name) for name in ("jemalloc", "tcmalloc_minimal")]
    preload = next((name for name in found if name), None)
    if preload is None:
        pytest.skip("no jemalloc or tcmalloc on this machine")
    _, took, _ = _tensor_steps(LD_PRELOAD=preload)
    assert took is False


# ------------------------------------------------------------------ accelerate's settings


def test_precision_and_accumulation_follow_accelerate_when_set(monkeypatch):
    from textdiff.infra.optimization import accumulation_steps, run_precision

    cpu = torch.device("cpu")
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.delenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", raising=False)
    assert run_precision("fp32", cpu) == "no" and run_precision("bf16", cpu) == "bf16"
    assert accumulation_steps(3) == 3
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # accelerate's default: defers
    assert run_precision("bf16", cpu) == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert run_precision("fp32", cpu) == "bf16"
    assert run_precision("fp16", torch.device("cuda")) == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert run_precision("fp32", torch.device("cuda")) == "fp16"
    with pytest.raises(ConfigError, match="fp16, which needs a GPU"):
        run_precision("fp32", cpu)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    with pytest.raises(ConfigError, match="train.precision fp16 asks for fp16"):
        run_precision("fp16", cpu)
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    assert accumulation_steps(1) == 4
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "four")
    with pytest.raises(ConfigError, match="must be a positive integer"):
        accumulation_steps(1)


def test_accumulation_from_accelerate_is_what_trains(tmp_path, small_data, monkeypatch):
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "3")
    cfg = load_config(TINY, [*small_data, f"train.output_dir={tmp_path}", "train.max_steps=2"])
    result = train(cfg, progress=False)
    state_file = tmp_path / "checkpoints" / "step-00000002" / "trainer_state_0.json"
    state = json.loads(state_file.read_text())
    assert state["batch"] == 6 and state["tokens"] == 2 * 3 * 8 * 32  # 3 batches a step
    assert result.steps == 2


# ------------------------------------------------------------------------------ trackers


def test_tensorboard_events_beside_metrics(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "logs" / "textdiff"))
    events.Reload()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_loss = [(r["step"], r["loss"]) for r in metrics if r["split"] == "train"]
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in logged] == [s for s, _ in train_loss] == [1, 2, 3, 4]
    assert [v for _, v in logged] == pytest.approx([v for _, v in train_loss], rel=1e-6)
    assert "valid/acc_t0.5" in events.Tags()["scalars"]
    written = set(json.loads((run / MANIFEST_FILE).read_text())["files"])
    logs = (run / "logs").rglob("*")
    files = {f"logs/{p.relative_to(run / 'logs').as_posix()}" for p in logs if p.is_file()}
    assert files <= written


def test_a_resumed_run_logs_each_step_once(tmp_path, small_data):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    sets = [*small_data, "train.report_to=tensorboard", "train.eval_every=4"]
    assert main(train_args(out, sets, "--quiet", "--no-plots")) == 0
    shutil.rmtree(out / "checkpoints" / "step-00000004")  # resume from step 2: 3, 4 again
    assert main(train_args(out, sets, "--quiet", "--no-plots", "--resume")) == 0
    events = EventAccumulator(str(out / "logs" / "textdiff"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert main(train_args(out, sets, "--quiet", "--no-plots", "--overwrite")) == 0


def test_trackers_are_checked_before_anything_is_written(tmp_path, small_data, monkeypatch):
    from accelerate import tracking

    with pytest.raises(ConfigError, match="not a tracker textdiff knows"):
        load_config(TINY, ["train.report_to=tensorbored"])
    with pytest.raises(ConfigError, match="none goes alone"):
        load_config(TINY, ["train.report_to=none,wandb"])
    monkeypatch.setattr(tracking, "get_available_trackers", lambda: [])
    out = tmp_path / "out"
    cfg = load_config(TINY, [*small_data, f"train.output_dir={out}", "train.report_to=wandb"])
    with pytest.raises(ConfigError, match="wandb, which is not installed; pip install wandb"):
        train(cfg, progress=False)
    assert not out.exists()


# ------------------------------------------------------- model folders: final and checkpoints


def test_the_run_writes_model_cards_and_checkpoints_load_as_models(run):
    card = (run / "model" / "README.md").read_text()
    assert "`train.txt` (text file, column `text`), its first 2,000 rows" in card
    assert "4 optimizer steps, 8 sentences a step" in card and "Validation at step 4" in card
    final = TextDiffusionPipeline.from_pretrained(run)  # a run folder: its model/
    checkpoint = run / "checkpoints" / "step-00000002"
    early = TextDiffusionPipeline.from_pretrained(checkpoint)
    assert "2 optimizer steps of 4 (an intermediate checkpoint)" in early.model_card
    assert not torch.equal(early.model.word_table(), final.model.word_table())
    last = TextDiffusionPipeline.from_pretrained(run / "checkpoints" / "step-00000004")
    for a, b in zip(last.model.parameters(), final.model.parameters(), strict=True):
        assert torch.equal(a, b)  # the last checkpoint holds the final (EMA) weights
    from transformers import AutoModel

    model = AutoModel.from_pretrained(checkpoint / "model")
    assert type(model) is TextDiffusionModel
    assert not (checkpoint / "ema.safetensors").exists()


# ------------------------------------------------------------------------ datasets' cache


def test_a_second_run_reads_the_tokenized_cache(tmp_path, small_data, caplog, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO, logger="textdiff.infra.batching")
    sets = [*small_data, "train.max_steps=1", "train.eval_every=1", "train.save_every=1"]
    for name in ("first", "second"):
        assert main(train_args(tmp_path / name, sets, "--quiet", "--no-plots")) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "textdiff.infra.batching"]
    first = [line for line in lines if "tokenized" in line and "texts in" in line]
    second = [line for line in lines if "tokenized rows from the cache" in line]
    assert [line.split(":")[0] for line in first] == ["train", "validation"]
    assert [line.split(":")[0] for line in second] == ["train", "validation"]
    assert all(str(tmp_path / "cache") in line for line in first + second)
    a, b = (
        TextDiffusionPipeline.from_pretrained(tmp_path / name / "model")
        for name in ("first", "second")
    )
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_cached_rows_are_the_tokenizer_s_rows(tmp_path, monkeypatch):
    from textdiff.infra.batching import tokenize_split

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "train.txt").write_text("\n".join(sentences(300)) + "\n", encoding="utf-8")
    cfg = load_config(None, [f"data.data_files={{train: {tmp_path / 'train.txt'}}}"]).data
    texts = sentences(300)
    tok = train_tokenizer(texts, min_frequency=1)
    for packing in ("pad", "pad", "chunk", "chunk"):
        split = tokenize_split(load_text_splits(cfg)["train"], tok, 6, packing=packing)
        if packing == "pad":
            ids, cut = encode(tok, texts, 6)
            assert torch.equal(split.ids, ids) and split.num_truncated == cut
        else:
            rows = tok(texts, add_special_tokens=False)["input_ids"]
            stream = [i for row in rows for i in [*row, tok.eos_token_id]]
            stream += [tok.pad_token_id] * (-len(stream) % 6)
            assert torch.equal(split.ids, torch.tensor(stream).view(-1, 6))


# ---------------------------------------------------------------- the caller's own datasets


def test_train_takes_a_dataset_dict_and_an_iterable_dataset(tmp_path, capsys):
    texts = sentences(400, seed=1)
    data = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"sentence": texts[:360]}),
            "validation": datasets.Dataset.from_dict({"sentence": texts[360:]}),
        }
    )
    sets = [*SMALL, "data.format=plain", "data.column=sentence", "data.min_frequency=2"]
    sets.append("train.max_steps=2")
    cfg = load_config(TINY, [*sets, f"train.output_dir={tmp_path / 'dict'}"])
    result = train(cfg, dataset=data, progress=True)
    assert "tokens/s" in capsys.readouterr().err  # the bar shows the throughput
    assert result.steps == 2 and result.last_eval
    card = (result.model_dir / "README.md").read_text()
    assert "a `datasets` DatasetDict passed to `train(cfg, dataset=...)`" in card
    stream = data["train"].to_iterable_dataset()
    cfg = load_config(TINY, [*sets, f"train.output_dir={tmp_path / 'stream'}"])
    result = train(cfg, dataset=stream, progress=False)
    assert result.steps == 2 and "loss" not in result.last_eval  # no validation split
    with pytest.raises(DataError, match="dataset= takes a datasets Dataset"):
        text_splits(cfg.data, texts)
    with pytest.raises(DataError, match="split 'train' is a list"):
        text_splits(cfg.data, {"train": texts})


def test_training_on_a_given_dataset_resumes_exactly(tmp_path):
    data = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": sentences(300)})})
    sets = [*SMALL, "data.format=plain", "data.min_frequency=2", "train.eval_every=100"]

    def weights(out: Path, resume: bool = False) -> list[torch.Tensor]:
        cfg = load_config(TINY, [*sets, f"train.output_dir={out}"])
        result = train(cfg, dataset=data, progress=False, resume=resume)
        pipe = TextDiffusionPipeline.from_pretrained(result.model_dir)
        return [p.detach().clone() for p in pipe.model.parameters()]

    straight = weights(tmp_path / "straight")
    weights(tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step-00000004")  # back to step 2
    resumed = weights(tmp_path / "cut", resume=True)
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------- plots


def test_textdiff_plot_writes_the_pngs(run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    assert main(["plot", str(run)]) == 0
    paths = [Path(line.split(" ", 1)[1]) for line in capsys.readouterr().out.splitlines()]
    assert [p.name for p in paths] == ["training_curves.png", "acc_by_t.png"]
    for path in paths:
        assert path.parent == run / "figures" and imread(path).shape[0] > 300
    written = set(json.loads((run / MANIFEST_FILE).read_text())["files"])
    assert {"figures/training_curves.png", "figures/acc_by_t.png"} <= written
    assert main(["plot", str(run), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "acc_by_t.png").is_file()
    lock = RunLock(run)  # a trainer holds the run: its folder is not written meanwhile
    try:
        assert "--out DIR plots elsewhere" in refuse(capsys, ["plot", str(run)])
    finally:
        lock.release()
    assert "has no metrics.jsonl" in refuse(capsys, ["plot", str(tmp_path)])
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert "plots need matplotlib" in refuse(capsys, ["plot", str(run), "--out", str(tmp_path)])


# ------------------------------------------------------------------------ the command line


def test_every_option_has_help_and_there_is_a_version(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"train", "generate", "evaluate", "plot"}
    for name, sub in commands.items():
        for action in sub._actions:
            if not isinstance(action, type(sub._actions[0])):  # not the -h action
                assert action.help, f"textdiff {name} {action.dest} has no help text"
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == "textdiff 0.1.0"


def test_python_m_textdiff_generates_without_library_chatter(model_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "textdiff", "generate", str(model_dir), "-n", "2", "--steps", "2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout.splitlines()) == 2
    assert "faiss" not in proc.stderr and "Loading weights" not in proc.stderr
