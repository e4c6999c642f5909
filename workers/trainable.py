"""Which parameters train: none (base eval), all (full-parameter reference) or some decoder layers.

Selecting layer i means `<decoder>.layers.i.*` only: embeddings, the final norm and the LM head stay frozen,
including tied embeddings (they are the same tensor as the LM head, so freezing one freezes both).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from workers.spec import TrialSpec


@dataclass(frozen=True)
class DecoderLayout:
    """Where a causal LM keeps its decoder stack, found by structure rather than by model class."""

    layers_path: str
    """Dotted module path of the decoder-layer ModuleList, e.g. `model.layers`."""
    num_layers: int


@dataclass(frozen=True)
class TrainableSelection:
    spec: TrialSpec
    layout: DecoderLayout
    parameter_names: tuple[str, ...]
    """Names (as in `model.named_parameters()`) of the parameters that train, in model order."""

    @property
    def lowest_layer(self) -> int | None:
        """Lowest trainable decoder layer: no backward and no stored activation is needed below it."""
        return min(self.spec.layers) if self.spec.layers else None


def find_decoder_layout(model: nn.Module) -> DecoderLayout:
    """The largest ModuleList whose children share one class: the decoder layers of any HF causal LM."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(child) for child in module}) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None or len(best[1]) < 2:
        found = f"{best[0]} with {len(best[1])} module" if best else "no ModuleList"
        raise ValueError(f"model {type(model).__name__} has no recognisable decoder-layer list (found {found})")
    return DecoderLayout(layers_path=best[0], num_layers=len(best[1]))


def select_trainable(model: nn.Module, spec: TrialSpec) -> TrainableSelection:
    """Set requires_grad on exactly the selected parameters and return their names."""
    layout = find_decoder_layout(model)
    for index in spec.layers:
        if not 0 <= index < layout.num_layers:
            raise ValueError(
                f"layer {index} is out of range: {type(model).__name__} has {layout.num_layers} decoder layers "
                f"({layout.layers_path}.0-{layout.num_layers - 1})"
            )
    prefixes = tuple(f"{layout.layers_path}.{index}." for index in spec.layers)
    names = []
    for name, parameter in model.named_parameters():
        if spec.kind == "full":
            trainable = True
        elif spec.kind == "base":
            trainable = False
        else:
            trainable = name.startswith(prefixes)
        parameter.requires_grad_(trainable)
        if trainable:
            names.append(name)
    return TrainableSelection(spec=spec, layout=layout, parameter_names=tuple(names))
