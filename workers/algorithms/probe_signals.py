"""Zero-training signals of how much one decoder layer could move the RL objective, from base-model rollouts.

Pure tensor functions; `workers.probe` measures the tensors they read. Each signal is a cheap stand-in for the
layer's contribution C(i) that a full single-layer RL trial would measure:
- `block_influence`: 1 - cos(layer input, layer output) over real tokens (Men et al. 2024, "ShortGPT"): how much
  the layer changes the residual stream at all.
- `relative_gradient`: ||g_i|| / ||W_i||, the policy gradient's size relative to the weights it would move, so
  layers whose weights are large are not favoured for being large.
- `adam_first_step` and the lookahead improvement `workers.probe` computes with it: the first AdamW step moves
  each weight by lr * sign(gradient), whatever the gradient's scale; the held-out surrogate gain of exactly that
  step is what one step of single-layer training would buy.
"""

from __future__ import annotations

import torch

SIGNALS = ("lookahead", "relative_gradient", "grad_norm", "block_influence")
"""Every signal the probe measures; for each, larger predicts a larger contribution."""


def block_influence(hidden_in_NLH: torch.Tensor, hidden_out_NLH: torch.Tensor, mask_NL: torch.Tensor) -> tuple[float, float]:
    """(sum over real tokens of 1 - cos(in, out), number of real tokens): summed, so batches add up exactly."""
    cosine_NL = torch.nn.functional.cosine_similarity(hidden_in_NLH.float(), hidden_out_NLH.float(), dim=-1)
    weight_NL = mask_NL.to(cosine_NL.dtype)
    return float(((1.0 - cosine_NL) * weight_NL).sum()), float(weight_NL.sum())


def relative_gradient(gradients: list[torch.Tensor], weights: list[torch.Tensor]) -> tuple[float, float, float]:
    """(||g||, ||W||, ||g|| / ||W||) over all tensors of one layer, norms taken over the concatenation."""
    grad_norm = float(torch.sqrt(sum((g.float() ** 2).sum() for g in gradients)))
    weight_norm = float(torch.sqrt(sum((w.float() ** 2).sum() for w in weights)))
    return grad_norm, weight_norm, grad_norm / weight_norm if weight_norm > 0 else float("nan")


def adam_first_step(gradient: torch.Tensor, lr: float) -> torch.Tensor:
    """The change AdamW's first step makes to a weight (weight decay aside): with bias correction the first and
    second moments are g and g^2, so the step is -lr * g / (|g| + eps), i.e. -lr * sign(g) up to eps."""
    return -lr * torch.sign(gradient)
