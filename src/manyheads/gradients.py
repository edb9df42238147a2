"""Task gradients compared: norms and pairwise cosines from the K x K Gram matrix of K task gradients.

Shared by gradient aggregation (its logged `grad_norm_<task>` / `grad_cos_<a>_<b>`) and the gradient-conflict
diagnostic, so both report the same numbers for the same gradients. Working from the Gram matrix avoids a
normalised copy of the K x n gradient matrix.
"""

from __future__ import annotations

import torch


def norms_and_cosines(gram: torch.Tensor, zero: str = "nan") -> tuple[torch.Tensor, torch.Tensor]:
    """(norms [K], cosines [K, K]) in float64 from a Gram matrix `G = J @ J.T`.

    Args:
        zero: the cosine of a task whose gradient is zero: "nan" (undefined, 0/0) or "zero".
    """
    gram = gram.double()
    norms = gram.diagonal().clamp(min=0).sqrt()
    denominator = torch.outer(norms, norms)
    if zero == "zero":
        denominator = denominator.clamp(min=1e-24)
    return norms, (gram / denominator).clamp(-1.0, 1.0)
