"""Data loading, typed errors, tokenizing / packing and the seeded batch order."""

import csv
import json
import logging
import os

import datasets
import pytest
import torch

from textdiff.infra.batching import StreamingSplit, TokenizedSplit, tokenize_split
from textdiff.infra.config import DataConfig
from textdiff.infra.data import DataError, build_tokenizer, iter_texts, load_text_splits
from textdiff.models.tokenization import encode, encode_rows, train_tokenizer

TEXTS = [
    "the cat sat on the mat .",
    "a dog ran to the park .",
    "the bird sang a song .",
    "the dog and the cat are friends .",
    "a cat saw a bird .",
]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, kind="word", min_frequency=1)


def write_lines(path, lines, end="\n"):
    path.write_text("".join(line + end for line in lines), encoding="utf-8")
    return str(path)


def write(tmp_path, builder, texts, column="text"):
    path = tmp_path / f"train.{ {'text': 'txt', 'json': 'jsonl'}.get(builder, builder) }"
    if builder == "text":
        write_lines(path, texts)
    elif builder == "json":
        write_lines(path, [json.dumps({column: t, "id": i}) for i, t in enumerate(texts)])
    elif builder == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", column])
            w.writerows(enumerate(texts))
    else:
        datasets.Dataset.from_dict({column: texts, "id": list(range(len(texts)))}).to_parquet(
            str(path)
        )
    return str(path)


def load(**kwargs):
    return load_text_splits(DataConfig(**kwargs))


def one_line_error(match, **kwargs):
    with pytest.raises(DataError, match=match) as e:
        load(**kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


# ----------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("builder", ["text", "json", "csv", "parquet"])
@pytest.mark.parametrize("streaming", [False, True])
def test_builders_give_back_the_texts(tmp_path, builder, streaming):
    column = "text" if builder == "text" else "sentence"
    path = write(tmp_path, builder, TEXTS, column)
    splits = load(dataset=builder, data_files={"train": path}, column=column, streaming=streaming)
    assert list(splits) == ["train"]
    assert list(iter_texts(splits["train"])) == TEXTS
    if not streaming:
        assert splits["train"].column_names == ["text"]


def test_e2e_format_splits_mr_and_sentence(tmp_path):
    lines = ["name : A | food : B||A serves B . ", "name : C||C is near D . "]
    path = write_lines(tmp_path / "e2e.txt", lines)
    train = load(format="e2e", data_files={"train": path})["train"]
    assert train["text"][:] == ["A serves B .", "C is near D ."]
    assert train["condition"][:] == ["name : A | food : B", "name : C"]


def test_e2e_venue_augmentation_appends_a_swapped_copy_of_every_training_row(tmp_path):
    from textdiff.infra.config import ConfigError
    from textdiff.infra.e2e import parse_mr

    names = ["The Eagle", "Aromi", "Zizzi", "The Mill", "Cotto", "Strada"]
    lines = [
        f"name : {n} | food : Thai | near : Burger King||{n} near Burger King is Thai ."
        for n in names
    ]
    lines += [f"name : {n} | area : riverside||{n.lower()} is on the riverside ." for n in names]
    path = write_lines(tmp_path / "e2e.txt", lines)
    valid = write_lines(tmp_path / "v.txt", lines[:1])
    splits = load(
        format="e2e", data_files={"train": path, "validation": valid}, augment="e2e_venues"
    )
    train = splits["train"]
    assert len(train) == 24 and len(splits["validation"]) == 1  # only training rows are copied
    assert train["text"][:12] == [line.split("||")[1].strip() for line in lines]
    changed = 0
    copies = zip(train["condition"][:12], train["condition"][12:], train["text"][12:], strict=True)
    for old, condition, text in copies:
        before, after = dict(parse_mr(old)), dict(parse_mr(condition))
        assert after.keys() == before.keys() and after.get("near") != after["name"]
        assert after.get("food") == before.get("food") and after.get("area") == before.get("area")
        assert after["name"] in text and after.get("near", "") in text  # MR and sentence agree
        if after["name"] != before["name"]:
            changed += 1
            assert before["name"].lower() not in text.lower()
    assert changed >= 6
    with pytest.raises(ConfigError, match="format: e2e"):
        load(data_files={"train": path}, augment="e2e_venues")


def test_lowercase_blank_lines_and_max_train_samples(tmp_path):
    path = write_lines(tmp_path / "t.txt", ["The Cat .", "", "A DOG .", "   ", "x"])
    valid = write_lines(tmp_path / "v.txt", ["One", "Two", "Three"])
    cfg = dict(data_files={"train": path, "validation": valid}, lowercase=True)
    splits = load(**cfg, max_train_samples=3)
    assert splits["train"]["text"][:] == ["the cat .", "a dog ."]
    assert splits["validation"]["text"][:] == ["one", "two", "three"]


def test_missing_file_is_named(tmp_path):
    missing = str(tmp_path / "nope.txt")
    msg = one_line_error("does not exist", data_files={"train": missing})
    assert missing in msg


def test_missing_column_lists_columns(tmp_path):
    path = write(tmp_path, "csv", TEXTS, column="sentence")
    msg = one_line_error("no column 'text'", dataset="csv", data_files={"train": path})
    assert "sentence" in msg and "id" in msg


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_empty_split_is_named(tmp_path, content):
    train = write_lines(tmp_path / "t.txt", TEXTS)
    (tmp_path / "v.txt").write_text(content, encoding="utf-8")
    files = {"train": train, "validation": str(tmp_path / "v.txt")}
    one_line_error("split 'validation' is empty", data_files=files)


@pytest.mark.parametrize("streaming", [False, True])
def test_invalid_utf8_is_named(tmp_path, streaming):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait\nna\xefve\n".encode("latin-1"))
    msg = one_line_error("UTF-8", data_files={"train": str(path)}, streaming=streaming)
    assert "re-encode" in msg
    assert str(path) in msg or streaming


def test_unreachable_hub_suggests_local_files():
    assert datasets.config.HF_DATASETS_OFFLINE or datasets.config.HF_HUB_OFFLINE
    msg = one_line_error("offline", dataset="textdiff-made-up-org/made-up-corpus")
    assert "dataset: text" in msg and "data_files" in msg


def test_e2e_line_without_separator(tmp_path):
    path = write_lines(tmp_path / "e2e.txt", ["name : A||A is good .", "just a sentence"])
    msg = one_line_error("'\\|\\|'", format="e2e", data_files={"train": path})
    assert "line 2" in msg


def test_build_tokenizer_trains_or_loads(tmp_path):
    trained = build_tokenizer(DataConfig(min_frequency=2), TEXTS)
    assert "cat" in trained.get_vocab() and "mat" not in trained.get_vocab()
    trained.save_pretrained(tmp_path / "tok")
    loaded = build_tokenizer(DataConfig(tokenizer=str(tmp_path / "tok")), ["ignored"])
    assert loaded.get_vocab() == trained.get_vocab()


# ------------------------------------------------------------------------------ tokenizing


def test_pad_packing_keeps_conditions_and_logs_truncation(tmp_path, tok, caplog):
    lines = [f"mr {i}||{t}" for i, t in enumerate(TEXTS)]
    train = load(format="e2e", data_files={"train": write_lines(tmp_path / "e.txt", lines)})
    with caplog.at_level(logging.WARNING, logger="textdiff.infra.data"):
        split = tokenize_split(train["train"], tok, seq_len=7, name="train")
    expected, cut = encode(tok, TEXTS, 7)
    assert torch.equal(split.ids, expected)
    assert split.cond == [f"mr {i}" for i in range(len(TEXTS))]
    too_long = sum(len(t.split()) > 6 for t in TEXTS)
    assert 0 < too_long < len(TEXTS)
    assert split.num_truncated == cut == too_long and split.num_texts == len(TEXTS)
    assert f"train: {too_long} of {len(TEXTS)} lines" in caplog.text


def test_pad_packing_marks_the_rows_it_cut(tmp_path, tok):
    lines = [f"a cat||{t}" for t in TEXTS] + ["the dog and the cat are friends .||a cat ."]
    train = load(format="e2e", data_files={"train": write_lines(tmp_path / "e.txt", lines)})
    split = tokenize_split(train["train"], tok, seq_len=7, name="train")
    long = [len(t.split()) > 6 for t in TEXTS] + [False]
    assert split.truncated.tolist() == long and split.num_truncated == sum(long)
    ids, cut = encode_rows(tok, TEXTS, 7)
    assert cut.tolist() == long[:-1] and torch.equal(ids, encode(tok, TEXTS, 7)[0])
    # data-to-text rows: cut when the condition or the sentence was cut
    pairs = tokenize_split(train["train"], tok, seq_len=12, name="train", condition_len=4)
    assert pairs.truncated.tolist() == [len(t.split()) > 7 for t in TEXTS] + [True]
    assert pairs.num_truncated == int(pairs.truncated.sum())


def test_chunk_packing_reconstructs_the_stream(tmp_path, tok):
    train = load(data_files={"train": write_lines(tmp_path / "t.txt", TEXTS)})["train"]
    split = tokenize_split(train, tok, seq_len=8, packing="chunk")
    stream = [i for t in TEXTS for i in [*tok(t, add_special_tokens=False)["input_ids"], 1]]
    flat = split.ids.flatten().tolist()
    assert split.ids.shape[1] == 8 and len(flat) - len(stream) < 8
    assert flat[: len(stream)] == stream
    assert set(flat[len(stream) :]) <= {tok.pad_token_id}
    assert split.num_truncated == 0 and split.cond is None


# ------------------------------------------------------------------------------- batching


@pytest.fixture
def rows():
    n, seq_len = 23, 3
    return TokenizedSplit(torch.arange(n).unsqueeze(1).repeat(1, seq_len), num_texts=n)


def order(split, batch_size, **kwargs):
    return [b[:, 0].tolist() for b in split.batches(batch_size, **kwargs)]


def test_batches_are_seeded_per_epoch(rows):
    a = order(rows, 4, seed=1, epoch=0)
    assert a == order(rows, 4, seed=1, epoch=0)
    assert a != order(rows, 4, seed=1, epoch=1)
    assert len(a) == rows.num_batches(4) == 5 and all(len(b) == 4 for b in a)


def test_an_epoch_covers_every_row_once(rows):
    batches = order(rows, 4, seed=0, epoch=3, drop_last=False)
    assert len(batches) == rows.num_batches(4, drop_last=False) == 6
    assert sorted(i for b in batches for i in b) == list(range(len(rows)))


def test_start_skips_exactly(rows):
    full = order(rows, 4, seed=5, epoch=2)
    assert order(rows, 4, seed=5, epoch=2, start=3) == full[3:]


@pytest.mark.parametrize("drop_last", [True, False])
def test_rank_shards_are_disjoint_and_form_the_global_batch(rows, drop_last):
    world = 3
    single = order(rows, 2 * world, seed=7, epoch=1, drop_last=drop_last)
    shards = [
        order(rows, 2, seed=7, epoch=1, drop_last=drop_last, rank=r, world_size=world)
        for r in range(world)
    ]
    assert all(len(s) == len(single) for s in shards)
    for b, batch in enumerate(single):
        parts = [s[b] for s in shards]
        assert sum(parts, []) == batch
        assert len(set(sum(parts, []))) == sum(map(len, parts))


def test_too_few_rows_for_one_batch(rows):
    with pytest.raises(DataError, match="fewer than one batch"):
        next(rows.batches(len(rows) + 1, seed=0, epoch=0))


# ------------------------------------------------------------------------------ streaming


def test_streaming_batches(tmp_path, tok):
    lines = [TEXTS[i % len(TEXTS)] + f" {i}" for i in range(50)]
    cfg = DataConfig(data_files={"train": write_lines(tmp_path / "s.txt", lines)}, streaming=True)
    stream = tokenize_split(load_text_splits(cfg)["train"], tok, seq_len=8)
    assert isinstance(stream, StreamingSplit)
    batches = list(stream.iter_batches(4, seed=0, buffer_size=16))
    assert len(batches) == 50 // 4 and all(b.shape == (4, 8) for b in batches)
    assert stream.num_texts == 48 and stream.num_truncated > 0
    again = list(stream.iter_batches(4, seed=0, skip_batches=2, buffer_size=16))
    assert all(torch.equal(a, b) for a, b in zip(again, batches[2:], strict=True))
    same = list(stream.batches(4, seed=0, epoch=0, start=2))  # TokenizedSplit's interface
    assert len(same) == len(batches) - 2 and all(b.shape == (4, 8) for b in same)
    other = list(stream.iter_batches(4, seed=0, epoch=1, buffer_size=16))
    assert any(not torch.equal(a, b) for a, b in zip(other, batches, strict=True))

    chunked = tokenize_split(load_text_splits(cfg)["train"], tok, seq_len=8, packing="chunk")
    shapes = {b.shape for b in chunked.iter_batches(3, 0)}
    assert shapes == {torch.Size([3, 8])}


def test_real_e2e_validation_split(e2e_dir):
    path = os.path.join(e2e_dir, "src1_valid.txt")
    valid = load(format="e2e", data_files={"validation": path})["validation"]
    with open(path, encoding="utf-8") as f:
        pairs = [line.split("||") for line in f]
    assert len(valid) == len(pairs)
    assert valid[:3]["text"] == [s.strip() for _, s in pairs[:3]]
    assert valid[:3]["condition"] == [m.strip() for m, _ in pairs[:3]]
