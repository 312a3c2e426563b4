"""A user's own corpus: sizes settled from the data (seq_len / embed_dim auto), the [UNK]
warning, and the word table's separation reported at the end of training."""

import dataclasses
import logging
import math
from pathlib import Path

import pytest
import torch

from textdiff.diffusion.rounding import Rounder
from textdiff.infra.config import load_config
from textdiff.infra.data import build_tokenizer, iter_texts, text_splits
from textdiff.infra.prepare import settle_sizes
from textdiff.models.config import auto_embed_dim

ROOT = Path(__file__).resolve().parent.parent


def corpus(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def settle(path: Path, **data):
    overrides = [f"data.data_files={{'train': '{path}'}}", "data.tokenizer_kind=word"]
    overrides += [f"data.{k}={v}" for k, v in data.items()]
    cfg = load_config(ROOT / "configs" / "lm.yaml", overrides)
    splits = text_splits(cfg.data)
    tokenizer = build_tokenizer(cfg.data, iter_texts(splits["train"]))
    return cfg, tokenizer, settle_sizes(cfg, tokenizer, splits["train"])


def test_seq_len_auto_is_the_99th_percentile_of_lengths_plus_eos(tmp_path):
    # 99 texts of 1..99 words and one of 300: the 99th percentile is 99 words, not the maximum
    lines = [" ".join(["word"] * n) for n in range(1, 100)] + [" ".join(["word"] * 300)]
    cfg, tokenizer, figures = settle(corpus(tmp_path, lines), min_frequency=1)
    assert cfg.model.seq_len == figures["seq_len"] == 104  # 99 + [EOS], up to a multiple of 8
    assert cfg.model.embed_dim == auto_embed_dim(len(tokenizer))
    assert figures["unk_share"] == 0 and figures["texts_measured"] == 100


def test_unk_share_is_measured_and_warned_about_above_two_percent(tmp_path, caplog):
    # "common" appears in every line; each line's other two words appear once
    lines = [f"common rare{i}a rare{i}b" for i in range(50)]
    path = corpus(tmp_path, lines)
    with caplog.at_level(logging.WARNING, logger="textdiff.infra.prepare"):
        _, _, figures = settle(path, min_frequency=2)
    assert figures["unk_share"] == pytest.approx(2 / 3)
    assert "[UNK]" in caplog.text and "min_frequency" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="textdiff.infra.prepare"):
        _, _, figures = settle(path, min_frequency=1)
    assert figures["unk_share"] == 0 and "[UNK]" not in caplog.text


def test_word_table_figures_show_rows_that_collapse():
    apart = Rounder(3.0 * torch.eye(6))
    figures = apart.table_figures()
    assert figures["roundtrip"] == 1.0
    assert figures["margin_min"] == pytest.approx(3.0 * math.sqrt(2), rel=1e-5)
    table = 3.0 * torch.eye(10)
    table[9] = table[8] + 1e-4  # two words almost on one point
    table[7] = table[6]  # two words on one point: one of them never comes back
    figures = Rounder(table).table_figures()
    assert figures["roundtrip"] == pytest.approx(9 / 10)
    assert figures["margin_min"] == pytest.approx(0.0, abs=1e-3)
    assert figures["margin_median"] == pytest.approx(3.0 * math.sqrt(2), rel=1e-5)


def test_the_mask_config_is_lm_yaml_with_a_table_for_mask_noise():
    # configs/lm-mask.yaml reads the same data with the same recipe (plus weight decay); the
    # network's input differs: a table as wide as the Transformer, free rows, no
    # self-conditioning column
    lm = load_config(ROOT / "configs" / "lm.yaml")
    mask = load_config(ROOT / "configs" / "lm-mask.yaml")
    assert mask.data == lm.data
    own = {"output_dir": lm.train.output_dir, "weight_decay": lm.train.weight_decay}
    assert dataclasses.replace(mask.train, **own) == lm.train and mask.train.weight_decay > 0
    assert (mask.process.noise, lm.process.noise) == ("mask", "gaussian")
    assert mask.model.embed_dim == mask.model.hidden_size
    assert mask.model.embed_norm is None and not mask.model.self_conditioning
    same = ("seq_len", "pos_dim", "hidden_size", "num_layers", "num_heads", "mlp_ratio")
    for name in (*same, "dropout", "rotary"):
        assert getattr(mask.model, name) == getattr(lm.model, name), name


def test_self_conditioning_on_a_mask_model_is_warned_about(caplog):
    # lm.yaml's self-conditioning columns would read zeros in a [MASK] model: say so, once per
    # load; lm-mask.yaml, the Gaussian lm.yaml and the AR mode (a causal LM) stay quiet
    mask = ["process.noise=mask", "process.schedule=linear", "sample.sampler=confidence"]
    ar = ["process.noise=autoregressive", "sample.sampler=ancestral", "sample.options={}"]
    with caplog.at_level(logging.WARNING, logger="textdiff.infra.config"):
        load_config(ROOT / "configs" / "lm.yaml", mask)
    assert "model.self_conditioning does nothing for mask models" in caplog.text
    for path, overrides in (("lm-mask.yaml", []), ("lm.yaml", []), ("lm.yaml", ar)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="textdiff.infra.config"):
            cfg = load_config(ROOT / "configs" / path, overrides)
        assert "self_conditioning" not in caplog.text, (path, overrides)
    assert cfg.model.self_conditioning  # the AR run's config keeps it: nothing reads it
