"""Typed configs: YAML mirrors the dataclasses, and every mistake names the valid choices."""

from pathlib import Path

import pytest

from textdiff.diffusion.settings import ProcessConfig
from textdiff.infra.config import ConfigError, ExperimentConfig, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    for f in cfg.data.data_files.values():  # relative to the YAML file, so absolute now
        assert Path(f).is_absolute()


def test_unknown_key_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'model.hidden'.*hidden_size"):
        load_config(write(tmp_path, "model:\n  hidden: 3\n"))


def test_wrong_type_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="model.num_layers: expected int, got str"):
        load_config(write(tmp_path, "model:\n  num_layers: six\n"))
    with pytest.raises(ConfigError, match="expected int, got bool"):
        load_config(write(tmp_path, "train:\n  max_steps: true\n"))


def test_ints_widen_to_floats_and_null_is_allowed_where_optional(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 1\nprocess:\n  chain_length: null\n"))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.process.chain_length is None
    # YAML 1.1 reads 1e-3 as a string; a float field takes it, an int field does not
    assert load_config(write(tmp_path, "train:\n  lr: 1e-3\n")).train.lr == 0.001
    assert load_config(write(tmp_path, "train:\n  lr: 1\n"), ["train.lr=2e-4"]).train.lr == 2e-4
    with pytest.raises(ConfigError, match="expected float"):
        load_config(write(tmp_path, "train:\n  lr: fast\n"))


@pytest.mark.parametrize(
    "text,match",
    [
        ("process:\n  noise: pink\n", r"choose one of \['gaussian', 'mask', 'autoregressive'\]"),
        ("process:\n  schedule: quadratic\n", r"choose one of \['cosine', 'linear', 'sqrt'\]"),
        ("process:\n  noise: mask\n  schedule: sqrt\n", r"choose one of \['cosine', 'linear'\]"),
        ("model:\n  embed_dim: 0\n", "model.embed_dim must be positive"),
        ("model:\n  hidden_size: 100\n  num_heads: 3\n", "divisible"),
        ("train:\n  max_steps: -5\n", "train.max_steps must be positive"),
        ("sample:\n  steps: 0\n", "sample.steps must be positive"),
        ("sample:\n  sampler: euler\n", r"choose one of \['auto', 'ddpm', 'ddim', 'pc', "),
        (
            "process:\n  noise: mask\n  schedule: linear\nsample:\n  clamp: true\n",
            "sample.clamp does not apply to mask models",
        ),
        (
            "process:\n  noise: mask\n  schedule: linear\nmodel:\n  output: embedding\n",
            "output=logits",
        ),
        ("train:\n  ema_decay: 1.5\n", r"\[0, 1\)"),
        ("process:\n  chain_length: 100\nsample:\n  steps: 200\n", "at most 100 steps"),
        ("sample:\n  top_p: 0.9\n", "sample.top_p does not apply to gaussian models"),
        ("process:\n  prediction: x0\nsample:\n  temperature: 0.5\n", "prediction=posterior"),
    ],
)
def test_invalid_values_are_refused(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


def test_overrides_apply_and_are_checked(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: 10\n")
    cfg = load_config(path, ["train.max_steps=3", "model.dropout=0.0", "data.column=body"])
    assert (cfg.train.max_steps, cfg.model.dropout, cfg.data.column) == (3, 0.0, "body")
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(path, ["train.maxsteps=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["train.max_steps"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [1,\n"))


def test_network_config_resolves_output_from_noise():
    cfg = ExperimentConfig()
    assert cfg.network_config(100).output == "embedding"
    cfg.process.noise, cfg.process.schedule = "mask", "linear"
    net = cfg.network_config(100)
    assert net.output == "logits" and net.vocab_size == 100


def test_readout_scale_auto_is_the_exact_rounding_posterior_for_rows_of_one_norm():
    import math

    import torch

    from textdiff.diffusion.gaussian import GaussianProcess
    from textdiff.models.modeling import TextDiffusionConfig, TextDiffusionModel

    sets = ["model.readout_scale=auto", "model.embed_norm=2", "model.embed_dim=8"]
    cfg = load_config(None, sets)
    net = cfg.network_config(50)
    a0 = float(GaussianProcess("sqrt").alpha_bar(0.0))
    assert math.isclose(net.readout_scale, math.sqrt(a0) / (1 - a0))
    # the tied read-out is then Bayes' rule for h_0 ~ N(√ᾱ_0 E_w, (1 − ᾱ_0) I), uniform prior
    torch.manual_seed(0)
    model = TextDiffusionModel(TextDiffusionConfig.from_parts(net, cfg.process, cfg.sample))
    table, h0 = model.word_table(), torch.randn(5, 8)
    bayes = torch.distributions.Normal(math.sqrt(a0) * table, math.sqrt(1 - a0))
    exact = bayes.log_prob(h0[:, None, :]).sum(-1).log_softmax(-1)
    assert torch.allclose(model.logits(h0).double().log_softmax(-1), exact.double(), atol=1e-3)
    assert load_config(None, sets[:1]).network_config(50).readout_scale == 1.0  # free rows
    mask = load_config(None, [*sets, "process.noise=mask", "process.schedule=linear"])
    assert mask.network_config(50).readout_scale == 1.0
    with pytest.raises(ConfigError, match="model.embed_norm must be positive"):
        load_config(None, ["model.embed_norm=-1"])


def test_settings_written_by_earlier_versions_load_under_todays_names(tmp_path):
    """``process.num_steps`` (textdiff ≤ 0.1) is the chain length ``process.chain_length``."""
    cfg = load_config(write(tmp_path, "process:\n  num_steps: 300\nsample:\n  steps: 50\n"))
    assert cfg.process.chain_length == 300
    with pytest.raises(ConfigError, match="at most 300 steps"):
        load_config(write(tmp_path, "process:\n  num_steps: 300\nsample:\n  steps: 500\n"))

    # a removed setting loads at the value that behaves as today, and is refused at any other
    text = "process:\n  self_condition_start: {}\n"
    assert load_config(write(tmp_path, text.format("zeros"))).process == ProcessConfig()
    with pytest.raises(ConfigError, match="self_condition_start: 'evidence' is no longer"):
        load_config(write(tmp_path, text.format("evidence")))


# ------------------------------------------------------------------ hostile values and files


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.min_lr_ratio=-50", r"train.min_lr_ratio must be in \[0, 1\]"),
        ("train.min_lr_ratio=1.5", r"train.min_lr_ratio must be in \[0, 1\]"),
        ("train.lr=.nan", "train.lr must be a finite number, got nan"),
        ("train.lr=.inf", "train.lr must be a finite number, got inf"),
        ("train.lr=1e999", "train.lr must be a finite number, got inf"),
        ("model.readout_scale=.nan", "model.readout_scale must be a finite number"),
        ("model.readout_scale=0", "model.readout_scale must be positive"),
        ("model.dropout=.nan", "model.dropout must be a finite number"),
        ("model.seq_len=1", r"model.seq_len must be ≥ 2"),
        ("model.mlp_ratio=0.001", "feed-forward layer of 0 units; raise model.mlp_ratio"),
        ("train.seed=-1", r"train.seed must be in \[0, 2147483647\], got -1"),
        ("train.seed=18446744073709551617", "train.seed must be an integer of at most 18 digits"),
        ("train.eval_samples=100000000", "train.eval_samples must be at most 10,000"),
        ("sample.steps=1000000000", "sample.steps must be at most 1,000,000"),
        ("sample.temperature=.nan", "sample.temperature must be a finite number"),
        ("sample.options={threshold: .inf}", "sample.options.threshold must be a finite number"),
        ("train.max_steps.x=3", "unknown config key 'train.max_steps.x'"),
        ("model=[unclosed", "--set model is not valid YAML: expected ',' or ']'"),
        ("data.max_train_samples=0", "data.max_train_samples must be positive or null"),
    ],
)
def test_every_value_is_range_checked(override, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(CONFIGS / "tiny.yaml", [override])
    assert "\n" not in str(info.value)


def test_mask_steps_have_an_upper_bound():
    sets = ["process.noise=mask", "process.schedule=linear", "sample.steps=1000000000"]
    with pytest.raises(ConfigError, match="sample.steps must be at most 1,000,000"):
        load_config(CONFIGS / "tiny.yaml", sets)


def test_a_section_given_as_a_mapping_keeps_its_other_keys():
    cfg = load_config(CONFIGS / "tiny.yaml", ["model={seq_len: 8}"])
    assert cfg.model.seq_len == 8 and cfg.model.hidden_size == 64  # tiny.yaml's, not 256
    cfg = load_config(CONFIGS / "tiny.yaml", ["process={num_steps: 300}"])  # old key name
    assert cfg.process.chain_length == 300 and cfg.process.schedule == "sqrt"
    # a mapping-valued setting is replaced, as documented
    cfg = load_config(CONFIGS / "tiny.yaml", ["data.data_files={train: a.txt}"])
    assert list(cfg.data.data_files) == ["train"]


def test_duplicate_keys_are_refused(tmp_path):
    text = "train:\n  max_steps: 3\nmodel:\n  seq_len: 8\ntrain:\n  lr: 0.1\n"
    with pytest.raises(ConfigError, match=r"key 'train' appears twice \(lines 1 and 5\)"):
        load_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match="key 'lr' appears twice"):
        load_config(write(tmp_path, "train:\n  lr: 0.1\n  lr: 0.2\n"))
    with pytest.raises(ConfigError, match="appears twice"):
        load_config(None, ["train={lr: 0.1, lr: 0.2}"])
    # a key that overrides what a YAML merge key brought in is not a duplicate
    text = "process: {<<: {schedule: sqrt, chain_length: 300}, schedule: cosine}\n"
    cfg = load_config(write(tmp_path, text))
    assert (cfg.process.schedule, cfg.process.chain_length) == ("cosine", 300)


def test_hostile_yaml_is_refused_in_bounded_time_and_memory(tmp_path):
    laughs = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i, name in enumerate("bcdefghij"):
        prev = "abcdefghij"[i]
        laughs.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(ConfigError, match="expands to more than 100,000 values"):
        load_config(write(tmp_path, "\n".join(laughs) + "\n"))
    inside = "data:\n  column: &x [1, 2]\n" + "\n".join(laughs).replace("a: &a", "q: &a")
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(write(tmp_path, inside))
    with pytest.raises(ConfigError, match="refers to the value that contains it"):
        load_config(write(tmp_path, "x: &a [*a]\n"))
    with pytest.raises(ConfigError, match="nests too deeply"):
        load_config(write(tmp_path, "[" * 3000 + "]" * 3000))
    with pytest.raises(ConfigError, match=r"expected str, got list \(\[\[\[\[...\]\]\]\]\)"):
        load_config(write(tmp_path, "data:\n  column: [[[[[[[[1]]]]]]]]\n"))
    with pytest.raises(ConfigError, match="must hold a mapping of sections"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="is not a UTF-8 text file"):
        load_config(path)
    with pytest.raises(ConfigError, match="is a folder; pass a YAML file"):
        load_config(tmp_path)
    path.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match="a config is a small YAML file"):
        load_config(path)


def test_urls_in_data_files_are_not_made_local_paths(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  data_files:\n    train: https://x.org/t.txt\n"))
    assert cfg.data.data_files["train"] == "https://x.org/t.txt"


def test_training_memory_is_checked_with_the_number_and_the_knob(monkeypatch):
    from textdiff import memory
    from textdiff.errors import ResourceError
    from textdiff.infra import resources as config

    cfg = load_config(CONFIGS / "tiny.yaml", ["model.seq_len=1000000000"])
    with pytest.raises(ResourceError, match=r"attention alone .* lower model.seq_len"):
        config.check_training_memory(cfg)
    cfg = load_config(CONFIGS / "tiny.yaml")
    config.check_training_memory(cfg)  # fits
    monkeypatch.setattr(memory, "machine_memory", lambda: 2**20)
    with pytest.raises(ResourceError, match=r"but this machine has 0.0 GiB; lower") as info:
        config.check_training_memory(cfg)
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert memory.machine_memory() > 2**28
