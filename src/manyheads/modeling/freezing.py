"""Freezing parts of the shared encoder (`MultiTaskModel.freeze`): the whole of it, its embeddings, its first layers."""

from __future__ import annotations

from torch import nn

from .adapters import is_adapter_parameter


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer layers (the longest `ModuleList` of `num_hidden_layers` blocks)."""
    count = getattr(encoder.config, "num_hidden_layers", None)
    candidates = [m for m in encoder.modules() if isinstance(m, nn.ModuleList) and len(m) == count]
    if not candidates:
        raise ValueError(f"cannot find the {count} layers of encoder {type(encoder).__name__} to freeze")
    return candidates[0]


def freeze_encoder(encoder: nn.Module, whole: bool = False, embeddings: bool = False, layers: int = 0) -> None:
    """Stop gradients to the whole `encoder`, its embeddings and/or its first `layers` layers."""
    frozen: list[nn.Module] = []
    if whole:
        frozen.append(encoder)
    if embeddings:
        frozen.append(getattr(encoder, "embeddings", None) or encoder.get_input_embeddings())
    if layers:
        stack = encoder_layers(encoder)
        if layers > len(stack):
            raise ValueError(f"freeze.layers is {layers} but the encoder has {len(stack)} layers")
        frozen.extend(stack[:layers])
    for module in frozen:
        for name, param in module.named_parameters():
            # Adapters are what trains under soft sharing: freezing the encoder's layers leaves them training.
            if not is_adapter_parameter(name):
                param.requires_grad_(False)
