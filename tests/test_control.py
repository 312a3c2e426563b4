"""Gradient guidance of Gaussian sampling: oracle controls land, λ = 0 changes nothing, and no
gradient reaches the model."""

import pytest
import torch
from test_samplers import random_pipe

from textdiff.diffusion.control import Guidance, LengthControl, TokenControl
from textdiff.diffusion.gaussian import GaussianProcess
from textdiff.diffusion.rounding import Rounder
from textdiff.models.pipeline import TextDiffusionPipeline


@pytest.fixture(scope="module")
def pipe():
    return random_pipe("gaussian", sampler="ddpm")


class DataPrior:
    """The exact x̂_0 when the data are x0 ~ N(0, I): ``E[x0 | h_t] = √ᾱ_t h_t`` (the word rows
    are N(0, I) too). The last x̂_0, which is rounded, follows the latent: only the guidance
    decides which words come out."""

    embed_dim, device = 4, torch.device("cpu")

    def __init__(self, process):
        self.process = process

    def __call__(self, x_t, t):
        return x_t * self.process.alpha_bar(t.double()).sqrt()[:, None, None].float()


def steer(control, weight=5.0, B=64, L=8, seed=0):
    process = GaussianProcess("sqrt")
    table = torch.randn(12, 4, generator=torch.Generator().manual_seed(5))
    model = DataPrior(process)
    guidance = Guidance([(control(process, table), weight)]) if control else None
    gen = torch.Generator().manual_seed(seed)
    return process.sample(
        model, (B, L), steps=40, rounder=Rounder(table), generator=gen, guidance=guidance
    ).ids


def test_an_oracle_token_control_puts_the_token_at_its_position():
    free = steer(None)
    steered = steer(lambda p, table: TokenControl(p, table, position=4, token=7))
    assert (free[:, 4] == 7).float().mean() < 0.3
    assert (steered[:, 4] == 7).float().mean() > 0.95
    assert (steered[:, :4] == free[:, :4]).float().mean() > 0.8  # the rest is left alone


def test_a_length_control_ends_the_sentence_where_asked():
    EOS, PAD = 1, 0
    out = steer(lambda p, table: LengthControl(p, table, 5, eos_id=EOS, pad_id=PAD), 20.0)
    assert (out[:, 5] == EOS).float().mean() > 0.95
    assert (out[:, 6:] == PAD).float().mean() > 0.95
    assert ((out[:, :5] == EOS) | (out[:, :5] == PAD)).float().mean() < 0.05


@pytest.mark.parametrize("sampler", ["ddpm", "dpm-solver"])
def test_zero_weight_is_uncontrolled_sampling(pipe, sampler):
    free = pipe.generate(8, seed=2, sampler=sampler, return_ids=True)
    zero = pipe.generate(
        8, seed=2, sampler=sampler, return_ids=True, control=[(pipe.length_control(5), 0.0)]
    )
    assert torch.equal(free.ids, zero.ids) and torch.equal(free.x0, zero.x0)


def test_guidance_leaves_no_gradient_in_the_model(pipe):
    calls = []

    def spy(x, t):
        calls.append(x.requires_grad)
        return -x.pow(2).flatten(1).sum(1)

    pipe.generate(4, seed=3, control=[(spy, 1.0)])
    assert calls and all(calls)  # the control did see a latent it could differentiate ...
    assert all(p.grad is None for p in pipe.model.parameters())  # ... and the model got nothing


def test_guidance_needs_a_continuous_latent():
    mask = random_pipe("mask")
    with pytest.raises(ValueError, match="continuous latent"):
        mask.generate(2, control=[(lambda x, t: x.sum((1, 2)), 1.0)])


def test_e2e_slot_labels_are_the_realised_slots():
    from textdiff.infra.classify import e2e_slot_labels

    mr = "name : The Eagle | Type : pub | food : Japanese | area : riverside"
    labels = e2e_slot_labels(mr, "The Eagle is a pub serving Japanese food .")
    assert labels == ["name[The Eagle]", "eatType[pub]", "food[Japanese]"]  # no riverside


def test_a_trained_classifier_saves_loads_and_steers_its_own_model_only(tmp_path, e2e_dir):
    from test_training import tiny

    from textdiff.infra.classify import classifier_control, control_success, train_classifier
    from textdiff.infra.trainer import train

    run = train(tiny(tmp_path / "run", "model.seq_len=24"), progress=False)
    result = train_classifier(run.model_dir, tmp_path / "clf", steps=20, progress=False)
    assert "eatType[pub]" in result.labels and 0 <= result.valid_accuracy <= 1
    pipe = TextDiffusionPipeline.from_pretrained(run.model_dir, precision="fp32")
    control = classifier_control(pipe, tmp_path / "clf", "eatType[pub]")
    report = control_success(
        pipe,
        control,
        lambda text: "pub" in text,
        num_samples=4,
        num_steps=4,
        guidance={"weight": 2.0},
    )
    assert 0 <= report["success"] <= 1 and len(report["texts"]) == 4
    assert all(p.grad is None for p in control.classifier.parameters())
    other = random_pipe("gaussian")  # another model's word table
    with pytest.raises(ValueError, match="latents of another model"):
        classifier_control(other, tmp_path / "clf", "eatType[pub]")


def test_a_raw_e2e_value_finds_its_tokenized_label():
    from textdiff.models.classifier import LatentClassifier, LatentClassifierConfig

    labels = ["priceRange[less than £ 20]", "priceRange[£ 20 - 25]", "food[Fast food]"]
    clf = LatentClassifier(LatentClassifierConfig(labels, hidden_size=16, num_layers=1))
    assert clf.label_index("priceRange[less than £20]") == 0
    assert clf.label_index("priceRange[£20-25]") == 1
    assert clf.label_index("food[Fast food]") == 2
    with pytest.raises(ValueError, match="not a label"):
        clf.label_index("food[Fastfood ]x")


def test_max_pooling_is_a_smooth_max_and_classifiers_saved_without_it_load_as_mean(tmp_path):
    import json
    import math

    from textdiff.models.classifier import LatentClassifier, LatentClassifierConfig

    config = LatentClassifierConfig(
        ["a", "b"], embed_dim=4, seq_len=8, hidden_size=16, num_layers=1, pooling="max"
    )
    torch.manual_seed(0)
    clf = LatentClassifier(config).eval()
    per_position = []
    clf.head.register_forward_hook(lambda module, args, out: per_position.append(out))
    x, t = torch.randn(3, 8, 4) * 5, torch.rand(3)
    with torch.no_grad():
        pooled = clf(x, t)
    top = per_position[0].max(1).values  # (B, K): the best position's logit
    assert torch.all(pooled <= top + 1e-5) and torch.all(pooled >= top - math.log(8) - 1e-5)
    clf.save_pretrained(tmp_path / "max", safe_serialization=True)
    with torch.no_grad():
        again = LatentClassifier.from_pretrained(tmp_path / "max", use_safetensors=True)(x, t)
    assert torch.equal(pooled, again)
    saved = json.loads((tmp_path / "max" / "config.json").read_text())
    del saved["pooling"]  # as a classifier saved before the field existed
    (tmp_path / "max" / "config.json").write_text(json.dumps(saved))
    assert LatentClassifier.from_pretrained(tmp_path / "max").config.pooling == "mean"
    with pytest.raises(ValueError, match="pooling must be one of"):
        LatentClassifierConfig(["a"], pooling="sum")


def test_venue_swapping_breaks_e2e_name_near_pairs_and_keeps_the_labels_true(e2e_dir):
    import os
    from collections import defaultdict

    from textdiff.infra.classify import e2e_slot_labels, e2e_swap_venues
    from textdiff.infra.e2e import parse_mr

    lines = open(os.path.join(e2e_dir, "src1_train.txt"), encoding="utf-8").read().splitlines()
    conditions, texts = zip(*(line.split("||", 1) for line in lines[:3000]), strict=True)
    texts = [t.strip() for t in texts]
    new_conditions, new_texts = e2e_swap_venues(list(conditions), texts, seed=0)
    assert len(new_texts) == len(texts)
    near_of = defaultdict(set)  # name -> the venues it is near, before and after
    swapped_near_of = defaultdict(set)
    kept = total = 0
    for old_c, old_t, c, t in zip(conditions, texts, new_conditions, new_texts, strict=True):
        old, new = dict(parse_mr(old_c)), dict(parse_mr(c))
        assert new.get("name") != new.get("near")
        assert {a: v for a, v in new.items() if a not in ("name", "near")} == {
            a: v for a, v in old.items() if a not in ("name", "near")
        }
        labels_before = [x.split("[")[0] for x in e2e_slot_labels(old_c, old_t)]
        labels_after = [x.split("[")[0] for x in e2e_slot_labels(c, t)]
        kept += labels_before == labels_after  # the same slots are realised, with new values
        total += 1
        if "near" in old:
            near_of[old["name"]].add(old["near"])
            swapped_near_of[new["name"]].add(new["near"])
    assert kept / total > 0.98
    mean = lambda d: sum(map(len, d.values())) / len(d)  # noqa: E731
    assert mean(near_of) < 2 and mean(swapped_near_of) > 5  # the rigid pairs are broken
