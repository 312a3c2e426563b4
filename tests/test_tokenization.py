"""Tokenizers: special ids, the E2E vocabulary, fixed-length encoding and save/load identity."""

import logging
import os
from collections import Counter

import pytest
import torch

from textdiff.models.tokenization import (
    EOS,
    MASK,
    PAD,
    SPECIAL_TOKENS,
    UNK,
    TokenizerError,
    decode,
    encode,
    load_tokenizer,
    train_tokenizer,
)

TEXTS = [
    "the cat sat on the mat .",
    "a dog ran to the park .",
    "the bird sang a song .",
    "the dog and the cat are friends .",
]


@pytest.fixture(scope="module")
def word_tok():
    return train_tokenizer(TEXTS, kind="word", min_frequency=1)


@pytest.fixture(scope="module")
def bpe_tok():
    return train_tokenizer(TEXTS * 5, kind="bpe", vocab_size=80)


def test_specials_come_first(word_tok, bpe_tok):
    assert SPECIAL_TOKENS == (PAD, EOS, MASK, UNK)
    for tok in (word_tok, bpe_tok):
        assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == list(SPECIAL_TOKENS)
        ids = (tok.pad_token_id, tok.eos_token_id, tok.mask_token_id, tok.unk_token_id)
        assert ids == (0, 1, 2, 3)


def test_word_vocab_keeps_words_seen_min_frequency_times():
    tok = train_tokenizer(["a a a b b c"], kind="word", min_frequency=2)
    assert set(tok.get_vocab()) == {*SPECIAL_TOKENS, "a", "b"}
    ids, _ = encode(tok, ["c a"], 4)
    assert ids[0, 0].item() == tok.unk_token_id


def test_e2e_vocabulary_is_821(e2e_dir):
    with open(os.path.join(e2e_dir, "src1_train.txt"), encoding="utf-8") as f:
        sentences = [line.split("||", 1)[1] for line in f]
    tok = train_tokenizer(sentences, kind="word", min_frequency=11)
    counts = Counter(w for s in sentences for w in s.split())
    assert set(tok.get_vocab()) == {*SPECIAL_TOKENS, *(w for w, c in counts.items() if c >= 11)}
    assert len(tok) == 821  # the vocabulary size Diffusion-LM reports for E2E


def test_encode_pads_truncates_counts_and_ends_with_eos(word_tok):
    seq_len = 6
    texts = ["the cat", "the cat sat on the", "the cat sat on the mat .", ""]
    ids, num_truncated = encode(word_tok, texts, seq_len)
    assert ids.shape == (4, seq_len) and ids.dtype == torch.long
    lengths = [len(word_tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert num_truncated == sum(n > seq_len - 1 for n in lengths) == 1
    for row, n in zip(ids.tolist(), lengths, strict=True):
        kept = min(n, seq_len - 1)
        assert row[kept] == word_tok.eos_token_id
        assert row.count(word_tok.eos_token_id) == 1
        assert all(i == word_tok.pad_token_id for i in row[kept + 1 :])
        assert word_tok.pad_token_id not in row[:kept]
    # no BOS / CLS: the first id is the first word
    assert ids[0, 0].item() == word_tok.convert_tokens_to_ids("the")


def test_decode_inverts_encode(word_tok, bpe_tok):
    for tok in (word_tok, bpe_tok):
        ids, _ = encode(tok, TEXTS, 16)
        assert decode(tok, ids) == TEXTS
        assert decode(tok, ids.tolist()) == TEXTS


def test_decode_stops_at_eos_and_drops_pad_and_mask(word_tok):
    the, cat = word_tok.convert_tokens_to_ids(["the", "cat"])
    eos, pad, mask = word_tok.eos_token_id, word_tok.pad_token_id, word_tok.mask_token_id
    ids = torch.tensor([[the, mask, pad, cat, eos, the, the], [pad, pad, pad, pad, pad, pad, pad]])
    assert decode(word_tok, ids) == ["the cat", ""]


def test_bpe_splits_words_and_round_trips(bpe_tok):
    unseen = "the cats sang to a bird ."  # "cats" never occurs whole
    ids, _ = encode(bpe_tok, [unseen], 32)
    assert bpe_tok.unk_token_id not in ids[0].tolist()
    assert decode(bpe_tok, ids) == [unseen]
    assert len(bpe_tok(unseen, add_special_tokens=False)["input_ids"]) > len(unseen.split())


def test_lowercase_tokenizer_ignores_case():
    tok = train_tokenizer(TEXTS, kind="word", min_frequency=1, lowercase=True)
    a, _ = encode(tok, ["The CAT sat ."], 8)
    b, _ = encode(tok, ["the cat sat ."], 8)
    assert torch.equal(a, b) and tok.unk_token_id not in a[0].tolist()


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_save_load_identity(tmp_path, word_tok, bpe_tok, kind):
    tok = word_tok if kind == "word" else bpe_tok
    tok.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert loaded.get_vocab() == tok.get_vocab()
    assert len(loaded) == len(tok)
    for role in ("pad_token_id", "eos_token_id", "mask_token_id", "unk_token_id"):
        assert getattr(loaded, role) == getattr(tok, role)
    texts = [*TEXTS, "an unseen zebra ."]
    a, _ = encode(tok, texts, 12)
    b, _ = encode(loaded, texts, 12)
    assert torch.equal(a, b)
    assert decode(loaded, b) == decode(tok, a)


def test_load_adds_missing_special_tokens(tmp_path, caplog):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # like GPT-2: one <|endoftext|> token serves as eos and unk; no pad, no mask
    end = "<|endoftext|>"
    tk = Tokenizer(models.WordLevel({end: 0, "a": 1, "b": 2}, unk_token=end))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    base = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=end, unk_token=end)
    base.save_pretrained(tmp_path / "gpt2like")
    with caplog.at_level(logging.WARNING, logger="textdiff.models.tokenization"):
        tok = load_tokenizer(str(tmp_path / "gpt2like"))
    assert len(tok) == 5 and "grew from 3 to 5" in caplog.text
    assert tok.eos_token == end
    assert tok.convert_ids_to_tokens([tok.pad_token_id, tok.mask_token_id]) == [PAD, MASK]
    ids, _ = encode(tok, ["a b", "b"], 4)
    pad = tok.pad_token_id
    assert ids.tolist() == [[1, 2, 0, pad], [2, 0, pad, pad]]
    assert decode(tok, ids) == ["a b", "b"]


def test_missing_folder_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "no-such-tokenizer")
    with pytest.raises(TokenizerError, match="does not exist") as e:
        load_tokenizer(missing)
    assert missing in str(e.value) and "\n" not in str(e.value)


def test_unreachable_hub_is_a_clear_error():
    with pytest.raises(TokenizerError, match="offline") as e:
        load_tokenizer("textdiff-made-up-org/made-up-tokenizer")
    assert "textdiff-made-up-org/made-up-tokenizer" in str(e.value) and "\n" not in str(e.value)
