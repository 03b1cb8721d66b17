"""The training loss: cross-entropy, optionally with label smoothing (evaluation never smooths)."""
from __future__ import annotations


def smoothed_cross_entropy(logits, labels, epsilon: float = 0.0):
    """Mean over the batch of the cross-entropy against the target (1 - eps) * onehot + eps / C.

    Per sample: ``(1 - eps) * -log p[label] + eps * mean_c(-log p[c])``, the definition of
    torch.nn.functional.cross_entropy(label_smoothing=eps) (Szegedy et al. 2016, Inception v3).
    Computed in float32 whatever the logits' dtype, as autocast does for cross_entropy.
    """
    import torch.nn.functional as F
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), not {epsilon}")
    if epsilon == 0.0:  # the plain loss, to the bit: the paper recipe's training is unchanged
        return F.cross_entropy(logits.float(), labels)
    logp = F.log_softmax(logits.float(), dim=1)
    nll = -logp.gather(1, labels.view(-1, 1)).squeeze(1)
    return ((1.0 - epsilon) * nll - epsilon * logp.mean(dim=1)).mean()
