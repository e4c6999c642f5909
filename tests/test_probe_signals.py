"""The probe's signal math against hand-computed values and against torch's own AdamW."""

from __future__ import annotations

import math

import pytest
import torch

from workers.algorithms.probe_signals import adam_first_step, block_influence, relative_gradient


def test_block_influence_sums_one_minus_cosine_over_real_tokens():
    hidden_in = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]]])
    hidden_out = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0]]])  # cos 1, 0, -1 -> 1 - cos = 0, 1, 2
    assert block_influence(hidden_in, hidden_out, torch.tensor([[1, 1, 1]])) == pytest.approx((3.0, 3.0))
    assert block_influence(hidden_in, hidden_out, torch.tensor([[1, 1, 0]])) == pytest.approx((1.0, 2.0))  # padding ignored


def test_relative_gradient_takes_norms_over_all_tensors_of_the_layer():
    grad_norm, weight_norm, ratio = relative_gradient([torch.tensor([3.0]), torch.tensor([[4.0]])],
                                                      [torch.tensor([0.0, 6.0]), torch.tensor([8.0])])
    assert (grad_norm, weight_norm, ratio) == pytest.approx((5.0, 10.0, 0.5))
    assert math.isnan(relative_gradient([torch.ones(2)], [torch.zeros(2)])[2])


def test_adam_first_step_is_what_torch_adamw_does_on_its_first_step():
    weight = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    gradient = torch.tensor([3.0, -0.01, 1e-3, -2.0])
    expected = weight.detach() + adam_first_step(gradient, 0.1)
    assert expected.tolist() == pytest.approx([0.4, -0.9, 1.9, 0.1])
    optimizer = torch.optim.AdamW([weight], lr=0.1, weight_decay=0.0)
    weight.grad = gradient.clone()
    optimizer.step()
    # equal up to AdamW's eps: lr * eps / (|g| + eps) is 1e-6 for g = 1e-3, far less for the other weights
    torch.testing.assert_close(weight.detach(), expected, rtol=0, atol=2e-6)
