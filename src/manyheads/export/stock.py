"""Export one task of a `MultiTaskModel` as a stock `AutoModelFor...` folder.

The encoder's weights and the task's head are copied into the stock model the task's type names (its
`StockExport` capability: `task.stock_layout(head)` gives the stock class, its `problem_type` and how the head's
weights map onto the stock head), with `id2label`, so `transformers.pipeline(...)` works on the folder. A
generation task is exported through its decoder (`MultiTaskModel.task_decoder`) as a stock seq2seq model. The copy is
verified numerically: where an encoder family's stock head differs from the manyheads head (for example mean
pooling, which no stock sequence classifier has), export fails with a clear error instead of writing a model
that predicts something else.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
import transformers
from transformers import AutoTokenizer

from ..modeling.decoders import TaskDecoder
from ..modeling.model import MultiTaskModel
from ..tasks import StockExport, StockLayout


class ExportError(ValueError):
    """The task cannot be expressed as the stock model of its type."""


def _stock_config(model: MultiTaskModel, task: Any, layout: StockLayout) -> Any:
    config = model.config.encoder_config()
    if task.label_list:
        config.id2label = dict(enumerate(task.label_list))
        config.label2id = {label: i for i, label in enumerate(task.label_list)}
    config.num_labels = task.num_outputs
    if layout.problem_type:
        config.problem_type = layout.problem_type
    return config


def _known(model: MultiTaskModel, task_name: str) -> str:
    """The task `task_name` names (a shared head's name: its first task), or ExportError listing the names."""
    name = model.task_of(task_name)
    if name not in model.tasks:
        raise ExportError(f"--task: unknown task {task_name!r}; this model has {list(model.tasks)}"
                          + (f" (heads: {list(model.heads)})" if len(model.heads) < len(model.tasks) else "") + ".")
    return name


def stock_layout(model: MultiTaskModel, task_name: str) -> StockLayout:
    """The stock layout of `task_name`'s head (its type's `StockExport` capability), or ExportError saying why
    there is none. A shared head's name, or any of its tasks, exports that one head."""
    task = model.tasks[_known(model, task_name)]
    if not isinstance(task, StockExport):
        raise ExportError(f"task '{task_name}' (type '{task.type}') has no stock model layout: its type does not "
                          "implement `stock_layout` (the StockExport capability).")
    if model.head_of(task.name) not in model.heads:
        raise ExportError(f"task '{task_name}' has no head yet (its labels are unknown); train it first.")
    try:
        return task.stock_layout(model.heads[model.head_of(task.name)])
    except ValueError as err:
        raise ExportError(f"task '{task_name}' {err}.") from None  # "... uses mean pooling, which ..."


def stock_auto_class(model: MultiTaskModel, task_name: str) -> str:
    """The name of the `transformers` class a stock export of `task_name` is (e.g. for `pipeline`)."""
    decoder = model.task_decoder(model.task_of(task_name)) if model.task_of(task_name) in model.tasks else None
    return "AutoModelForSeq2SeqLM" if decoder is not None else stock_layout(model, task_name).auto_class


def build_stock_model(model: MultiTaskModel, task_name: str) -> Any:
    """The stock `AutoModelFor...` holding the encoder and `task_name`'s head, checked to give equal logits."""
    task_name = _known(model, task_name)
    decoder = model.task_decoder(task_name)
    if decoder is not None:
        return build_stock_seq2seq(model, decoder)
    task = model.tasks[task_name]
    layout = stock_layout(model, task_name)
    auto_class = getattr(transformers, layout.auto_class)
    stock = auto_class.from_config(_stock_config(model, task, layout))
    prefix = stock.base_model_prefix
    stock_keys = set(stock.state_dict())
    encoder_keys = {k for k in stock_keys if k.startswith(prefix + ".")}
    state = {f"{prefix}.{k}": v for k, v in model.encoder_state(task_name).items() if f"{prefix}.{k}" in encoder_keys}
    head = model.heads[model.head_of(task_name)]
    head_state = layout.head_state({k: v.detach().clone() for k, v in head.state_dict().items()})
    wanted = stock_keys - encoder_keys
    key_map = next((m for m in layout.key_maps if set(m) == set(head_state) and set(m.values()) == wanted), None)
    if key_map is None or set(state) != encoder_keys:
        raise ExportError(f"task '{task_name}' ({task.type}) on a '{model.config.encoder['model_type']}' "
                          f"encoder cannot be expressed as a stock {auto_class.__name__}: its head has "
                          f"{sorted(wanted)}, manyheads has {sorted(head_state)}.")
    state.update({key_map[k]: v for k, v in head_state.items()})
    stock.load_state_dict(state, strict=True)
    _check_equal(model, stock, task_name, layout)
    return stock


def build_stock_seq2seq(model: MultiTaskModel, decoder: TaskDecoder) -> Any:
    """A generation task as a stock seq2seq model: the backbone itself (T5, BART: `AutoModelForSeq2SeqLM`) or an
    `EncoderDecoderModel` of the encoder and the task's decoder; its generation config holds the task's
    `generate()` options, and it must generate the same tokens as manyheads on a probe batch."""
    task_name = decoder.task.name
    encoder_config = model.config.encoder_config()
    if decoder.key is None:  # an encoder-decoder backbone: its own decoder
        stock = transformers.AutoModelForSeq2SeqLM.from_config(encoder_config)
        stock.load_state_dict(model.encoder_state(task_name), strict=True)
    else:
        encoder = transformers.AutoModel.from_config(encoder_config)
        encoder.load_state_dict(model.encoder_state(task_name), strict=True)
        stock = transformers.EncoderDecoderModel(encoder=encoder, decoder=copy.deepcopy(decoder.module))
    options = decoder.generation_config_values()
    for key in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
        setattr(stock.config, key, options[key])
    stock.generation_config = transformers.GenerationConfig(**options)
    vocab = encoder_config.vocab_size
    ids = torch.randint(5, vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    was_training = model.training
    model.eval()
    stock.eval()
    with torch.no_grad():
        ours = model.generate_task(task_name, ids, mask)
        theirs = stock.generate(input_ids=ids, attention_mask=mask)
    model.train(was_training)
    if ours.shape != theirs.shape or not torch.equal(ours, theirs):
        raise ExportError(f"task '{task_name}': the stock {type(stock).__name__} does not generate the same tokens as "
                          "manyheads; export is not supported for this backbone.")
    return stock


def _check_equal(model: MultiTaskModel, stock: Any, task_name: str, layout: StockLayout) -> None:
    """Both models must give the same logits (in target units for regression) on a probe batch."""
    vocab = model.config.encoder_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    was_training = model.training
    model.eval()
    stock.eval()
    with torch.no_grad():
        ours = layout.our_logits(model(input_ids=ids, attention_mask=mask, task=task_name).logits)
        theirs = layout.stock_logits(stock(input_ids=ids, attention_mask=mask))
    model.train(was_training)
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, atol=1e-4):
        raise ExportError(f"task '{task_name}': the stock {type(stock).__name__} does not reproduce the manyheads "
                          "head's outputs for this encoder family; export is not supported for it.")


def export_task(model_dir: str | os.PathLike, task_name: str, output_dir: str | os.PathLike) -> str:
    """Write `task_name` of the model saved in `model_dir` as a stock folder (model + tokenizer)."""
    model = MultiTaskModel.from_pretrained(model_dir)
    stock = build_stock_model(model, task_name)
    stock.save_pretrained(output_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(output_dir)
    return type(stock).__name__
