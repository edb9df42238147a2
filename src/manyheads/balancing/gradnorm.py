"""GradNorm, Chen et al. 2018, "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask
Networks" (ICML).

Weights are tuned so that each task's weighted gradient norm on the last shared layer, G_i = w_i * ||dL_i/dW||,
approaches mean_j(G_j) * r_i**alpha, where r_i is task i's loss ratio L_i / L_i(0) relative to the mean ratio
(a task that trains slowly gets a larger target). As in the paper, the target is held constant and w follows
the gradient of sum_i |G_i - target_i|, which is sign(G_i - target_i) * ||dL_i/dW|| for w_i; weights are then
renormalised to sum to K. With one-task micro-batches each task's latest norm and loss are kept and the
weights move once per optimizer step (summed over ranks first), with plain gradient descent at `lr`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import LossWeighting, Reduce, single_process


class GradNormWeighting(LossWeighting):
    """Gradient-norm balancing on the last shared layer.

    Args:
        tasks: task names.
        alpha: strength of the pull towards equal training rates (the paper uses 0.12 to 3; 1.5 is common).
        lr: step size of the weight update.
    """

    def __init__(self, tasks: Sequence[str], alpha: float = 1.5, lr: float = 0.025):
        super().__init__(tasks)
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.alpha, self.lr = float(alpha), float(lr)
        k = len(self.tasks)
        self.register_buffer("_weights", torch.ones(k))
        self.register_buffer("initial_loss", torch.full((k,), float("nan"), dtype=torch.float64))
        # Sums since the last optimizer step of (loss, grad norm, count) per task.
        self.register_buffer("stats", torch.zeros(3, k, dtype=torch.float64))
        self.register_buffer("last_loss", torch.full((k,), float("nan"), dtype=torch.float64))
        self.register_buffer("last_norm", torch.full((k,), float("nan"), dtype=torch.float64))
        self.anchor: list[nn.Parameter] = []

    def bind(self, model: nn.Module) -> None:
        """Use the parameters of the encoder's last layer as W (the paper's last shared layer)."""
        self.anchor = [p for p in model.encoder_layers()[-1].parameters() if p.requires_grad]
        if not self.anchor:
            raise ValueError("gradnorm needs a trainable last encoder layer; it is frozen")

    def current(self) -> torch.Tensor:
        return self._weights

    def forward(self, task: str, loss: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.anchor:
            grads = torch.autograd.grad(loss, self.anchor, retain_graph=True, allow_unused=True)
            norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))
            i = self.index[task]
            self.stats[:, i] += torch.stack([loss.detach().double(), norm.detach().double(),
                                             torch.ones((), dtype=torch.float64, device=norm.device)]).to(self.stats)
        return super().forward(task, loss)

    def step_end(self, reduce: Reduce = single_process) -> None:
        super().step_end(reduce)
        stats = reduce(self.stats.clone())
        self.stats.zero_()
        seen = stats[2] > 0
        self.last_loss = torch.where(seen, stats[0] / stats[2].clamp(min=1), self.last_loss)
        self.last_norm = torch.where(seen, stats[1] / stats[2].clamp(min=1), self.last_norm)
        self.initial_loss = torch.where(torch.isnan(self.initial_loss) & seen, self.last_loss, self.initial_loss)
        known = ~torch.isnan(self.last_norm)
        if known.sum() < 2:
            return
        self._weights = self.update(self._weights.double(), self.last_loss, self.initial_loss, self.last_norm,
                                    known, self.alpha, self.lr).to(self._weights)

    @staticmethod
    def update(weights: torch.Tensor, loss: torch.Tensor, initial: torch.Tensor, norm: torch.Tensor,
               known: torch.Tensor, alpha: float, lr: float) -> torch.Tensor:
        """One GradNorm step on the tasks in `known`; returns weights renormalised to sum to K."""
        ratio = loss[known] / initial[known]
        relative = ratio / ratio.mean()
        weighted = weights[known] * norm[known]
        target = weighted.mean() * relative ** alpha
        new = weights.clone()
        new[known] = (weights[known] - lr * torch.sign(weighted - target) * norm[known]).clamp(min=1e-3)
        return new * (len(new) / new.sum())
