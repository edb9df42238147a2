"""`MultiTaskModel`: one shared encoder loadable by `AutoModel`, one head per task.

The task of a micro-batch travels inside the batch (`task="sst2"`), so the trainer never has to mutate
model state to route it; that keeps every DDP rank on the same head at the same step.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ..errors import ConfigError
from ..tasks import Task, task_from_spec
from .adapters import (
    NO_ADAPTER,
    Sharing,
    active_adapters,
    adapter_of,
    add_adapters,
    is_adapter_parameter,
    lora_layers,
    merged_encoder_state,
    no_adapter_problem,
    per_row_adapters,
    set_trainable,
)
from .config import MultiTaskConfig
from .decoders import TaskDecoder, backbone_from_config, decoder_for, encoder_of, load_backbone, warm_start
from .freezing import encoder_layers, freeze_encoder
from .load_check import ModelLoadError, load_problems, reading_weights
from .model_card import render_card, write_card
from .shared_heads import head_group_problems, head_groups, label_problem


@dataclass
class MultiTaskOutput(ModelOutput):
    """Output of `MultiTaskModel.forward`: the task's loss (when labels are given) and its logits."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def _dropout(config: Any) -> float:
    for key in ("classifier_dropout", "hidden_dropout_prob", "hidden_dropout", "dropout"):
        value = getattr(config, key, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.1


class MultiTaskModel(PreTrainedModel):
    """A shared encoder with one head per task.

    Build it for training with `MultiTaskModel.from_encoder(name_or_path, tasks)`; reload a trained one with
    `MultiTaskModel.from_pretrained(folder)` (or `AutoModel.from_pretrained(folder)`). `model.base_model` is the
    shared encoder, so the usual `for p in model.base_model.parameters(): p.requires_grad = False` freezes the
    encoder and leaves the heads training.

    A task whose labels are not known yet (neither declared nor fitted) gets its head once `MultiTaskTrainer` has
    fitted it on the training data (`add_missing_heads`).

    `sharing` (`from_encoder(..., sharing="lora")`) gives every task its own LoRA adapter inside the encoder
    (`manyheads.modeling.adapters`): each forward runs the adapter of the task it is for.

    A generation task (`TextGeneration` capability) has a decoder instead of a head: `task_decoder(name)` is the
    one object through which the trainer, evaluation, prediction and export reach it (None for a head task).

    Tasks with the same `head` setting (datasets of one task) train one head, `heads[<head>]` (`shared_heads.py`);
    `head_of(task)` names a task's head, and the head's name works wherever a task's name does at prediction.
    """

    config_class = MultiTaskConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # Extra model-card content the next `save_pretrained` writes (`render_card`'s keyword arguments: `metrics`,
    # `training`, ...). `MultiTaskTrainer` sets it before each of its saves, so every save writes the card once.
    card_details: dict[str, Any] | None = None
    # The loss is a per-micro-batch mean; the trainer scales it for gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(self, config: MultiTaskConfig, encoder: PreTrainedModel | None = None,
                 tasks: Iterable[Task] | None = None):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else backbone_from_config(config.encoder_config())
        task_list = list(tasks) if tasks is not None else [task_from_spec(spec) for spec in config.tasks]
        self.tasks: dict[str, Task] = {task.name: task for task in task_list}
        self.sharing = Sharing.from_value(config.sharing)
        problems = head_group_problems(self.tasks, self.sharing.adapters)
        if problems:
            raise ConfigError(problems)
        # {head name: its tasks}; a task without a `head` setting is its own head.
        self.head_groups = head_groups(self.tasks)
        if self.sharing.adapters:
            with_adapter = [t.name for t in task_list if t.adapter]
            problem = no_adapter_problem(self.sharing.mode, list(self.tasks), with_adapter)
            if problem:
                raise ConfigError(problem)
            add_adapters(self.encoder, self.sharing, with_adapter)
        # A plain list, not registered as submodules: the layers already belong to the encoder.
        self._lora_layers = lora_layers(self.encoder)
        self.heads = nn.ModuleDict()
        # Generation tasks on an encoder-only backbone: warm-started decoders ("shared", or a task's own).
        self.decoders = nn.ModuleDict()
        self.add_missing_heads(initialize=False)
        self.post_init()

    @classmethod
    def from_encoder(cls, name_or_path: str | PreTrainedModel, tasks: Iterable[Task],
                     sharing: Sharing | str | dict[str, Any] | None = None, **kwargs: Any) -> MultiTaskModel:
        """Pretrained encoder weights (any `AutoModel`, or an encoder object), freshly initialised heads (and
        adapters, with `sharing="lora"` / `"hybrid"` or a `Sharing`)."""
        sharing = Sharing.from_value(sharing)  # checked before the weights load
        encoder = name_or_path if isinstance(name_or_path, PreTrainedModel) else load_backbone(name_or_path, **kwargs)
        tasks = list(tasks)
        names = [t.name for t in tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique; {duplicates} are used more than once.")
        config = MultiTaskConfig(encoder=encoder.config.to_dict(), tasks=[t.spec() for t in tasks],
                                 sharing=sharing.to_dict(), pad_token_id=getattr(encoder.config, "pad_token_id", None))
        model = cls(config, encoder=encoder, tasks=tasks)
        model.warm_start_decoders()
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any,
                        **kwargs: Any) -> MultiTaskModel | tuple[MultiTaskModel, dict[str, Any]]:
        """`PreTrainedModel.from_pretrained`, strict: a head or encoder tensor missing from the weights, a tensor of
        a task the config does not list, a head whose size does not match its labels, or a damaged weight file is
        a `ModelLoadError` naming the task and the file, never a silently re-initialised head."""
        want_info = kwargs.pop("output_loading_info", False)
        kwargs.setdefault("ignore_mismatched_sizes", True)  # reported below, by task, instead of a bare RuntimeError
        where = str(pretrained_model_name_or_path)
        with reading_weights(where):
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                                  **kwargs)
        problems = load_problems(info)
        if problems:
            raise ModelLoadError([f"{where}: {p}" for p in problems])
        if model.sharing.adapters:
            set_trainable(model.encoder, model.sharing)
        return (model, info) if want_info else model

    def add_missing_heads(self, initialize: bool = True) -> list[str]:
        """Build the heads of tasks whose output size is now known; returns their names."""
        has_pooler = getattr(self.encoder, "pooler", None) is not None
        dropout = _dropout(self.encoder.config)
        added = []
        for head, names in self.head_groups.items():
            decoder = self.task_decoder(names[0])
            if decoder is not None:  # a generation task: a decoder instead of a head
                decoder.build(initialize)
                continue
            problem = label_problem(head, [self.tasks[name] for name in names])
            if problem:
                raise ConfigError(problem)
            known = [self.tasks[name] for name in names if self.tasks[name].num_outputs is not None]
            if head not in self.heads and known:
                self.heads[head] = known[0].build_head(self.config.hidden_size, dropout, has_pooler)
                if initialize:
                    self.heads[head].apply(self._init_weights)
                added.append(head)
        self.sync_config()
        return added

    def head_of(self, task: str) -> str:
        """The name of the head `task` trains (its own name unless it shares one)."""
        return self.tasks[task].head or task

    def prediction_tasks(self) -> dict[str, Task]:
        """`{head name: the task that reads it at prediction}`: one entry per head (and per generation task);
        a shared head is read with its first task's settings and fitted state."""
        return {head: self.tasks[names[0]] for head, names in self.head_groups.items()}

    def task_decoder(self, task: str) -> TaskDecoder | None:
        """The decoder of generation task `task` (its `generate()`, teacher-forced logits, decoding); None for a
        task that reads a head."""
        return decoder_for(self, self.tasks[self.task_of(task)])

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict[str, str]:
        """The ties of every model inside this one, under its prefix: a decoder's (or a seq2seq backbone's) LM head
        shares its embeddings, so save_pretrained stores it once and from_pretrained must tie it again."""
        tied: dict[str, str] = {}
        for prefix, module in self.named_modules(remove_duplicate=False):
            if prefix and isinstance(module, PreTrainedModel):
                own = module.get_expanded_tied_weights_keys(all_submodels=False)
                tied.update({f"{prefix}.{k}": f"{prefix}.{v}" for k, v in own.items()})
        return tied

    def warm_start_decoders(self, keys: Iterable[str] | None = None) -> None:
        """Copy the encoder's weights into these decoders (default: all): BERT2BERT's warm start."""
        keys = list(keys if keys is not None else self.decoders)
        if not keys:
            return
        state = self.encoder_state()
        for key in keys:
            warm_start(self.decoders[key], state)

    def sync_config(self) -> None:
        """Copy every task's settings and fitted state into the config (what `save_pretrained` writes)."""
        self.config.tasks = [task.spec() for task in self.tasks.values()]

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained`, plus the model card (README.md: tasks, labels, encoder, usage, and
        whatever `card_details` holds), written once per save."""
        self.sync_config()
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_card(save_directory, render_card(self.tasks, self.config.encoder, **(self.card_details or {})))

    def _init_weights(self, module: nn.Module) -> None:
        # Only heads reach here with fresh weights; same scheme as BERT's heads.
        std = getattr(self.encoder.config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def init_weights(self) -> None:
        # The encoder arrives initialised (pretrained or by its own post_init); only heads need it.
        self.heads.apply(self._init_weights)

    # ----- routing -----
    def task_of(self, name: str) -> str:
        """A task's name, or a shared head's name read as its first task (prediction asks for heads)."""
        if name not in self.tasks and name in self.head_groups:
            return self.head_groups[name][0]
        return name

    def _task_name(self, task: str | list[str] | None) -> str:
        if isinstance(task, (list, tuple)):
            # A collator that kept one name per row: all rows of a micro-batch share one task.
            if len(set(task)) != 1:
                raise ValueError(f"a micro-batch must hold one task, got {sorted(set(task))}")
            task = task[0]
        if task is None:
            if len(self.tasks) == 1:
                return next(iter(self.tasks))
            raise ValueError(f"pass task=<name>; this model has tasks {list(self.tasks)}")
        task = self.task_of(task)
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; this model has tasks {list(self.tasks)}")
        if self.head_of(task) not in self.heads and self.task_decoder(task) is None:
            raise ValueError(f"task {task!r} has no head yet: its labels are unknown. Declare 'labels', or train it "
                             "with MultiTaskTrainer, which fits them on the training data.")
        return task

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One encoder pass: (token states, pooled state or None)."""
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        outputs = encoder_of(self.encoder)(input_ids=input_ids, attention_mask=attention_mask, return_dict=True,
                                           **kwargs)
        return outputs.last_hidden_state, getattr(outputs, "pooler_output", None)

    def _adapters_of(self, names: Iterable[str]) -> list[str]:
        """The adapters that run for these tasks (a task without one runs on the plain encoder)."""
        return [name for name in names if self._lora_layers and self.tasks[name].adapter]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        task: str | list[str] | None = None,
        **kwargs: Any,
    ) -> MultiTaskOutput:
        """Run the encoder (with `task`'s adapter, if it has one) and the head of `task`; with `labels`, also that
        task's loss."""
        name = self._task_name(task)
        decoder = self.task_decoder(name)
        with active_adapters(self._lora_layers, self._adapters_of([name])):
            if decoder is not None:
                if labels is None:
                    raise ValueError(f"task {name!r} generates text: forward needs the target `labels` (teacher "
                                     "forcing); use generate_task() or forward_all() to generate.")
                logits = decoder.teacher_forced_logits(input_ids, attention_mask, labels,
                                                       token_type_ids=token_type_ids, **kwargs)
            else:
                sequence_output, pooled = self.encode(input_ids, attention_mask, token_type_ids, **kwargs)
                logits = self.heads[self.head_of(name)](sequence_output, pooled, attention_mask)
        loss = self.tasks[name].loss(logits, labels) if labels is not None else None
        return MultiTaskOutput(loss=loss, logits=logits)

    def encoder_passes(self, tasks: Iterable[str] | None = None) -> list[list[str]]:
        """The tasks that share each encoder pass in `forward_all`: all of them with hard sharing; with adapters, one
        pass per task that has one, plus one for the tasks without."""
        names = [self._task_name(name) for name in (tasks if tasks is not None else self.tasks)]
        adapted = set(self._adapters_of(names))
        plain = [name for name in names if name not in adapted]
        return [[name] for name in names if name in adapted] + ([plain] if plain else [])

    def forward_all(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        tasks: Iterable[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Logits of every task in `tasks` (default: all) from ONE encoder pass (with adapters: one pass per
        adapter, see `encoder_passes`)."""
        names = list(tasks) if tasks is not None else list(self.tasks)
        logits: dict[str, Any] = {}
        by_head: dict[str, torch.Tensor] = {}
        for group in self.encoder_passes(names):
            with active_adapters(self._lora_layers, self._adapters_of(group)):
                sequence_output, pooled = self.encode(input_ids, attention_mask, token_type_ids)
                for name in group:
                    decoder = self.task_decoder(name)
                    if decoder is not None:  # generated ids, from the same encoder pass
                        logits[name] = decoder.generate(attention_mask, encoder_states=sequence_output)
                    elif self.head_of(name) in by_head:  # datasets sharing a head: that head runs once
                        logits[name] = by_head[self.head_of(name)]
                    else:
                        logits[name] = by_head[self.head_of(name)] = self.heads[self.head_of(name)](
                            sequence_output, pooled, attention_mask)
        return {name: logits[self._task_name(name)] for name in names}

    def generate_task(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Generated token ids of generation task `task` for a batch of sources (its `generate()` options)."""
        name = self._task_name(task)
        decoder = self.task_decoder(name)
        if decoder is None:
            raise ValueError(f"task {name!r} reads a head, it does not generate text; use forward(task=...).")
        with active_adapters(self._lora_layers, self._adapters_of([name])):
            return decoder.generate(attention_mask, input_ids=input_ids, token_type_ids=token_type_ids)

    def forward_mixed(
        self,
        input_ids: torch.Tensor,
        row_tasks: list[str],
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> dict[str, tuple[list[int], torch.Tensor]]:
        """A batch whose rows belong to different tasks, in ONE encoder pass: row i runs through the adapter of
        `row_tasks[i]` (PEFT's mixed-adapter batch) and that task's head. Returns `{task: (rows, logits)}`."""
        if len(row_tasks) != len(input_ids):
            raise ValueError(f"row_tasks has {len(row_tasks)} names for {len(input_ids)} rows; give one per row.")
        names = [self._task_name(name) for name in row_tasks]
        if any(self.task_decoder(name) is not None for name in names):
            raise ValueError("forward_mixed runs task heads; generate text with generate_task() or forward_all().")
        adapted = set(self._adapters_of(set(names)))
        routing = [name if name in adapted else NO_ADAPTER for name in names]
        context = per_row_adapters(self._lora_layers, routing) if adapted else contextlib.nullcontext()
        with context:
            sequence_output, pooled = self.encode(input_ids, attention_mask, token_type_ids)
        outputs = {}
        for name in dict.fromkeys(names):
            rows = [i for i, row_task in enumerate(names) if row_task == name]
            index = torch.tensor(rows, device=sequence_output.device)
            mask = attention_mask[index] if attention_mask is not None else None
            outputs[name] = (rows, self.heads[self.head_of(name)](sequence_output[index],
                                                    pooled[index] if pooled is not None else None, mask))
        return outputs

    # ----- parameters by role -----
    def shared_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The trainable parameters every task updates: the encoder's own weights (never an adapter)."""
        return [(f"encoder.{n}", p) for n, p in self.encoder.named_parameters()
                if p.requires_grad and not is_adapter_parameter(n)]

    def task_parameters(self, task: str) -> list[tuple[str, nn.Parameter]]:
        """The trainable parameters only `task` updates: its head and its adapter."""
        own = [(f"encoder.{n}", p) for n, p in self.encoder.named_parameters()
               if p.requires_grad and adapter_of(n) == task]
        head = self.head_of(task)
        module, prefix = self.heads[head] if head in self.heads else None, f"heads.{head}"
        decoder = self.task_decoder(task)
        if decoder is not None and decoder.module is not None:
            module, prefix = decoder.module, f"decoders.{decoder.key}"
        return own + ([(f"{prefix}.{n}", p) for n, p in module.named_parameters() if p.requires_grad]
                      if module is not None else [])

    def encoder_state(self, task: str | None = None) -> dict[str, torch.Tensor]:
        """The encoder's weights under a stock encoder's names, with `task`'s adapter merged in (if it has one):
        what an exported single-task model holds."""
        if not self._lora_layers:
            return self.encoder.state_dict()
        adapter = task if task is not None and self._adapters_of([task]) else None
        return merged_encoder_state(self.encoder, adapter)

    # ----- freezing -----
    def encoder_layers(self) -> nn.ModuleList:
        """The encoder's stack of transformer layers (the longest `ModuleList` of `num_hidden_layers` blocks)."""
        return encoder_layers(self.encoder)

    def freeze(self, encoder: bool = False, embeddings: bool = False, layers: int = 0) -> None:
        """Stop gradients to the whole encoder, its embeddings and/or its first `layers` layers."""
        freeze_encoder(self.encoder, encoder, embeddings, layers)
