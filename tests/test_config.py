"""Typed configs: YAML mirrors the dataclasses, and every mistake names the valid choices."""

from pathlib import Path

import pytest

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
        ("sample:\n  sampler: euler\n", r"choose one of \['auto', 'ddpm', 'ddim', 'pc'\]"),
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


def test_settings_written_by_earlier_versions_load_under_todays_names(tmp_path):
    """``process.num_steps`` (textdiff ≤ 0.1) is the chain length ``process.chain_length``."""
    cfg = load_config(write(tmp_path, "process:\n  num_steps: 300\nsample:\n  steps: 50\n"))
    assert cfg.process.chain_length == 300
    with pytest.raises(ConfigError, match="at most 300 steps"):
        load_config(write(tmp_path, "process:\n  num_steps: 300\nsample:\n  steps: 500\n"))
