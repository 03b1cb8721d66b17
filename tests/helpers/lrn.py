"""The paper's local response normalisation written out in numpy: the model tests' reference for every LRN."""
from __future__ import annotations

import numpy as np


def lrn_reference(a: np.ndarray, n=5, k=2.0, alpha=1e-4, beta=0.75) -> np.ndarray:
    """The paper's b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta, channel axis 1.
    An even n reaches n/2 maps down and n/2 - 1 up, as torch.nn.LocalResponseNorm does."""
    out = np.empty_like(a, dtype=np.float64)
    channels = a.shape[1]
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + (n - 1) // 2)
        total = (a[:, lo:hi + 1].astype(np.float64) ** 2).sum(axis=1)
        out[:, i] = a[:, i] / (k + alpha * total) ** beta
    return out
