"""Export one task of a `MultiTaskModel` as a stock `AutoModelFor...` folder.

The encoder's weights and the task's head are copied into the stock model of the task type
(`Task.stock_auto_class`), with `id2label`, so `transformers.pipeline(...)` works on the folder. The copy is
verified numerically: where an encoder family's stock head differs from the manyheads head (for example mean
pooling, which no stock sequence classifier has), export fails with a clear error instead of writing a
model that predicts something else.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
import transformers
from transformers import AutoTokenizer

from ..modeling.decoders import generation_config_values, is_encoder_decoder
from ..modeling.model import MultiTaskModel

# Our head's parameter names -> the stock head's, per head layout; the one whose keys match the stock
# model's head exactly is used. Pooler heads are BERT's classifier; cls heads RoBERTa's classification head.
_HEAD_LAYOUTS: list[dict[str, str]] = [
    {"classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"},
    {"dense.weight": "classifier.dense.weight", "dense.bias": "classifier.dense.bias",
     "classifier.weight": "classifier.out_proj.weight", "classifier.bias": "classifier.out_proj.bias"},
    {"qa_outputs.weight": "qa_outputs.weight", "qa_outputs.bias": "qa_outputs.bias"},
]


class ExportError(ValueError):
    """The task cannot be expressed as the stock model of its type."""


def _stock_config(model: MultiTaskModel, task: Any) -> Any:
    config = model.config.encoder_config()
    if task.label_list:
        config.id2label = dict(enumerate(task.label_list))
        config.label2id = {label: i for i, label in enumerate(task.label_list)}
    config.num_labels = task.num_outputs
    if task.stock_problem_type:
        config.problem_type = task.stock_problem_type
    return config


def build_stock_model(model: MultiTaskModel, task_name: str) -> Any:
    """The stock `AutoModelFor...` holding the encoder and `task_name`'s head, checked to give equal logits."""
    if task_name not in model.tasks:
        raise ExportError(f"--task: unknown task {task_name!r}; this model has {list(model.tasks)}.")
    task = model.tasks[task_name]
    if task.generates:
        return build_stock_seq2seq(model, task_name)
    head = model.heads[task_name]
    if getattr(head, "pooling", None) in ("mean", "max"):
        raise ExportError(f"task '{task_name}' uses {head.pooling} pooling, which no stock "
                          "AutoModelForSequenceClassification has; train it with 'pooling: pooler' (BERT family) or "
                          "'cls' (RoBERTa family) to export.")
    auto_class = getattr(transformers, task.stock_auto_class)
    stock = auto_class.from_config(_stock_config(model, task))
    prefix = stock.base_model_prefix
    stock_keys = set(stock.state_dict())
    encoder_keys = {k for k in stock_keys if k.startswith(prefix + ".")}
    state = {f"{prefix}.{k}": v for k, v in model.encoder_state(task_name).items() if f"{prefix}.{k}" in encoder_keys}
    head_state = task.export_head_state({k: v.detach().clone() for k, v in head.state_dict().items()})
    wanted = stock_keys - encoder_keys
    layout = next((m for m in _HEAD_LAYOUTS if set(m) == set(head_state) and set(m.values()) == wanted), None)
    if layout is None or set(state) != encoder_keys:
        raise ExportError(f"task '{task_name}' ({task.type_name}) on a '{model.config.encoder['model_type']}' "
                          f"encoder cannot be expressed as a stock {auto_class.__name__}: its head has "
                          f"{sorted(wanted)}, manyheads has {sorted(head_state)}.")
    state.update({layout[k]: v for k, v in head_state.items()})
    stock.load_state_dict(state, strict=True)
    _check_equal(model, stock, task_name)
    return stock


def build_stock_seq2seq(model: MultiTaskModel, task_name: str) -> Any:
    """A generation task as a stock seq2seq model: the backbone itself (T5, BART: `AutoModelForSeq2SeqLM`) or an
    `EncoderDecoderModel` of the encoder and the task's decoder; its generation config holds the task's
    `generate()` options, and it must generate the same tokens as manyheads on a probe batch."""
    task = model.tasks[task_name]
    encoder_config = model.config.encoder_config()
    if is_encoder_decoder(encoder_config):
        stock = transformers.AutoModelForSeq2SeqLM.from_config(encoder_config)
        stock.load_state_dict(model.encoder_state(task_name), strict=True)
    else:
        encoder = transformers.AutoModel.from_config(encoder_config)
        encoder.load_state_dict(model.encoder_state(task_name), strict=True)
        decoder = copy.deepcopy(model.decoders[task.decoder_key])
        stock = transformers.EncoderDecoderModel(encoder=encoder, decoder=decoder)
    options = generation_config_values(model, task)
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


def _check_equal(model: MultiTaskModel, stock: Any, task_name: str) -> None:
    """Both models must give the same logits (in target units for regression) on a probe batch."""
    task = model.tasks[task_name]
    vocab = model.config.encoder_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    was_training = model.training
    model.eval()
    stock.eval()
    with torch.no_grad():
        ours = task.stock_logits(model(input_ids=ids, attention_mask=mask, task=task_name).logits)
        theirs = stock(input_ids=ids, attention_mask=mask)
        theirs = torch.stack([theirs.start_logits, theirs.end_logits], -1) if hasattr(theirs, "start_logits") \
            else theirs.logits
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
