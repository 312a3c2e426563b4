"""The denoiser's dropout (textdiff.models.dropout): nn.Dropout's distribution from a cheaper
random mask, the same under torch.compile."""

import pytest
import torch

from textdiff.models.dropout import BITS, Dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_is_one_minus_p_at_even_and_odd_elements(p):
    # each 32-bit draw serves two elements: both halves must keep at the same rate
    torch.manual_seed(0)
    n = 1 << 20
    threshold = Dropout(p).threshold
    mask = keep_mask([n], torch.device("cpu"), threshold).double()
    q = threshold / 2**BITS
    assert abs(q - (1 - p)) <= 2 ** -(BITS + 1)
    sigma = (q * (1 - q) / (n / 2)) ** 0.5
    for half in (mask[0::2], mask[1::2]):
        assert abs(half.mean().item() - q) < 5 * sigma
    # neighbouring decisions are independent: P(both kept) = q²
    both = (mask[0::2] * mask[1::2]).mean().item()
    assert abs(both - q * q) < 5 * (q * q * (1 - q * q) / (n / 2)) ** 0.5


def test_kept_elements_are_scaled_so_the_mean_is_unchanged():
    torch.manual_seed(1)
    drop = Dropout(0.3).train()
    x = torch.randn(4096, 64)
    y = drop(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] * drop.scale)
    assert drop.scale * drop.threshold == 2**BITS
    ys = torch.stack([drop(torch.ones(256, 256)) for _ in range(64)])
    assert abs(ys.mean().item() - 1) < 5 * (0.3 / 0.7 / ys.numel()) ** 0.5


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    drop = Dropout(0.2).train()
    x = torch.randn(300, 7, requires_grad=True)
    y = drop(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() * drop.scale)


def test_seeded_eval_and_zero_p():
    x = torch.randn(50, 50)
    drop = Dropout(0.5).train()
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    assert torch.equal(a, drop(x))
    assert not torch.equal(a, drop(x))  # the generator moved on
    assert drop.eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)


def test_compiled_dropout_draws_the_same_mask_as_eager():
    drop = Dropout(0.25).train()

    def f(x):
        return torch.nn.functional.gelu(drop(x * 2)) + 1

    x = torch.randn(64, 33)
    torch.manual_seed(4)
    eager = f(x)
    compiled = torch.compile(f, fullgraph=True)  # the mask's draw is no graph break
    torch.manual_seed(4)
    torch.testing.assert_close(compiled(x), eager)
