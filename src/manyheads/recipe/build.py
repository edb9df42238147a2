"""From a validated `RunConfig` to data, model and trainer: what `manyheads train` does with a recipe.

The recipe loads each task's files (`loading.py`) and checks them, reporting every problem at once; the raw
splits then go to `MultiTaskTrainer`, which fits, checks and tokenizes them itself (`manyheads.data.datasets`).

```python
from manyheads.recipe import build_trainer, load_config
trainer = build_trainer(load_config("cfg.yaml", ["--max_steps", "20"]))
trainer.train()
trainer.save_model()
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, set_seed

from ..callbacks import GradientConflictCallback, UpdateMonitorCallback, attach_callbacks, make_probe_batches
from ..data.collator import MultiTaskCollator
from ..data.datasets import cap_rows, fit_tasks, prepare_split
from ..data.samplers import MultiTaskBatchSampler
from ..errors import ConfigError, ProblemCollector, shown
from ..modeling.model import MultiTaskModel
from ..tasks import Task, TextGeneration, apply_checkpoint_pooling
from ..trainer import MultiTaskTrainer
from .config import RunConfig
from .loading import TaskSplits, load_task_splits
from .run_info import RunInfoCallback, run_info


@dataclass
class PreparedData:
    """Raw splits (checked, tasks fitted on copies) and, when asked for, tokenized copies of them (by the
    library's `prepare_split`, as `MultiTaskTrainer` tokenizes raw splits)."""

    tasks: dict[str, Task]
    raw: dict[str, TaskSplits]
    tokenizer: Any = None
    train: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)

    def raw_split(self, split: str) -> dict[str, Any]:
        """`{task: Dataset}` of one raw split, for the tasks that have it with their label columns."""
        out = {}
        for name, task in self.tasks.items():
            dataset = self.raw[name].splits.get(split)
            if dataset is not None and set(task.required_columns()) <= set(dataset.column_names):
                out[name] = dataset
        return out


# A local encoder folder needs all three: transformers would otherwise build an EMPTY tokenizer (5 special
# tokens, every word [UNK]) from a folder without tokenizer files, and fail only at build time without weights.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _looks_local(model: str) -> bool:
    """A path rather than a Hub id ('org/name'): absolute, relative with ./ ../ ~, or more than one '/'."""
    return (os.path.exists(model) or os.path.isabs(model) or model.startswith((".", "~"))
            or model.count("/") > 1 or "\\" in model)


def check_model_folder(model: str) -> list[str]:
    """Problems of a local encoder folder (missing folder, config, weights or tokenizer); [] for a Hub id."""
    if not _looks_local(model):
        return []
    folder = os.path.expanduser(model)
    if not os.path.isdir(folder):
        return [f"model: folder not found: {model}. Check the path, or give a Hub id such as "
                "'sentence-transformers/all-MiniLM-L6-v2'."]
    names = set(os.listdir(folder))
    problems = []
    if "config.json" not in names:
        problems.append(f"model: {model} has no config.json. Point 'model' at a folder written by "
                        "save_pretrained (config.json, weights and tokenizer files).")
    elif not names & set(WEIGHT_FILES):
        problems.append(f"model: {model} has no weights (none of {', '.join(WEIGHT_FILES)}). Save the encoder "
                        "there with model.save_pretrained(...) or point 'model' at a complete folder.")
    problems.extend(damaged_weight_files(folder))
    if not names & set(TOKENIZER_FILES):
        problems.append(f"model: {model} has no tokenizer files (none of {', '.join(TOKENIZER_FILES[:3])}, ...). "
                        "Save the tokenizer there with tokenizer.save_pretrained(...) or point 'model' at a folder "
                        "that has one.")
    return problems


def damaged_weight_files(folder: str) -> list[str]:
    """Problems of the weight files in `folder` that cannot be opened (truncated copies, partial downloads) or,
    for PyTorch pickles (`pytorch_model.bin`), that hold something else than tensors. Opening a safetensors file
    reads only the header, which is checked against the file's size."""
    problems = []
    names = sorted(os.listdir(folder))
    for name in (n for n in names if n.endswith(".safetensors")):
        try:
            with safe_open(os.path.join(folder, name), "pt"):
                pass
        except Exception as err:  # SafetensorError, OSError: reported the same way
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            problems.append(f"model: {os.path.join(folder, name)} cannot be read ({first}); the file is truncated or "
                            "corrupted. Copy or download the model again.")
    if not any(n.endswith(".safetensors") for n in names):  # else transformers reads those, never the pickles
        for name in (n for n in names if n.startswith("pytorch_model") and n.endswith(".bin")):
            problem = torch_file_problem(os.path.join(folder, name), tensors=True)
            if problem:
                problems.append(f"model: {problem}. Copy or download the model again.")
    return problems


def torch_file_problem(path: str, tensors: bool = False, numpy: bool = False) -> str | None:
    """Why a file written by `torch.save` cannot be loaded (`"<path> cannot be read (...)"`), or None.

    Loaded as Trainer and transformers load it (`weights_only=True`, so a planted pickle of other objects is
    refused unrun; with `numpy`, numpy arrays allowed too, as Trainer allows them in its RNG state) but
    memory-mapped, so a large file costs little. The content must be a mapping (a state dict), of tensors only
    when `tensors`.
    """
    import contextlib
    import pickle
    import warnings
    import zipfile

    import torch
    from transformers.trainer_pt_utils import safe_globals

    try:
        with warnings.catch_warnings(), safe_globals() if numpy else contextlib.nullcontext():
            warnings.simplefilter("ignore")  # "Detected pickle protocol 4 ...": the error below says it all
            content = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError:
        # Its message suggests weights_only=False, which would run whatever the pickle holds.
        return (f"{path} cannot be read (it holds Python objects other than tensors, refused unread: loading them "
                "could run code)")
    except Exception as err:  # RuntimeError, OSError, EOFError of a truncated or corrupted file
        # Torch's first sentence says what failed; the rest of its paragraph guesses at causes.
        first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        return f"{path} cannot be read ({first}); the file is truncated or corrupted"
    if not isinstance(content, dict):
        return f"{path} cannot be read (it holds a {type(content).__name__}, not a state dict)"
    if tensors and not all(isinstance(v, torch.Tensor) for v in content.values()):
        odd = next(k for k, v in content.items() if not isinstance(v, torch.Tensor))
        return f"{path} cannot be read (entry {shown(odd)} is not a tensor: this is not a weights file)"
    return None


def sharing_problems(run: RunConfig) -> list[str]:
    """Problems of the adapters the config asks for (target_modules that match no layer, PEFT missing), found on
    the encoder's skeleton: built on the meta device from its config, so no weight is loaded or allocated.
    Otherwise they surface only when the model is built, after `train` has taken (and created) the output folder.
    """
    if not run.sharing.adapters:
        return []
    import torch

    from ..modeling.adapters import add_adapters
    from ..modeling.decoders import backbone_from_config

    try:
        with torch.device("meta"):
            skeleton = backbone_from_config(AutoConfig.from_pretrained(run.model))
    except Exception:  # the encoder folder is checked (and reported) by check_model_folder
        return []
    try:
        with torch.device("meta"):
            add_adapters(skeleton, run.sharing, ["check"])
    except ConfigError as err:
        return list(err.problems)
    except ImportError as err:  # PEFT is optional: its install hint
        return [f"sharing: {err}"]
    except Exception:  # anything else of the skeleton is the real build's to report, with the weights loaded
        return []
    return []


def load_tokenizer(run: RunConfig) -> Any:
    problems = check_model_folder(run.model)
    if problems:
        raise ConfigError(problems)
    try:
        return AutoTokenizer.from_pretrained(run.model)
    except Exception as err:  # missing folder, no network, no tokenizer files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model: cannot load a tokenizer from {run.model!r}: {first}. Give a local model "
                          "folder or a Hub id reachable from here.") from None


def _max_positions(run: RunConfig, tokenizer: Any) -> int | None:
    try:
        encoder = AutoConfig.from_pretrained(run.model)
    except Exception:
        return None
    limits = [getattr(encoder, "max_position_embeddings", None)]
    if tokenizer is not None and (tokenizer.model_max_length or 0) < 1_000_000:
        limits.append(tokenizer.model_max_length)
    limits = [x for x in limits if isinstance(x, int) and x > 0]
    return min(limits) if limits else None


def prepare_data(run: RunConfig, tokenizer: Any = None, tokenize: bool = True,
                 tokenized_splits: tuple[str, ...] = ("train", "eval"), tasks: dict[str, Task] | None = None
                 ) -> PreparedData:
    """Load and check every task's data, every problem in one `ConfigError`; tokenize only when asked for.

    Tasks are fitted (`manyheads.data.datasets.fit_tasks`) on their clean training split: copies of the recipe's
    task objects, or `tasks`, e.g. a trained model's, which keep their fitted state. `build_trainer` needs no
    tokenized data (`tokenize=False`): the trainer tokenizes the raw splits. A test split is tokenized only when
    asked for and only when it has the task's label columns.
    """
    problems = ProblemCollector()
    if tokenizer is None:
        try:
            tokenizer = load_tokenizer(run)
        except ConfigError as err:
            problems.extend(err)
    limit = _max_positions(run, tokenizer)
    tasks = dict(tasks) if tasks is not None else run.fresh_tasks()
    raw: dict[str, TaskSplits] = {}
    cap = run.training.get("max_train_samples_per_task")
    seed = run.training.get("data_seed") if run.training.get("data_seed") is not None else run.training.get("seed", 42)
    for entry in run.tasks:
        name, task = entry.name, tasks[entry.name]
        if limit is not None and task.max_length > limit:
            problems.add(f"tasks.{name}.max_length: {task.max_length} is larger than the encoder allows "
                         f"({limit}). Set max_length <= {limit}.")
        before = len(problems.problems)
        splits = raw[name] = load_task_splits(name, task, entry.data, run.root, problems)
        if cap is not None and "train" in splits.splits:
            # The trainer's cut, made here already: fitting, checks and compare's plan see the rows it trains on.
            splits.splits["train"] = cap_rows({name: splits.splits["train"]}, cap, seed)[name]
        if "train" in splits.splits:
            problems.problems.extend(task.check_data("train", splits.splits["train"], splits.sources["train"]))
        elif entry.data is not None and before == len(problems.problems):
            problems.add(f"tasks.{name}: no training split. Give 'data.train' (a file) or 'data.hub'.")
        if len(problems.problems) == before and not task.fitted:
            # Fitted only on clean training data; eval is then checked against the labels found there.
            fit_tasks({name: task}, {name: splits.splits["train"]} if "train" in splits.splits else None)
            if task.num_outputs is None and not isinstance(task, TextGeneration) and "train" in splits.splits:
                problems.add(f"tasks.{name}: no label occurs in the training split ({splits.sources['train']}), so "
                             "the head would have no outputs. Declare 'labels', or check the label column.")
        for split in ("eval", "test"):
            dataset = splits.splits.get(split)
            if dataset is not None:
                # A test split may come without labels: then only its input columns are checked.
                labelled = split == "eval" or set(task.required_columns()) <= set(dataset.column_names)
                problems.problems.extend(task.check_data(split, dataset, splits.sources[split], labelled))
    problems.raise_if_any()
    prepared = PreparedData(tasks=tasks, raw=raw, tokenizer=tokenizer)
    if tokenize:
        targets = {"train": prepared.train, "eval": prepared.eval, "test": prepared.test}
        for split in tokenized_splits:
            targets[split].update(prepare_split(tasks, prepared.raw_split(split), tokenizer, split) or {})
    return prepared


def build_model(run: RunConfig, tasks: dict[str, Task], seed: int = 42) -> MultiTaskModel:
    """The pretrained encoder with fresh heads (seeded), frozen as the config asks; with `init_from`, the encoder
    and the shared tasks' heads of that saved model instead (`start_from`)."""
    set_seed(seed)
    # `pooling: auto` follows a sentence-transformers checkpoint's own pooling (modules.json).
    apply_checkpoint_pooling(tasks.values(), run.model)
    model = MultiTaskModel.from_encoder(run.model, list(tasks.values()), sharing=run.sharing)
    if run.init_from:
        start_from(model, run.init_from)
    model.freeze(run.freeze.encoder, run.freeze.embeddings, run.freeze.layers)
    return model


def start_from(model: MultiTaskModel, folder: str) -> list[str]:
    """Load into `model` the encoder of the `MultiTaskModel` saved in `folder` and the heads (or decoders) of the
    tasks both have; the other tasks keep their fresh heads. Returns the tasks whose heads were loaded.

    Raises:
        ConfigError: `folder` holds no saved `MultiTaskModel`, either model uses adapters, the encoders differ, or
            a shared task has other labels there (its head's outputs would mean other labels).
    """
    import json

    from ..modeling.config import MultiTaskConfig

    where = f"init_from: {folder}"
    try:
        saved_type = json.loads(open(os.path.join(folder, "config.json"), encoding="utf-8").read()).get("model_type")
    except (OSError, ValueError, AttributeError):
        saved_type = None
    if saved_type != MultiTaskConfig.model_type:
        raise ConfigError(f"{where} holds no model saved by manyheads (config.json with model_type "
                          f"'{MultiTaskConfig.model_type}' missing). Give the output_dir of a finished "
                          "'manyheads train'.")
    saved = MultiTaskModel.from_pretrained(folder)
    if saved.sharing.adapters or model.sharing.adapters:
        raise ConfigError(f"{where}: starting from a model with adapters (sharing 'lora' / 'hybrid') is not "
                          "supported. Use sharing 'hard' on both.")
    problems = [f"{where}: task '{name}' has labels {saved.tasks[name].label_list} there but "
                f"{task.label_list} here; its head's outputs would mean other labels. Use the same data and labels."
                for name, task in model.tasks.items() if name in saved.tasks
                and saved.tasks[name].label_list != task.label_list]
    old, new = saved.state_dict(), model.state_dict()
    loaded = {}
    for key, value in new.items():
        if key in old and old[key].shape == value.shape:
            loaded[key] = old[key]
        elif key in old or key.startswith("encoder."):
            problems.append(f"{where}: tensor {key} is {tuple(old[key].shape) if key in old else 'missing'} there "
                            f"but {tuple(value.shape)} here; the encoders differ. Set 'model' to the encoder the saved "
                            "model was trained from.")
            break
    if problems:
        raise ConfigError(problems)
    model.load_state_dict(loaded, strict=False)
    return [name for name in model.tasks if name in saved.tasks]


def build_callbacks(run: RunConfig, prepared: PreparedData, args: Any, trainer: Any = None) -> list[Any]:
    """The diagnostics callbacks the recipe asks for (`diagnostics:`), plus the run info that is always written.
    Gradient-conflict probes are drawn from the trainer's tokenized training sets (or `prepared.train`)."""
    diagnostics = run.diagnostics
    callbacks: list[Any] = [RunInfoCallback(run_info(run, plan_table(run, prepared, args.per_device_train_batch_size,
                                                                      args.world_size), args))]
    if diagnostics.update_monitor:
        callbacks.append(UpdateMonitorCallback(
            every=diagnostics.monitor_every, per_tensor=diagnostics.monitor_per_tensor,
            band=tuple(diagnostics.relative_update_band), patience=diagnostics.band_patience))
    train = trainer.train_dataset.datasets if trainer is not None and trainer.train_dataset else prepared.train
    if diagnostics.conflict_every and train:
        collator = MultiTaskCollator(prepared.tokenizer, prepared.tasks, args.pad_to_multiple_of)
        probes = make_probe_batches(train, collator, diagnostics.probe_batch_size, seed=args.seed)
        callbacks.append(GradientConflictCallback(probes, every=diagnostics.conflict_every))
    return callbacks


def build_trainer(run: RunConfig, prepared: PreparedData | None = None, model: Any = None,
                  trainer_class: type | None = None, **trainer_kwargs: Any) -> MultiTaskTrainer:
    """A ready `MultiTaskTrainer` (or `trainer_class`) for `run`: data loaded and checked, model built unless
    given, diagnostics attached. The trainer gets the raw splits and fits, checks and tokenizes them itself."""
    args = run.training_arguments()
    prepared = prepared or prepare_data(run, tokenize=False)
    model = model if model is not None else build_model(run, prepared.tasks, seed=args.seed)
    trainer = (trainer_class or MultiTaskTrainer)(
        model=model,
        args=args,
        train_dataset=prepared.raw_split("train") or None,
        eval_dataset=prepared.raw_split("eval") or None,
        processing_class=prepared.tokenizer,
        **trainer_kwargs,
    )
    # Diagnostics connected to the trackers of report_to (see manyheads.callbacks).
    attach_callbacks(trainer, build_callbacks(run, prepared, args, trainer))
    return trainer


def plan_table(run: RunConfig, prepared: PreparedData, batch_size: int, world_size: int = 1) -> list[dict[str, Any]]:
    """One row per task: type, label count, split sizes, sampling probability and steps per epoch."""
    sizes = {n: len(s.splits["train"]) for n, s in prepared.raw.items() if "train" in s.splits}
    sampler = MultiTaskBatchSampler(sizes, batch_size, run.argument("sampling_strategy"),
                                    run.argument("sampling_temperature"), world_size=world_size) if sizes else None
    probabilities = dict(zip(sizes, sampler.probabilities)) if sampler else {}
    steps = dict(zip(sizes, sampler.counts)) if sampler else {}
    rows = []
    for name, task in prepared.tasks.items():
        splits = prepared.raw[name].splits
        p = probabilities.get(name, 0.0)
        rows.append({
            "task": name, "type": task.type,
            "labels": len(task.label_list) or "-",
            "train": len(splits["train"]) if "train" in splits else 0,
            "eval": len(splits["eval"]) if "eval" in splits else 0,
            "test": len(splits["test"]) if "test" in splits else 0,
            "probability": round(p, 4),
            "steps/epoch": steps.get(name, 0),
        })
    return rows
