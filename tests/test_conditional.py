"""Conditional generation: infilling templates, partial noising (data-to-text), classifier-free
guidance, and the E2E BLEU / slot-error evaluation."""

import csv
import io
import json
import math
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import Oracle

from textdiff.diffusion.absorbing import MaskProcess
from textdiff.diffusion.gaussian import GaussianProcess
from textdiff.diffusion.guidance import GuidedDenoiser, condition_positions, drop_conditions
from textdiff.infra.cli import main
from textdiff.infra.config import ConfigError, ModelConfig, ProcessConfig, SampleConfig, load_config
from textdiff.infra.e2e import (
    corpus_bleu,
    detokenize,
    parse_mr,
    read_references,
    slot_error_rate,
    slot_errors,
    to_source_mr,
)
from textdiff.models.modeling import TextDiffusionConfig, TextDiffusionModel
from textdiff.models.pipeline import TextDiffusionPipeline
from textdiff.models.template import TemplateError, parse_template
from textdiff.models.tokenization import encode, train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [
    "The Eagle is a coffee shop near Burger King .",
    "Loch Fyne serves cheap Indian food in the riverside area .",
    "name : The Eagle | Type : pub | food : Japanese",
    "name : Loch Fyne | food : Indian | price : cheap",
]
MR_A = "name : The Eagle | Type : pub | food : Japanese"
MR_B = "name : Loch Fyne | food : Indian | price : cheap"


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, min_frequency=1)


def random_pipe(tok, noise="gaussian", condition_len=0, seq_len=20, **process):
    """A randomly initialised tiny model: what it preserves cannot come from training."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=len(tok),
        seq_len=seq_len,
        embed_dim=8,
        pos_dim=8,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        dropout=0.0,
        output="embedding" if noise == "gaussian" and "prediction" not in process else "logits",
    )
    pc = ProcessConfig(
        noise=noise,
        schedule="sqrt" if noise == "gaussian" else "linear",
        chain_length=100,
        condition_len=condition_len,
        **process,
    )
    ids = dict(pad_token_id=0, eos_token_id=1, mask_token_id=tok.mask_token_id)
    config = TextDiffusionConfig.from_parts(cfg, pc, SampleConfig(steps=8), **ids)
    return TextDiffusionPipeline(TextDiffusionModel(config), tok)


# ------------------------------------------------------------------------------- templates


@pytest.mark.parametrize(
    "template, match",
    [
        ("The Eagle is a", "list of known text"),
        ([], "empty"),
        (["The Eagle", True], "bool"),
        (["The Eagle", 2.5], "float"),
        (["The Eagle", 0], "≥ 1"),
        (["The Eagle", "  ", 2], "empty text"),
        (["The Eagle is a pub"], "no span"),
        (["The Eagle [EOS]", 2], r"special token"),
        (["The Falcon is", 2], r"'Falcon' not in the model's vocabulary"),
        (["The Eagle", 30], r"more than the 20"),
    ],
)
def test_invalid_templates_are_refused_with_the_reason(tok, template, match):
    with pytest.raises(TemplateError, match=match):
        parse_template(template, tok, 20)
    with pytest.raises(TemplateError, match=match):  # the same through generate
        random_pipe(tok).generate(1, template=template)


def test_template_layout(tok):
    t = parse_template(["The Eagle is a", 2, "pub ."], tok, 12)
    assert t.length == 8 and t.ids.shape == t.known.shape == (12,)
    assert t.known.tolist() == [True] * 4 + [False] * 2 + [True] * 6
    assert t.ids[8] == tok.eos_token_id and (t.ids[9:] == tok.pad_token_id).all()


@pytest.mark.parametrize(
    "noise, sampler",
    [("gaussian", "ddpm"), ("gaussian", "ddim"), ("gaussian", "pc"), ("mask", None)],
)
@pytest.mark.parametrize(
    "template",
    [
        ["The Eagle is a", 3, "near Burger King ."],  # infilling
        ["Loch Fyne serves", 5],  # prefix
        [4, "in the riverside area ."],  # suffix
    ],
)
def test_known_words_are_exactly_preserved(tok, noise, sampler, template):
    pipe = random_pipe(tok, noise)
    t = parse_template(template, tok, pipe.seq_len)
    out = pipe.generate(5, num_steps=6, sampler=sampler, template=template, return_ids=True)
    assert torch.equal(out.ids[:, t.known], t.ids[t.known].expand(5, -1))  # [EOS], [PAD] too
    for text in out.texts:
        if isinstance(template[0], str):
            assert text.startswith(template[0])
        if isinstance(template[-1], str):
            assert text.endswith(template[-1])
        if len(template) == 3:
            assert f" {template[2]}" in text


@pytest.mark.parametrize("noise", ["gaussian", "mask"])
def test_a_span_of_k_is_k_tokens(tok, noise):
    """A template's span lies inside the sentence: its positions never take [PAD] or [EOS],
    even from a random model (whose guesses are anything), so the sentence has exactly the
    template's length."""
    process = {"prediction": "posterior"} if noise == "gaussian" else {}
    pipe = random_pipe(tok, noise, **process)
    out = pipe.generate(16, num_steps=6, template=[7], temperature=0.05, return_ids=True)
    span = out.ids[:, :7]
    assert not torch.isin(span, torch.tensor([0, 1])).any()
    assert (out.ids[:, 7] == 1).all() and (out.ids[:, 8:] == 0).all()


def test_gaussian_known_positions_are_re_noised_to_the_current_time(tok):
    """The network sees q(h_t | E[w]) at known positions: (x − √ᾱ E[w]) / √(1−ᾱ) ~ N(0, I)."""
    pipe = random_pipe(tok)
    t = parse_template(["The Eagle is a", 3, "near Burger King ."], tok, pipe.seq_len)
    seen = []
    model = pipe.model
    original = model.forward

    def spy(x_t, t_, *args, **kwargs):
        seen.append((x_t.detach().clone(), t_.detach().clone()))
        return original(x_t, t_, *args, **kwargs)

    model.forward = spy
    try:
        pipe.generate(64, num_steps=5, template=["The Eagle is a", 3, "near Burger King ."])
    finally:
        del model.forward
    E = model.embed(t.ids)[t.known]  # (K, d)
    for x, tt in seen:
        a = pipe.process.alpha_bar(tt[0].double()).float()
        z = (x[:, t.known] - a.sqrt() * E) / (1 - a).sqrt()  # (64, K, d)
        assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05


# ---------------------------------------------------------------------- partial noising


class Exact(Oracle):
    """Returns the clean embeddings at noised positions and junk at clean ones, and records
    what it was given."""

    def __init__(self, table, ids, clean):
        super().__init__(table, ids)
        self.clean, self.inputs = clean, []

    def __call__(self, x_t, t):
        self.inputs.append(x_t)
        reps = x_t.shape[0] // self.ids.shape[0]  # the bound runs two copies of the batch
        x0 = self.table[self.ids].repeat(reps, 1, 1)
        return torch.where(self.clean.repeat(reps, 1)[..., None], x0 + 5.0, x0)


def test_gaussian_partial_noising_keeps_the_condition_clean_and_out_of_the_loss():
    gen = torch.Generator().manual_seed(0)
    table = 3 * torch.randn(20, 8, generator=gen)
    ids = torch.randint(0, 20, (6, 10), generator=gen)
    clean = condition_positions(6, 10, 4)
    model = Exact(table, ids, clean)
    p = GaussianProcess("sqrt", chain_length=200)
    terms = p.loss(model, ids, generator=gen, clean=clean).floats()
    x_t = model.inputs[-1]
    assert torch.equal(x_t[:, :4], table[ids][:, :4])  # clean: x_t = x0
    assert not torch.allclose(x_t[:, 4:], table[ids][:, 4:])  # the rest is noised
    assert terms["mse"] == 0.0  # the junk at clean positions costs nothing
    assert p.loss(model, ids, generator=gen).floats()["mse"] > 1.0  # ... but would without
    bound = p.nll_bound(model, ids, num_t=3, generator=gen, clean=clean)
    assert float(bound.terms["diffusion"].abs().max()) == 0.0
    pred, where = p.predict_ids(model, ids, 0.5, rounder=_Round(table), generator=gen, clean=clean)
    assert torch.equal(where, ~clean) and torch.equal(pred[where], ids[where])


class _Round:
    def __init__(self, table):
        self.table = table

    def round(self, x):
        return torch.cdist(x.reshape(-1, x.shape[-1]), self.table).argmin(-1).view(x.shape[:-1])


class KnowsExceptCondition:
    """Mask-mode model: certain of the true token at noised positions, uniform at clean ones."""

    embed_dim, device = 4, torch.device("cpu")

    def __init__(self, ids, clean, vocab):
        self.ids, self.clean, self.vocab = ids, clean, vocab

    def embed(self, ids):
        return torch.zeros(*ids.shape, 4)

    def __call__(self, x, t, start=0):
        out = torch.full((*x.shape[:2], self.vocab), -1e4).scatter(-1, self.ids[..., None], 0.0)
        return torch.where(self.clean[..., None], torch.zeros_like(out), out)[:, start:]


def test_mask_partial_noising_never_masks_the_condition_and_leaves_it_out_of_the_loss():
    V, mask = 12, 11
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 11, (8, 10), generator=gen)
    ids[:2, :4] = mask  # the null condition: [MASK] ids, still clean
    clean = condition_positions(8, 10, 4)
    p = MaskProcess("linear", mask_id=mask)
    model = KnowsExceptCondition(ids, clean, V)
    t = torch.full((8,), 0.99, dtype=torch.float64)
    terms = p.loss(model, ids, generator=gen, t=t, clean=clean).floats()
    assert terms["loss"] == pytest.approx(0.0, abs=1e-6) and terms["mask_fraction"] > 0.8
    without = KnowsExceptCondition(ids[2:], clean[2:], V)  # no [MASK] ids: the loss is finite
    assert p.loss(without, ids[2:], generator=gen, t=t[2:]).floats()["loss"] > 0.5
    _, masked = p.predict_ids(model, ids, 0.99, generator=gen, clean=clean)
    assert not masked[:, :4].any() and masked[:, 4:].any()
    bound = p.nll_bound(model, ids, num_t=2, generator=gen, clean=clean)
    assert float(bound.total.max()) == pytest.approx(0.0, abs=1e-6)


def test_mask_loss_skips_the_condition_read_out_and_scores_the_sentence_alike():
    """The loss predicts from the first non-condition position on: the same terms as the
    full read-out, position by position, and the network still reads the condition."""
    from test_samplers import random_pipe

    pipe = random_pipe("mask", condition_len=6)
    model, p, C = pipe.model, pipe.process, 6
    ids = torch.randint(4, len(pipe.tokenizer), (5, 16), generator=torch.Generator().manual_seed(0))
    x, t0 = model.embed(ids), torch.zeros(5)
    assert torch.allclose(model(x, t0, start=C), model(x, t0)[:, C:], atol=1e-6)
    other = torch.where(condition_positions(5, 16, C), ids.roll(1, 0), ids)
    assert not torch.allclose(model(model.embed(other), t0, start=C), model(x, t0, start=C))
    clean, t = condition_positions(5, 16, C), torch.full((5,), 0.5, dtype=torch.float64)
    nll, n = p._masked_nll(model, ids, t, torch.Generator().manual_seed(3), clean)
    z = p.q_sample(ids, t, generator=torch.Generator().manual_seed(3))
    z, masked = torch.where(clean, ids, z), (z == p.mask_id) & ~clean
    full = -p.log_probs(model, z).gather(-1, ids[..., None])[..., 0]
    assert torch.equal(n, masked.sum(1)) and masked[:, C:].any()
    assert torch.allclose(nll, torch.where(masked, full, 0.0).sum(1), atol=1e-5)


def test_condition_dropout_replaces_whole_conditions():
    ids = torch.arange(200).view(20, 10)
    out = drop_conditions(ids, 4, -1, 0.5, generator=torch.Generator().manual_seed(0))
    dropped = (out[:, :4] == -1).all(1)
    assert ((out[:, :4] == -1).any(1) == dropped).all() and 0 < dropped.sum() < 20
    assert torch.equal(out[:, 4:], ids[:, 4:]) and torch.equal(out[~dropped], ids[~dropped])
    assert drop_conditions(ids, 4, -1, 0.0) is ids


# ------------------------------------------------------------------------------- guidance


@pytest.mark.parametrize("noise", ["gaussian", "mask"])
def test_guidance_zero_is_sampling_with_the_null_condition(tok, noise):
    pipe = random_pipe(tok, noise, condition_len=12, seq_len=24, condition_dropout=0.1)
    null = pipe.generate(4, num_steps=6, seed=3, return_ids=True)
    zero = pipe.generate(
        4, num_steps=6, seed=3, condition=MR_A, guidance_scale=0.0, return_ids=True
    )
    assert torch.equal(zero.ids, null.ids) and zero.texts == null.texts
    cond = pipe.generate(4, num_steps=6, seed=3, condition=MR_A, return_ids=True)
    guided = pipe.generate(4, num_steps=6, seed=3, condition=MR_A, guidance_scale=3.0)
    assert len(guided) == 4 and cond.ids.shape == (4, 12)


def test_guided_output_mixes_conditional_and_null_predictions(tok):
    pipe = random_pipe(tok, condition_len=6, seq_len=12)
    model, B, L = pipe.model, 3, 12
    where = condition_positions(B, L, 6)
    null_ids = torch.full((B, L), tok.mask_token_id)
    x = torch.randn(B, L, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((B,), 0.4)
    with torch.no_grad():
        cond = model(x, t)
        uncond = model(torch.where(where[..., None], model.embed(null_ids), x), t)
        for s in (0.0, 1.0, 2.5):
            out = GuidedDenoiser(model, null_ids, where, s)(x, t)
            assert torch.allclose(out, uncond + s * (cond - uncond), atol=1e-5)


def test_conditioning_requests_are_checked(tok):
    plain = random_pipe(tok)
    with pytest.raises(ValueError, match="trained without conditions"):
        plain.generate(1, condition=MR_A)
    with pytest.raises(ValueError, match="trained without conditions"):
        plain.generate(1, guidance_scale=2.0)
    cond = random_pipe(tok, condition_len=12, seq_len=24)
    with pytest.raises(ValueError, match="one per sample"):
        cond.generate(3, condition=[MR_A, MR_B])
    with pytest.raises(ValueError, match="needs a condition"):
        cond.generate(1, guidance_scale=2.0)
    with pytest.raises(ValueError, match="finite number ≥ 0"):
        cond.generate(1, condition=MR_A, guidance_scale=-1.0)
    with pytest.raises(ValueError, match="seq_len"):
        cond.generate(1, condition=MR_A, seq_len=20)
    with pytest.raises(ConfigError, match="condition_len"):
        load_config(ROOT / "configs" / "tiny.yaml", ["process.condition_len=31"])


def test_template_and_condition_together(tok):
    pipe = random_pipe(tok, "mask", condition_len=12, seq_len=24)
    out = pipe.generate(2, num_steps=4, condition=[MR_A, MR_B], template=["The Eagle", 2, "."])
    assert all(t.startswith("The Eagle") and t.endswith(".") for t in out)


# --------------------------------------------------------------------- data-to-text training


@pytest.fixture(scope="module")
def data2text(tmp_path_factory, e2e_dir):
    from textdiff.infra.trainer import train

    out = tmp_path_factory.mktemp("d2t") / "run"
    cfg = load_config(
        ROOT / "configs" / "e2e-data2text.yaml",
        [
            f"train.output_dir={out}",
            "model.seq_len=64",
            "model.hidden_size=32",
            "model.num_layers=1",
            "model.num_heads=2",
            "process.condition_len=40",
            "process.chain_length=100",
            "data.max_train_samples=200",
            "data.min_frequency=1",
            "train.batch_size=8",
            "train.max_steps=6",
            "train.warmup_steps=2",
            "train.eval_every=6",
            "train.eval_batches=1",
            "train.eval_samples=2",
            "train.save_every=6",
            "train.log_every=3",
            "sample.steps=5",
        ],
    )
    return train(cfg, progress=False)


def test_data2text_run_conditions_on_the_mr(data2text):
    pipe = TextDiffusionPipeline.from_pretrained(data2text.model_dir)
    assert pipe.condition_len == 40 and pipe.model.config.process["condition_dropout"] > 0
    assert {"name", ":", "|"} <= set(pipe.tokenizer.get_vocab())  # the tokenizer saw the MRs
    seen = []
    original = pipe.model.forward
    pipe.model.forward = lambda x_t, t, *a, **k: (
        seen.append(x_t.clone()) or original(x_t, t, *a, **k)
    )
    try:
        a = pipe.generate(4, num_steps=5, seed=0, condition=MR_A, return_ids=True)
    finally:
        del pipe.model.forward
    mr_ids = pipe.tokenizer(MR_A, add_special_tokens=False)["input_ids"]
    E = pipe.model.embed(torch.tensor(mr_ids))
    assert all(torch.equal(x[:, : len(mr_ids)], E.expand(4, -1, -1)) for x in seen)  # clean
    b = pipe.generate(4, num_steps=5, seed=0, condition=MR_B, return_ids=True)
    again = pipe.generate(4, num_steps=5, seed=0, condition=MR_A, return_ids=True)
    assert a.ids.shape == (4, 24) and a.x0.shape[1] == 24
    assert torch.equal(again.x0, a.x0) and not torch.allclose(a.x0, b.x0)
    valid = [r for r in _records(data2text.output_dir) if r["split"] == "valid"][-1]
    assert len(valid["samples"]) == len(valid["sample_conditions"]) == 2


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_evaluate_data2text_on_the_e2e_test_set(data2text, e2e_dir):
    pytest.importorskip("sacrebleu")
    from textdiff.infra.e2e import evaluate_data2text

    pipe = TextDiffusionPipeline.from_pretrained(data2text.model_dir)
    zip_path = Path(e2e_dir) / "e2e-dataset-v1.0.0.zip"
    report = evaluate_data2text(pipe, zip_path, limit=4, num_steps=3)
    assert report["test_mrs"] == 4 and 0 <= report["bleu"] <= 100 and report["tgen_bleu"] == 65.93
    assert 0 <= report["slot_error_rate"] <= 1 and len(report["examples"]) == 4


def test_cli_evaluate_scores_data2text_with_mbr(data2text, e2e_dir, tmp_path, capsys):
    """``textdiff evaluate --mbr k`` scores the E2E test MRs with k candidates each; the
    report keeps k and the utility, and a bad utility is refused in one line."""
    pytest.importorskip("sacrebleu")
    model, out = str(data2text.model_dir), tmp_path / "report.json"
    zip_path = str(Path(e2e_dir) / "e2e-dataset-v1.0.0.zip")
    args = ["evaluate", model, "--limit", "8", "--num-t", "1", "--samples", "2", "--steps", "3"]
    args += ["--bleu-mrs", "3", "--mbr", "2", "--references", zip_path, "--quiet"]
    assert main([*args, "--temperature", "0.5", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    e2e, bound = report["e2e"], report["bound"]
    assert e2e["test_mrs"] == 3 and e2e["mbr"] == 2 and e2e["mbr_utility"] == "bleu-slots"
    by_time = [x["nats_per_token"] for x in bound["by_time"]]  # the bound by stratum of t
    exact = bound["terms_per_token"]["prior"]
    assert len(by_time) == 1 and math.isclose(sum(by_time) + exact, bound["nll_per_token"])
    capsys.readouterr()
    assert main([*args, "--mbr-utility", "rouge"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "invalid choice" in err and "\n" not in err


def test_cli_template_errors_are_one_line(data2text, capsys):
    model = str(data2text.model_dir)
    for bad in ("[The Eagle", '["The Eagle", 0]'):
        assert main(["generate", model, "--template", bad, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
    code = main(["generate", model, "-n", "2", "--steps", "3", "--quiet", "--condition", MR_A])
    assert code == 0 and len(capsys.readouterr().out.strip().splitlines()) == 2


# ------------------------------------------------------------------------ BLEU and slot errors


def test_mr_formats_and_slot_errors():
    release = "name[The Eagle], eatType[pub], priceRange[£20-25], customer rating[5 out of 5]"
    source = "name : The Eagle | Type : pub | price : £ 20 - 25 | customer rating : 5 out of 5"
    assert [a for a, _ in parse_mr(release)] == [a for a, _ in parse_mr(source)]
    assert to_source_mr(release) == source and to_source_mr(source) == source
    full = "The Eagle is a pub with a 5 star rating and prices of £ 20 - 25 ."
    assert slot_errors(release, full) == []
    assert slot_errors(release, "The Eagle is a restaurant .") == [
        "eatType[pub]",
        "priceRange[£20-25]",
        "customer rating[5 out of 5]",
    ]
    family = "name[Zizzi], familyFriendly[no]"
    assert slot_errors(family, "Zizzi is not for children .") == []
    assert slot_errors(family, "zizzi .") == ["familyFriendly[no]"]  # case-insensitive name
    rate = slot_error_rate([release, family], [full, "Zizzi ."])
    assert rate["slots"] == 6 and rate["missing"] == 1 and rate["slot_error_rate"] == 1 / 6
    assert detokenize("prices of £ 20 - 25 .") == "prices of £20 - 25 ."
    assert detokenize("a family - friendly pub , it 's Zizzi 's .") == (
        "a family-friendly pub , it's Zizzi's ."
    )


def test_multi_reference_bleu():
    pytest.importorskip("sacrebleu")
    refs = [["The Eagle is a pub.", "A pub called The Eagle."], ["Zizzi serves Indian food."]]
    assert corpus_bleu(["A pub called The Eagle.", "Zizzi serves Indian food."], refs)[
        "bleu"
    ] == pytest.approx(100.0)
    lower = corpus_bleu(["the eagle is a pub .", "zizzi serves indian food ."], refs)
    assert lower["bleu"] == pytest.approx(100.0) and lower["bleu_cased"] < 50
    assert "case:lc" in lower["signature"] and "tok:13a" in lower["signature"]
    worse = corpus_bleu(["The Eagle is a restaurant.", "Zizzi serves food."], refs)["bleu"]
    assert 0 < worse < 100


def test_read_references_groups_by_mr_in_order(tmp_path, e2e_dir):
    rows = [
        ("name[A], food[Thai]", "A serves Thai."),
        ("name[B]", "B."),
        ("name[A], food[Thai]", "Thai at A."),
    ]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["mr", "ref"])
    writer.writerows(rows)
    path = tmp_path / "release.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("e2e-dataset/testset_w_refs.csv", buf.getvalue())
    assert read_references(path) == [
        ("name[A], food[Thai]", ["A serves Thai.", "Thai at A."]),
        ("name[B]", ["B."]),
    ]
    real = read_references(Path(e2e_dir) / "e2e-dataset-v1.0.0.zip")
    assert len(real) == 630 and sum(len(r) for _, r in real) == 4693
    source = []
    for line in (Path(e2e_dir) / "src1_test.txt").read_text(encoding="utf-8").splitlines():
        mr = line.split("||")[0]
        if not source or source[-1] != mr:
            source.append(mr)
    assert [to_source_mr(mr) for mr, _ in real] == source  # the model reads src1-format MRs


def test_autoregressive_data2text_reads_its_condition_and_scores_only_the_sentence(tok):
    """The AR baseline with a condition part: the loss ignores the MR positions, generation
    feeds the MR first and writes only the sentence, and the sentence depends on the MR."""
    from test_samplers import random_pipe as any_pipe

    from textdiff.diffusion.autoregressive import AutoregressiveObjective

    p = AutoregressiveObjective(eos_id=1, pad_id=0)
    pipe = any_pipe("autoregressive", condition_len=16, tok=tok, sampler="greedy")
    ids = torch.randint(2, 12, (3, 26))
    clean = condition_positions(3, 26, 16)
    full, part = p.loss(pipe.model, ids).loss, p.loss(pipe.model, ids, clean=clean).loss
    assert not torch.isclose(full, part)  # the condition is not scored ...
    bound = p.nll_bound(pipe.model, ids, clean=clean).total
    assert bound.shape == (3,) and (bound > 0).all()  # ... and the bound is over the rest only
    fed = []
    forward = pipe.model.forward

    def record(*args, **kwargs):
        fed.append(kwargs["input_ids"].clone())
        return forward(*args, **kwargs)

    pipe.model.forward = record
    out = pipe.generate(4, condition=MR_A, return_ids=True, seed=0)
    condition, _ = encode(tok, [MR_A], 16)
    assert torch.equal(fed[0][0], torch.cat([torch.tensor([1]), condition[0]]))  # [EOS] + MR
    assert all(x.shape == (4, 1) for x in fed[1:])  # then one token a call, from the cache
    assert out.ids.shape == (4, 10) and out.nfe == len(fed) <= 10
    with pytest.raises(ValueError, match="templates need a diffusion model"):
        pipe.generate(1, condition=MR_A, template=["the", 1])
    with pytest.raises(ValueError, match="guidance needs a denoiser"):
        pipe.generate(1, condition=MR_A, guidance_scale=2.0)


def test_every_slot_value_copied_verbatim_counts_as_realised(e2e_dir):
    """A sentence that copies each slot value of an E2E test MR (in the training files' word
    split, as the model writes them) misses no slot."""
    from textdiff.infra.e2e import read_references

    pairs = read_references(Path(e2e_dir) / "e2e-dataset-v1.0.0.zip")
    assert len(pairs) == 630
    for mr, _ in pairs:
        words = " ".join(value for _, value in parse_mr(to_source_mr(mr)))
        sentence = f"{words} family ."  # familyFriendly is realised by its family words
        assert slot_errors(mr, sentence) == [], mr


def test_mbr_with_one_candidate_is_plain_decoding_and_picks_a_consensus(data2text, e2e_dir):
    from textdiff.infra.e2e import decode_mrs
    from textdiff.infra.metrics import mbr_pick

    pipe = TextDiffusionPipeline.from_pretrained(data2text.model_dir)
    mrs = ["name[The Eagle], eatType[pub]", "name[Zizzi], food[Indian]"]
    plain = pipe.generate(2, condition=[to_source_mr(m) for m in mrs], num_steps=3, seed=4)
    assert decode_mrs(pipe, mrs, 1, num_steps=3, seed=4) == plain
    assert len(decode_mrs(pipe, mrs, 3, "slots", num_steps=3, seed=4)) == 2
    assert mbr_pick(["a b c d", "x y z w", "a b c e", "a b c d"]) in (0, 3)  # the consensus
    assert mbr_pick(["only"]) == 0


def test_mbr_utilities_rank_slots_and_consensus_as_documented():
    """ "slots": fewest missing slots first, then consensus against *all* candidates (here the
    incomplete ones vote for the complete candidate closest to them); "bleu-slots" is "bleu"
    with no penalty and "slots" with a penalty no consensus can outweigh."""
    from textdiff.infra.e2e import mbr_choice

    mr = "name[The Eagle], food[Indian]"
    candidates = [
        "Indian food is served at The Eagle , a lovely place by the sea .",  # complete, odd
        "The Eagle serves Indian food near the river .",  # complete, like the incomplete ones
        "The Eagle serves food near the river .",  # misses food[Indian]
        "The Eagle serves food near the river .",
        "The Eagle serves fine food near the river .",
    ]
    assert mbr_choice(mr, candidates, "bleu") in (2, 3)  # the consensus misses a slot
    # the two complete ones alone would keep 0 (its BLEU against 1 is the higher); all five vote 1
    assert mbr_choice(mr, candidates, "slots") == 1
    assert mbr_choice(mr, candidates, "bleu-slots", slot_penalty=0.0) == mbr_choice(
        mr, candidates, "bleu"
    )
    assert mbr_choice(mr, candidates, "bleu-slots", slot_penalty=10.0) == 1
    assert mbr_choice(mr, candidates[1:2], "slots") == 0
    with pytest.raises(ValueError, match="utility"):
        mbr_choice(mr, candidates, "rouge")


def test_devset_mrs_in_the_test_sets_slot_mix(e2e_dir):
    """The validation MRs keep the slot-count shares of the MRs they are drawn like, each count's
    MRs in file order; on the release: all 71 eight-slot devset MRs and 172 in all."""
    from collections import Counter

    from textdiff.infra.e2e import with_slot_mix

    pairs = [(f"name[A{i}], eatType[pub]", [str(i)]) for i in range(10)]
    pairs += [(f"name[B{i}], eatType[pub], area[riverside]", [str(i)]) for i in range(4)]
    like = ["name[X], food[Thai]"] * 6 + ["name[X], food[Thai], near[Y]"] * 2
    picked = with_slot_mix(pairs, like)
    counts = Counter(len(parse_mr(mr)) for mr, _ in picked)
    assert counts == {2: 10, 3: 3}  # 3 : 1 as in like, all the 2-slot MRs there are
    assert [mr for mr, _ in picked if len(parse_mr(mr)) == 2] == [mr for mr, _ in pairs[:10]]
    zip_path = Path(e2e_dir) / "e2e-dataset-v1.0.0.zip"
    test = [mr for mr, _ in read_references(zip_path)]
    dev = with_slot_mix(read_references(zip_path, "e2e-dataset/devset.csv"), test)
    counts = Counter(len(parse_mr(mr)) for mr, _ in dev)
    assert counts[8] == 71 and len(dev) == 172
    share = Counter(len(parse_mr(mr)) for mr in test)
    for n, c in share.items():
        assert abs(counts[n] / len(dev) - c / len(test)) < 0.01
    few = Counter(len(parse_mr(mr)) for mr, _ in with_slot_mix(dev, test, 40))
    assert sum(few.values()) in range(38, 43) and few[8] == round(40 * share[8] / len(test))
    with pytest.raises(ValueError, match="mix"):
        with_slot_mix(pairs, ["name[X], food[Thai], near[Y], area[riverside]"])
