"""Equal weighting: every task's loss counts once (the unitary scalarization).

Kurin et al. 2022, "In Defense of the Unitary Scalarization for Deep Multi-Task Learning" (NeurIPS): tuned
equal weighting matches most specialised methods, so it is the default and the control.
"""

from __future__ import annotations

import torch

from .base import LossWeighting


class EqualWeighting(LossWeighting):
    """Weight 1 for every task."""

    def forward(self, task: str, loss: torch.Tensor) -> torch.Tensor:
        # Multiplying by 1.0 is exact, but returning the loss itself keeps the graph identical to no weighting.
        return loss
