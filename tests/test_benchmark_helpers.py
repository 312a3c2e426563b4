"""The benchmark's FLOP accounting: the matmuls the speed stage times alone (its ceiling) are
the ones the model's FLOPs per token count."""

import sys
from pathlib import Path

import pytest

from textdiff.infra.config import load_config
from textdiff.models.modeling import make_config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from measure import flops_per_token, matmul_products  # noqa: E402


@pytest.mark.parametrize(
    "config, overrides",
    [
        ("e2e.yaml", []),  # Gaussian, self-conditioned: a no-gradient forward on even rows
        ("e2e.yaml", ["model.self_conditioning=false"]),
        ("e2e-mask.yaml", []),
        ("e2e-ar.yaml", []),  # a GPT-2 config
    ],
)
@pytest.mark.parametrize("batch", [7, 32])  # odd: the self-conditioning share rounds up
def test_timed_matmuls_are_the_counted_flops(config, overrides, batch):
    cfg = load_config(ROOT / "configs" / config, overrides)
    ids = dict(pad_token_id=0, eos_token_id=1, mask_token_id=2)
    hf = make_config(cfg.network_config(821), cfg.process, cfg.sample, **ids)
    per_token, _ = flops_per_token(hf, batch)
    products = matmul_products(hf, batch)
    total = sum(2 * g * m * k * n for g, m, k, n in products)
    assert total == pytest.approx(per_token * batch * cfg.model.seq_len, rel=1e-12)
    if not getattr(hf, "self_conditioning", False):  # then each product has its two gradients
        assert len(products) % 3 == 0
        triples = zip(*(products[i::3] for i in range(3)), strict=True)
        for (g, m, k, n), grad_in, grad_w in triples:
            assert grad_in == (g, m, n, k) and grad_w == (g, k, m, n)
