"""Soft sharing: one LoRA adapter per task inside the shared encoder, through PEFT.

`Sharing(mode=...)` says how tasks share the encoder:

- `hard`: one shared, trainable encoder; a head per task (no adapters).
- `lora`: the pretrained encoder frozen; each task trains its own LoRA adapter (Hu et al. 2021) and its head.
- `hybrid`: the shared encoder trains as in `hard`, and each task adds its own LoRA adapter on top.

A task built with `adapter=False` runs on the shared encoder without an adapter of its own.

The adapters are PEFT LoRA layers injected into the encoder module itself (`peft.inject_adapter_in_model`), one
named adapter per task, so the encoder, every adapter and every head sit in ONE state dict: `save_pretrained`
writes them to one folder and `from_pretrained` rebuilds the same layers from `config.json` before loading.
Which adapter runs is chosen per forward from the task named in the batch (`active_adapters`), and a batch whose
rows belong to different tasks goes through PEFT's mixed-adapter forward (`per_row_adapters`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, shown

SHARING_MODES = {
    "hard": "one shared trainable encoder, a head per task",
    "lora": "the encoder frozen, one LoRA adapter + head per task",
    "hybrid": "the shared encoder trains, plus one LoRA adapter per task on top",
}
# PEFT's name for "no adapter" in a mixed-adapter batch.
NO_ADAPTER = "__base__"
_INSTALL = 'sharing "lora" and "hybrid" need PEFT: pip install "manyheads[peft]"'


@dataclass
class Sharing:
    """How the tasks share the encoder, and the LoRA settings of their adapters.

    Args:
        mode: `hard`, `lora` or `hybrid` (see the module docstring).
        r: the rank of each LoRA update.
        alpha: LoRA's scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the adapter's input.
        target_modules: the encoder's linear layers that get adapters (names or name suffixes, or "all-linear");
            None: PEFT's default for the architecture (query and value projections for BERT and RoBERTa), else
            every linear layer.
    """

    mode: str = "hard"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: list[str] | str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in SHARING_MODES:
            problems.append(f"mode: got {shown(self.mode)}; valid: {', '.join(SHARING_MODES)}.")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            problems.append(f"r: got {shown(self.r)}; the LoRA rank is an integer >= 1 (8 or 16 are usual).")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < math.inf:
            problems.append(f"alpha: got {shown(self.alpha)}; give a finite number > 0 (often 2 * r).")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            problems.append(f"dropout: got {shown(self.dropout)}; give a number in [0, 1).")
        if self.target_modules is not None and not (isinstance(self.target_modules, str) or (
                isinstance(self.target_modules, list) and self.target_modules
                and all(isinstance(m, str) for m in self.target_modules))):
            problems.append(f"target_modules: got {shown(self.target_modules)}; give module names such as "
                            "[query, value], or 'all-linear'.")
        if problems:
            raise ConfigError(problems, where="Sharing")

    @property
    def adapters(self) -> bool:
        """Whether tasks get adapters (every mode but `hard`)."""
        return self.mode != "hard"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_value(cls, value: Sharing | str | dict[str, Any] | None) -> Sharing:
        """A `Sharing` from itself, a mode name or a dict of its fields (as saved in `config.json`)."""
        if isinstance(value, Sharing):
            return value
        if value is None:
            return cls()
        if isinstance(value, str):
            return cls(mode=value)
        return cls(**value)


def _peft() -> Any:
    try:
        import peft  # optional: only adapters need it
    except ImportError as err:
        raise ImportError(_INSTALL) from err
    return peft


def target_modules(sharing: Sharing, model_type: str) -> list[str] | str:
    """The modules to adapt: the user's, else PEFT's default for this architecture, else every linear layer."""
    if sharing.target_modules is not None:
        return sharing.target_modules
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    return list(defaults.get(model_type) or ()) or "all-linear"


def no_adapter_problem(mode: str, tasks: Sequence[str], with_adapter: Sequence[str]) -> str | None:
    """Sharing 'lora' with no task that has an adapter trains the heads alone: say so instead of training."""
    if mode != "lora" or with_adapter:
        return None
    return (f"sharing 'lora' freezes the encoder and trains one adapter per task, but every task ({list(tasks)}) has "
            "adapter: false, so only the heads would train. Give some tasks adapter: true, or use sharing 'hard'.")


def add_adapters(encoder: nn.Module, sharing: Sharing, names: Sequence[str]) -> None:
    """Inject one LoRA adapter per name into `encoder`, then set what trains: the adapters always, the encoder's
    own weights only in `hybrid` mode."""
    peft = _peft()
    model_type = getattr(getattr(encoder, "config", None), "model_type", "")
    modules = target_modules(sharing, model_type)
    for name in names:
        config = peft.LoraConfig(r=sharing.r, lora_alpha=sharing.alpha, lora_dropout=sharing.dropout,
                                 target_modules=modules)
        try:
            with warnings.catch_warnings():  # "Already found a peft_config ...": several adapters is the point here
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                peft.inject_adapter_in_model(config, encoder, adapter_name=name)
        except ValueError as err:  # PEFT: none of the target modules exist in this encoder
            raise ConfigError(f"target_modules: {shown(modules)} matches no layer of this "
                              f"{type(encoder).__name__} ({str(err).splitlines()[0]}); name its linear layers, "
                              "e.g. [query, value] for BERT, or 'all-linear'.", where="sharing") from None
    set_trainable(encoder, sharing)
    # PEFT leaves its LoraConfig on the module; the settings live once, in `Sharing` (saved in config.json).
    with contextlib.suppress(AttributeError):
        del encoder.peft_config


def set_trainable(encoder: nn.Module, sharing: Sharing) -> None:
    """Every task's adapter trains (PEFT leaves only the last one injected trainable); the encoder's own weights
    train in `hybrid` mode only. `from_pretrained` calls it again: loading weights resets `requires_grad`."""
    for name, param in encoder.named_parameters():
        param.requires_grad_(is_adapter_parameter(name) or sharing.mode == "hybrid")


def is_adapter_parameter(name: str) -> bool:
    """Whether a parameter name (relative to the model or the encoder) belongs to a LoRA adapter."""
    return ".lora_" in name or name.startswith("lora_")


def adapter_of(name: str) -> str | None:
    """The adapter (task) a LoRA parameter belongs to: `...lora_A.<task>.weight` -> `<task>`."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.startswith("lora_"):
            return parts[i + 1]
    return None


def lora_layers(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's LoRA layers (empty without adapters)."""
    if not any(is_adapter_parameter(n) for n, _ in encoder.named_parameters()):
        return []
    from peft.tuners.lora import LoraLayer

    return [m for m in encoder.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def active_adapters(layers: Sequence[nn.Module], names: list[str]) -> Iterator[None]:
    """Run only the adapters in `names` (none: the plain encoder) inside the block.

    PEFT's `set_adapter` would also switch `requires_grad` off for every other adapter: the optimizer that
    `Trainer` builds (from the parameters that require grad) and DDP's reducer would then leave those tasks'
    adapters out. Only the active list is switched here; an inactive adapter simply gets no gradient.
    """
    # PRIVATE PEFT API: `LoraLayer._active_adapter`, the list behind the public `active_adapters`. Upgrade risk: a
    # rename would silently run every task with the adapters PEFT has active; the `peft` extra is pinned to the
    # tested minor release and tests/test_pins.py checks the attribute.
    previous = [layer.active_adapters for layer in layers]
    for layer in layers:
        layer._active_adapter = list(names)
    try:
        yield
    finally:
        for layer, names_before in zip(layers, previous):
            layer._active_adapter = names_before


def _row_adapters_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any],
                       adapter_names: list[str]) -> tuple[tuple, dict[str, Any]]:
    return args, {**kwargs, "adapter_names": adapter_names}


@contextlib.contextmanager
def per_row_adapters(layers: Sequence[nn.Module], adapter_names: list[str]) -> Iterator[None]:
    """PEFT's mixed-adapter batch: row i goes through adapter `adapter_names[i]` (`NO_ADAPTER`: none), in one pass.

    The same forward pre-hook PEFT's own `PeftModel` registers for `adapter_names`, registered on the encoder's
    LoRA layers for the block (inference only: PEFT refuses dropout-free guarantees for training).
    """
    handles = [layer.register_forward_pre_hook(partial(_row_adapters_hook, adapter_names=adapter_names),
                                               with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def merged_encoder_state(encoder: nn.Module, adapter: str | None) -> dict[str, torch.Tensor]:
    """The encoder's weights as a plain (adapter-free) encoder's state dict, `adapter`'s update merged in.

    Keys are the stock ones (`....query.weight`, not `....query.base_layer.weight`); every LoRA layer's base weight
    gets `adapter`'s delta (B @ A * alpha / r) added, as PEFT's `merge` computes it, without touching `encoder`.
    """
    state: dict[str, torch.Tensor] = {}
    layers = set(lora_layers(encoder))
    layer_of = {name: module for name, module in encoder.named_modules() if module in layers}
    for key, value in encoder.state_dict().items():
        if is_adapter_parameter(key):
            continue
        owner, _, leaf = key.rpartition(".base_layer.")
        if owner and owner in layer_of:
            value = value.detach().clone()
            layer = layer_of[owner]
            if leaf == "weight" and adapter is not None and adapter in layer.lora_A:
                value += layer.get_delta_weight(adapter).to(value.dtype)
            key = f"{owner}.{leaf}"
        state[key] = value
    return state
