"""The KL reference policy, stored as the original values of the trainable parameters only.

The policy and its reference differ only where training happened, so a single-layer trial keeps one
layer's original weights (not a second model) and swaps them in for the reference pass. A full-parameter
trial necessarily keeps a copy of everything.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class ReferenceWeights:
    def __init__(self, model: nn.Module, parameter_names: tuple[str, ...]) -> None:
        params = dict(model.named_parameters())
        self.original = {name: params[name].detach().clone() for name in parameter_names}

    @contextmanager
    @torch.no_grad()
    def active(self, model: nn.Module) -> Iterator[None]:
        """Temporarily load the reference values into the model (no autograd graph may be alive)."""
        params = dict(model.named_parameters())
        current = {name: params[name].detach().clone() for name in self.original}
        for name, value in self.original.items():
            params[name].copy_(value)
        try:
            yield
        finally:
            for name, value in current.items():
                params[name].copy_(value)
