"""Generation tasks (`seq2seq`) on the shared model: which decoder, teacher-forced logits, and `generate()`.

Two kinds of backbone:

- **Encoder-decoder** (T5, BART, mT5, ...: anything `AutoModelForSeq2SeqLM` loads): the whole model is the shared
  backbone (`MultiTaskModel.encoder`); encoder tasks read its encoder's states, generation tasks use its decoder
  and LM head.
- **Encoder-only** (BERT, MiniLM, RoBERTa, ...): each generation task gets a decoder warm-started from the
  encoder's own weights with cross-attention added (BERT2BERT, Rothe et al. 2020): a causal-LM copy of the
  encoder architecture (`AutoModelForCausalLM`, `is_decoder` and `add_cross_attention` set), shared by every
  generation task (`decoder: shared`) or one per task (`decoder: own`), kept in `MultiTaskModel.decoders`. The
  forward and `generate()` run through transformers' `EncoderDecoderModel` built around the SAME encoder and
  decoder modules (a view: no weights are copied), which is also what `export` writes.

Which tasks generate is the `TextGeneration` capability of their type; this module is the one place that asks.
`MultiTaskModel.task_decoder(name)` gives a generation task's `TaskDecoder` (None for a task with a head), and the
model, trainer, evaluation, prediction and export reach generation only through that object: teacher-forced
logits, `generate()`, decoding token ids to text, and the decoder module with its `generate()` options.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    EncoderDecoderModel,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutput

from ..tasks import Task, TextGeneration

IGNORE = -100


def is_encoder_decoder(config: PretrainedConfig | dict[str, Any]) -> bool:
    value = config.get("is_encoder_decoder") if isinstance(config, dict) else getattr(config, "is_encoder_decoder",
                                                                                      False)
    return bool(value)


def load_backbone(name_or_path: str, **kwargs: Any) -> PreTrainedModel:
    """The pretrained backbone: `AutoModelForSeq2SeqLM` for an encoder-decoder checkpoint, else `AutoModel`."""
    shared = {k: v for k, v in kwargs.items() if k in ("revision", "token", "cache_dir", "trust_remote_code")}
    config = AutoConfig.from_pretrained(name_or_path, **shared)
    auto = AutoModelForSeq2SeqLM if is_encoder_decoder(config) else AutoModel
    return auto.from_pretrained(name_or_path, **kwargs)


def backbone_from_config(config: PretrainedConfig) -> PreTrainedModel:
    """A randomly initialised backbone of this config (weights are loaded afterwards)."""
    auto = AutoModelForSeq2SeqLM if is_encoder_decoder(config) else AutoModel
    return auto.from_config(config)


def encoder_of(backbone: PreTrainedModel) -> torch.nn.Module:
    """The module whose states the task heads read: the encoder half of an encoder-decoder, else the backbone."""
    return backbone.get_encoder() if is_encoder_decoder(backbone.config) else backbone


def build_decoder(encoder_config: PretrainedConfig) -> PreTrainedModel:
    """A causal LM of the encoder's architecture with cross-attention (random weights: see `warm_start`)."""
    config = copy.deepcopy(encoder_config)
    config.is_decoder = True
    config.add_cross_attention = True
    return AutoModelForCausalLM.from_config(config)


def warm_start(decoder: PreTrainedModel, encoder_state: dict[str, torch.Tensor]) -> list[str]:
    """Copy the encoder's weights into the decoder's matching layers; returns the decoder weights left random
    (cross-attention and the LM head's transform, as in Rothe et al. 2020)."""
    prefix = decoder.base_model_prefix
    result = decoder.load_state_dict({f"{prefix}.{k}": v for k, v in encoder_state.items()}, strict=False)
    return list(result.missing_keys)


def shift_right(labels: torch.Tensor, start: int, pad: int) -> torch.Tensor:
    """Teacher forcing: the decoder reads the start token, then the target up to its last token."""
    shifted = labels.new_full(labels.shape, pad)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start
    return shifted.masked_fill(shifted == IGNORE, pad)


# Task class -> whether it has the `TextGeneration` capability. A runtime-protocol isinstance costs ~10 us, and the
# forward pass and the trainer's step ask it for every batch (every task, with many tasks): answered once per class.
_GENERATES: dict[type, bool] = {}


def is_generation_task(task: Task) -> bool:
    """Whether `task` generates text (the `TextGeneration` capability)."""
    cls = type(task)
    if cls not in _GENERATES:
        _GENERATES[cls] = isinstance(task, TextGeneration)
    return _GENERATES[cls]


def generation_tasks(tasks: Mapping[str, Task]) -> set[str]:
    """The names of the tasks that generate text (the `TextGeneration` capability)."""
    return {name for name, task in tasks.items() if is_generation_task(task)}


def decoder_for(model: Any, task: Task) -> TaskDecoder | None:
    """`task`'s decoder on `model` (a `MultiTaskModel`), or None when the task reads a head instead."""
    return TaskDecoder(model, task) if is_generation_task(task) else None


class TaskDecoder:
    """How a `MultiTaskModel` runs one generation task: the one interface the model, trainer, evaluation,
    prediction and export use for generation.

    Args:
        model: the `MultiTaskModel` (its backbone and `decoders`).
        task: a task of a `TextGeneration` type.
    """

    def __init__(self, model: Any, task: TextGeneration):
        self.model = model
        self.task = task

    @property
    def key(self) -> str | None:
        """The name of the task's module in `model.decoders`; None on an encoder-decoder backbone (its own)."""
        return None if is_encoder_decoder(self.model.encoder.config) else self.task.decoder_key()

    @property
    def module(self) -> PreTrainedModel | None:
        """The warm-started decoder of an encoder-only backbone (None on an encoder-decoder, or not built yet)."""
        key = self.key
        return self.model.decoders[key] if key is not None and key in self.model.decoders else None

    @property
    def max_eval_samples(self) -> int | None:
        """Rows of an eval split that evaluation generates (None: all)."""
        return self.task.max_eval_samples

    @property
    def pad_token_id(self) -> int:
        pad = self.task.generation_options().get("pad_token_id")
        return int(pad) if pad is not None else 0

    def build(self, initialize: bool) -> None:
        """Add the task's decoder module when the backbone has none and no other task built it (warm-started
        from the encoder when `initialize`)."""
        key = self.key
        if key is not None and key not in self.model.decoders:
            self.model.decoders[key] = build_decoder(encoder_of(self.model.encoder).config)
            if initialize:
                self.model.warm_start_decoders([key])

    def view(self) -> PreTrainedModel:
        """The seq2seq model the task runs through: the backbone itself, or an `EncoderDecoderModel` around the
        shared encoder and the task's decoder (built once, kept outside the module tree)."""
        model, key = self.model, self.key
        if key is None:
            return model.encoder
        views = model.__dict__.setdefault("_generation_views", {})
        current = views.get(key)
        if current is None or current.decoder is not model.decoders[key] or current.encoder is not model.encoder:
            current = EncoderDecoderModel(encoder=model.encoder, decoder=model.decoders[key])
            views[key] = current
        return current

    def start_token_id(self) -> int:
        """The first decoder input: the backbone's `decoder_start_token_id`, or (BERT2BERT) the [CLS]/<s> that the
        tokenizer puts before a target (`Seq2Seq.fit_tokenizer`)."""
        if self.key is None:
            return int(self.model.encoder.config.decoder_start_token_id)
        start = self.task.fitted.get("start_token_id")
        if start is None:
            start = self.task.fitted.get("pad_token_id")
        if start is None:
            raise ValueError(f"task '{self.task.name}': no decoder start token known; train it with MultiTaskTrainer "
                             "and a tokenizer (processing_class), or call task.fit_tokenizer(tokenizer).")
        return int(start)

    def generation_config_values(self) -> dict[str, Any]:
        """The task's `generate()` options with the decoder start token: what manyheads and an export both use."""
        return {**self.task.generation_options(), "decoder_start_token_id": self.start_token_id()}

    def teacher_forced_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                              labels: torch.Tensor, **encoder_kwargs: Any) -> torch.Tensor:
        """Decoder logits (batch, target length, vocabulary) for `labels` given the source."""
        decoder_input_ids = shift_right(labels, self.start_token_id(), self.pad_token_id)
        kwargs = {k: v for k, v in encoder_kwargs.items() if v is not None}
        outputs = self.view()(input_ids=input_ids, attention_mask=attention_mask,
                              decoder_input_ids=decoder_input_ids, **kwargs)
        return outputs.logits

    def generate(self, attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
                 encoder_states: torch.Tensor | None = None, **encoder_kwargs: Any) -> torch.Tensor:
        """Generated token ids (decoder start token first) for a batch of sources, or for encoder states already
        computed (the pass shared with the encoder tasks of the same input)."""
        inputs: dict[str, Any] = {k: v for k, v in encoder_kwargs.items() if v is not None}
        if encoder_states is not None:
            inputs = {"encoder_outputs": BaseModelOutput(last_hidden_state=encoder_states)}
        else:
            inputs["input_ids"] = input_ids
        return self.view().generate(attention_mask=attention_mask, **inputs, **self.generation_config_values())

    def decode(self, sequences: Iterable[Any], tokenizer: Any) -> list[str]:
        """Generated (or reference) token ids, one row each, as text."""
        return self.task.decode(sequences, tokenizer)
