"""Label smoothing (alexnet_pipe.losses) against torch's cross_entropy and a numpy formula."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import log_softmax

from alexnet_pipe.losses import smoothed_cross_entropy


def _numpy_smoothed(logits, labels, eps):
    """Cross-entropy against q = (1 - eps) * onehot(label) + eps / C."""
    n, c = logits.shape
    q = np.full((n, c), eps / c)
    q[np.arange(n), labels] += 1 - eps
    return float(-(q * log_softmax(logits.astype(np.float64), axis=1)).sum(axis=1).mean())


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 0.9])
def test_matches_torch_and_numpy(eps):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 10, generator=g) * 3
    labels = torch.randint(0, 10, (32,), generator=g)
    got = smoothed_cross_entropy(logits, labels, eps)
    torch.testing.assert_close(got, F.cross_entropy(logits, labels, label_smoothing=eps))
    assert got.item() == pytest.approx(_numpy_smoothed(logits.numpy(), labels.numpy(), eps), rel=1e-5)


def test_gradients_match_torch():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 7, generator=g)
    labels = torch.randint(0, 7, (16,), generator=g)
    ours, ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    smoothed_cross_entropy(ours, labels, 0.1).backward()
    F.cross_entropy(ref, labels, label_smoothing=0.1).backward()
    torch.testing.assert_close(ours.grad, ref.grad)


def test_smoothing_raises_the_loss_of_a_confident_correct_prediction():
    logits = torch.tensor([[20.0, 0.0, 0.0]])
    labels = torch.tensor([0])
    assert smoothed_cross_entropy(logits, labels, 0.0).item() < 1e-6
    # eps / C of the target sits on each wrong class, whose -log p is ~20
    assert smoothed_cross_entropy(logits, labels, 0.3).item() == pytest.approx(0.3 * 40 / 3, rel=1e-4)


def test_low_precision_logits_give_a_float32_loss_and_bad_eps_is_refused():
    logits = torch.randn(4, 5).to(torch.bfloat16)
    labels = torch.tensor([0, 1, 2, 3])
    out = smoothed_cross_entropy(logits, labels, 0.1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.cross_entropy(logits.float(), labels, label_smoothing=0.1))
    for eps in (-0.1, 1.0):
        with pytest.raises(ValueError, match="label smoothing"):
            smoothed_cross_entropy(logits, labels, eps)
