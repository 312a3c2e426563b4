"""The denoiser: its input layout, gradients, save/load, and learning a few sentences."""

import pytest
import torch

from textdiff.diffusion.gaussian import GaussianProcess
from textdiff.diffusion.rounding import Rounder
from textdiff.infra.config import ModelConfig, ProcessConfig, SampleConfig
from textdiff.models.modeling import TextDiffusionConfig, TextDiffusionModel, sinusoidal


def tiny_model(vocab=30, seq_len=8, output="embedding", **kw) -> TextDiffusionModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=vocab,
        seq_len=seq_len,
        embed_dim=8,
        pos_dim=8,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        dropout=0.0,
        output=output,
        **kw,
    )
    return TextDiffusionModel(TextDiffusionConfig.from_parts(cfg, ProcessConfig(), SampleConfig()))


def test_positions_are_concatenated_unnoised_and_the_word_part_is_noised():
    model = tiny_model()
    p = GaussianProcess("sqrt")
    seen = []
    model.in_proj.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    ids = torch.randint(0, 30, (3, 8))
    x0 = model.embed(ids)
    inputs = []
    for t in (0.05, 0.5, 0.95):
        x_t, _ = p.q_sample(x0, t, generator=torch.Generator().manual_seed(0))
        model(x_t, torch.full((3,), t))
        inputs.append(x_t)
    e = sinusoidal(torch.arange(8), 8)
    for H, x_t in zip(seen, inputs, strict=True):
        assert H.shape == (3, 8, 16)
        assert torch.equal(H[..., :8], x_t)  # H_t = [h_t ; e]: the word part is h_t ...
        assert torch.equal(H[..., 8:], e.expand(3, 8, 8))  # ... and e is the same for every t
    assert not torch.equal(seen[0][..., :8], seen[2][..., :8])
    assert not any("position" in n for n, _ in model.named_parameters())  # e is not trained


def test_gradients_reach_every_parameter():
    model = tiny_model()
    ids = torch.randint(0, 30, (4, 8))
    GaussianProcess("sqrt").loss(model, ids).loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_logits_head_and_readout_shapes():
    model = tiny_model(output="logits")
    x = torch.randn(2, 8, 8)
    assert model(x, torch.rand(2)).shape == (2, 8, 30)
    assert model.logits(x).shape == (2, 8, 30)


def test_save_and_reload_give_identical_outputs(tmp_path):
    model = tiny_model().eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again = TextDiffusionModel.from_pretrained(tmp_path).eval()
    x, t = torch.randn(2, 8, 8), torch.rand(2)
    assert torch.equal(model(x, t), again(x, t))
    assert again.config.process == model.config.process


def test_embed_norm_puts_every_word_row_on_a_sphere_everywhere_the_table_is_read(tmp_path):
    model = tiny_model(embed_norm=2.5)
    ids = torch.randint(0, 30, (3, 8))
    table = model.word_table()
    assert torch.allclose(table.norm(dim=-1), torch.full((30,), 2.5))
    assert torch.allclose(
        table,
        model.word_embedding.weight
        * (2.5 / model.word_embedding.weight.norm(dim=-1, keepdim=True)),
    )
    assert torch.equal(model.embed(ids), table[ids])  # h_0 = E[w] from the scaled rows
    x = torch.randn(2, 8, 8)
    assert torch.allclose(model.logits(x), x @ table.T)
    assert torch.equal(Rounder(table).round(table[ids]), ids)
    GaussianProcess("sqrt").loss(model, ids).loss.backward()
    weight, grad = model.word_embedding.weight, model.word_embedding.weight.grad
    assert grad[ids.unique()].abs().sum(-1).min() > 0
    # growing a row does not change the table: the gradient is orthogonal to every row (it
    # would not be if the norm were taken as a constant)
    cos = (grad * weight).sum(-1) / (grad.norm(dim=-1) * weight.norm(dim=-1) + 1e-30)
    assert cos.abs().max() < 1e-4
    model.save_pretrained(tmp_path)
    again = TextDiffusionModel.from_pretrained(tmp_path)
    assert again.embed_norm == 2.5 and torch.equal(again.word_table(), model.word_table())
    assert torch.allclose(tiny_model().word_table(), tiny_model().word_embedding.weight)
    with pytest.raises(ValueError, match="readout_scale must be resolved"):
        tiny_model(readout_scale="auto")


def test_tiny_model_overfits_and_generates_its_sentences():
    sentences = torch.tensor(
        [
            [3, 4, 5, 6, 7, 1, 0, 0],
            [8, 9, 10, 1, 0, 0, 0, 0],
            [11, 4, 12, 13, 14, 15, 1, 0],
            [16, 17, 18, 19, 1, 0, 0, 0],
        ]
    )
    model = tiny_model(vocab=20)
    p = GaussianProcess("sqrt")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(600):
        batch = sentences[torch.randint(0, 4, (32,), generator=gen)]
        loss = p.loss(model, batch, generator=gen).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = p.sample(
        model,
        (16, 8),
        steps=50,
        sampler="ddim",
        rounder=Rounder(model.word_embedding.weight),
        generator=torch.Generator().manual_seed(1),
    )
    matches = [any(torch.equal(row, s) for s in sentences) for row in out.ids]
    assert sum(matches) >= 14, out.ids


def test_self_conditioning_reads_the_previous_estimate():
    model = tiny_model(self_conditioning=True).eval()
    assert model.in_proj.in_features == 8 + 8 + 8  # [h_t ; x̂_0' ; e]
    GaussianProcess("sqrt").loss(model.train(), torch.randint(0, 30, (4, 8))).loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    seen, returned = [], []

    def hook(module, args, kwargs, output):
        seen.append(kwargs.get("x0_prev"))
        returned.append(output.detach())

    model.eval().register_forward_hook(hook, with_kwargs=True)
    p = GaussianProcess("sqrt")
    p.sample(model, (2, 8), steps=4, sampler="ddim", generator=torch.Generator().manual_seed(0))
    assert len(seen) == 4 and torch.all(seen[0] == 0)  # the first step reads zeros ...
    for prev, out in zip(seen[1:], returned[:-1], strict=True):
        assert torch.equal(prev, out)  # ... every later step the x̂_0 of the step before


def test_sampling_temperature_reaches_every_step_of_a_posterior_model():
    model = tiny_model(output="logits").eval()
    p = GaussianProcess("sqrt", prediction="posterior")
    table = model.word_table().detach()
    rounder = Rounder(table)
    on_rows = []
    for temperature in (1.0, 1e-6):
        out = p.sample(
            model,
            (4, 8),
            steps=5,
            rounder=rounder,
            temperature=temperature,
            return_trajectory=True,
            generator=torch.Generator().manual_seed(0),
        )
        on_rows.append(
            [torch.allclose(x, table[rounder.round(x)], atol=1e-4) for x in out.trajectory]
        )
    assert not on_rows[0][0]  # at t = 1 the posterior mean falls between the word rows ...
    assert all(on_rows[1])  # ... a near-zero temperature picks a row at every step


def test_rotary_scores_depend_on_the_offset_only_and_change_the_network():
    from textdiff.models.modeling import rotary_tables, rotate, sinusoidal_angles

    q, k = torch.randn(16), torch.randn(16)
    angles = sinusoidal_angles(torch.arange(40), 16).float()
    cos, sin = rotary_tables(angles)
    # each pair (q_2i, q_2i+1) turned by its angle, written out: the same floats, bit for bit
    c, s = angles.cos(), angles.sin()
    pairs = torch.stack((q[0::2] * c - q[1::2] * s, q[0::2] * s + q[1::2] * c), dim=-1)
    assert torch.equal(rotate(q.expand(40, 16), cos, sin), pairs.flatten(-2))
    qs, ks = rotate(q.expand(40, 16), cos, sin), rotate(k.expand(40, 16), cos, sin)
    scores = qs @ ks.T  # scores[i, j] for the same q and k placed at positions i and j
    for offset in (-7, 0, 3):
        diag = torch.diagonal(scores, offset)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), rtol=0, atol=1e-4)
    assert not torch.allclose(torch.diagonal(scores, 1)[:1], torch.diagonal(scores, 2)[:1])
    torch.testing.assert_close(rotate(q[None], cos[:1], sin[:1])[0], q)  # position 0: identity

    plain, rotary = tiny_model(), tiny_model(rotary=True)  # same seed: the same weights
    pairs = zip(plain.parameters(), rotary.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    x, t = torch.randn(2, 8, 8), torch.rand(2)
    assert not torch.allclose(plain(x, t), rotary(x, t))
    GaussianProcess("sqrt").loss(rotary, torch.randint(0, 30, (4, 8))).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rotary.parameters())
