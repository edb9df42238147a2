"""Quality study tables: statistics over seeds, ΔMTL and the plain-words conclusions (see quality.py)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import _common as bc
from quality import CONFIGS, SINGLE

from manyheads.recipe import compare_table

SMALL_BASELINE = 0.1  # a single-task mean below this (|S_t|) turns small differences into large relative gains
METRIC_NAMES = {"accuracy": "acc", "f1": "macro-F1", "mcc": "MCC", "spearman": "Spearman", "pearson": "Pearson"}


# ----- statistics (the arithmetic of `manyheads compare`: manyheads.recipe.compare_table) -----
class Stat(compare_table.Stat):
    """Values over seeds, shown ×100 with one decimal (the study's tables)."""

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        return super().text(scale, digits)


def greater_is_better(task: str) -> bool:
    from manyheads import TASK_TYPES

    spec = bc.GLUE_TASKS[task]
    return bool(TASK_TYPES[spec["type"]].METRICS[spec["main_metric"]])


def table_stats(rows: list[dict[str, Any]], tasks: list[str]) -> dict[str, dict[str, Stat]]:
    """config -> {task: Stat, "average": Stat, "delta": Stat (ΔMTL, fraction)} over seeds."""
    by_config: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_config.setdefault(row["config"], []).append(row)
    out: dict[str, dict[str, Stat]] = {}
    for config, runs in by_config.items():
        stats = {t: Stat([r["tasks"][t]["main"] for r in runs if "main" in r["tasks"][t]]) for t in tasks}
        complete = [r for r in runs if all("main" in r["tasks"][t] for t in tasks)]
        signed = [[r["tasks"][t]["main"] * (1 if greater_is_better(t) else -1) for t in tasks] for r in complete]
        stats["average"] = Stat([statistics.fmean(v) for v in signed])
        out[config] = stats
    baseline = out.get(SINGLE)
    usable = delta_tasks(baseline, tasks)
    single_means = {t: baseline[t].mean for t in usable}
    better = {t: greater_is_better(t) for t in usable}
    for config, stats in out.items():
        deltas = []
        for r in by_config[config] if usable else []:
            if all("main" in r["tasks"][t] for t in usable):
                delta, _ = compare_table.delta_mtl({t: r["tasks"][t]["main"] for t in usable}, single_means, better)
                deltas.append(delta)
        stats["delta"] = Stat(deltas)
    return out


def delta_tasks(baseline: dict[str, Stat] | None, tasks: list[str]) -> list[str]:
    """Tasks ΔMTL can use: a single-task mean exists and is not 0 (a relative gain over 0 is undefined)."""
    if baseline is None:
        return []
    return [t for t in tasks if baseline[t].n and abs(baseline[t].mean) > 1e-9]


def delta_note(stats: dict[str, dict[str, Stat]], tasks: list[str]) -> list[str]:
    """Which tasks ΔMTL covers, and which single-task means are so small that they dominate it."""
    baseline = stats.get(SINGLE)
    if baseline is None:
        return ["- ΔMTL: not computed (no `single` rows)."]
    usable = delta_tasks(baseline, tasks)
    excluded = [t for t in tasks if t not in usable]
    small = [f"{t} ({100 * baseline[t].mean:.1f})" for t in usable if abs(baseline[t].mean) < SMALL_BASELINE]
    text = f"- ΔMTL over {', '.join(usable) or 'no task'}"
    if excluded:
        text += f"; left out (no or zero single-task mean): {', '.join(excluded)}"
    if small:
        text += (f"; single-task means below {100 * SMALL_BASELINE:.0f} make relative gains large, so these tasks "
                 f"weigh most in ΔMTL: {', '.join(small)} (the average column does not have this problem)")
    return [text + "."]


def difference_text(a: Stat, b: Stat) -> str:
    """'+1.2 points (larger than the seeds' spread: ...)' / '(within the seeds' spread: ...)', by the verdict rule of
    `manyheads compare` (Welch's t-test over seeds, p < 0.05)."""
    diff = 100 * (a.mean - b.mean)
    if a.n < 2 or b.n < 2:
        return f"{diff:+.1f} points (one seed: spread unknown)"
    verdict = compare_table.compare_values(a.values, b.values)
    where = "larger than the seeds' spread" if verdict.clear else "within the seeds' spread"
    return f"{diff:+.1f} points ({where}: Welch's t-test p = {verdict.p_value:.2g})"


def verdict_lines(stats: dict[str, dict[str, Stat]], tasks: list[str]) -> list[str]:
    """The plain-words conclusions, generated from the numbers."""
    lines = []
    configs = [c for c in CONFIGS if c in stats]
    multitask = [c for c in configs if c != SINGLE]
    base = stats.get(SINGLE)
    for key in [*tasks, "average"]:
        present = [c for c in configs if stats[c][key].n]
        if sum(stats[c][key].n for c in present) < 2:
            continue  # no run, or one: nothing to compare it with
        ranked = sorted(present, key=lambda c: stats[c][key].mean, reverse=True)
        best = ranked[0]
        name = f"**{key}** ({metric_label(key)})" if key != "average" else "**on average** (mean of main metrics)"
        values = {v for c in present for v in stats[c][key].values}
        if len(values) == 1:
            # A "best" among identical scores would be an artefact of the table's order.
            lines.append(f"- {name}: every run of every configuration scored exactly {100 * values.pop():.1f}: no "
                         "configuration learned this task here, so there is no winner.")
            continue
        text = f"- {name}: best is `{best}` ({stats[best][key].text()})"
        if base is not None and base[key].n and best != SINGLE:
            text += f"; vs single-task ({base[key].text()}): {difference_text(stats[best][key], base[key])}"
        elif best == SINGLE and len(ranked) > 1:
            runner = ranked[1]
            text += (f"; single-task wins; the best multi-task configuration, `{runner}` "
                     f"({stats[runner][key].text()}), differs by {difference_text(stats[runner][key], base[key])}")
        lines.append(text + ".")
    if base is not None and multitask:
        deltas = [c for c in multitask if stats[c]["delta"].n]
        if deltas:
            best = max(deltas, key=lambda c: stats[c]["delta"].mean)
            negative = [c for c in deltas if stats[c]["delta"].mean < 0]
            lines.append(f"- **ΔMTL**: best `{best}` ({stats[best]['delta'].text()} %); below 0 (worse than "
                         f"single-task overall): {', '.join(f'`{c}`' for c in negative) or 'none'}.")
        lines.append("- **Where multi-task did not help** (mean at or below the single-task mean):")
        for task in tasks:
            tried = [c for c in multitask if stats[c][task].n]
            if not base[task].n or not tried:
                continue
            not_better = [c for c in tried if stats[c][task].mean <= base[task].mean]
            if all(stats[c][task].values == base[task].values for c in tried):
                lines.append(f"  - {task}: every configuration scored the same as single-task "
                             f"({base[task].text()}): no winner.")
            elif len(not_better) == len(tried):
                lines.append(f"  - {task}: no multi-task configuration beat single-task ({base[task].text()}).")
            elif not_better:
                lines.append(f"  - {task}: {len(not_better)} of {len(tried)} multi-task configurations did not beat "
                             f"single-task ({base[task].text()}): {', '.join(f'`{c}`' for c in not_better)}.")
            else:
                lines.append(f"  - {task}: every multi-task configuration scored above single-task "
                             f"({base[task].text()}).")
    return lines


def constant_lines(rows: list[dict[str, Any]], tasks: list[str]) -> list[str]:
    """Classification runs that predicted one class for the whole dev subset. scikit-learn's MCC is exactly 0
    then (its denominator vanishes); a model that learned anything almost never lands on exactly 0."""
    counts: dict[str, dict[str, list[int]]] = {}
    for r in rows:
        for task in tasks:
            mcc = r["tasks"][task].get("metrics", {}).get("mcc")
            if mcc is not None:
                count = counts.setdefault(r["config"], {}).setdefault(task, [0, 0])
                count[0] += mcc == 0.0
                count[1] += 1
    parts = []
    for config in (c for c in CONFIGS if c in counts):
        constant = [f"{t} {k}/{n}" for t, (k, n) in counts[config].items() if k]
        parts.append(f"`{config}` {', '.join(constant) if constant else 'none'}")
    if not parts:
        return []
    return ["- **Runs that predicted one class for every dev example** (MCC exactly 0; runs of the seeds): "
            + "; ".join(parts) + "."]


def weights_lines(rows: list[dict[str, Any]], tasks: list[str]) -> list[str]:
    """The range of the task weights a loss-weighting method logged (rows written before the weights were kept
    have none). A method whose weights stay near 1 trains nearly as proportional sampling alone does."""
    ranges: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        for logged in r.get("weights", {}).values():
            for entry in logged:
                for task in tasks:
                    if f"weight_{task}" in entry:
                        ranges.setdefault(r["config"], {}).setdefault(task, []).append(entry[f"weight_{task}"])
    parts = []
    for config in (c for c in CONFIGS if c in ranges):
        values = ranges[config]
        if all(v == 1.0 for vs in values.values() for v in vs):
            continue  # no weighting method (all weights exactly 1)
        seeds = sum(1 for r in rows if r["config"] == config and r.get("weights"))
        parts.append(f"`{config}` ({seeds} seed(s)): " + ", ".join(
            f"{t} {min(vs):.3f}–{max(vs):.3f}" for t, vs in values.items()))
    if not parts:
        return []
    return ["- **Task weights logged during training** (min–max over the logged steps and seeds; 1 = unweighted): "
            + "; ".join(parts) + "."]


def steps_line(rows: list[dict[str, Any]]) -> list[str]:
    """Configurations with fewer optimizer steps than single-task: their gap is not the method's alone."""
    steps = {r["config"]: r["optimizer_steps"] for r in rows}
    if SINGLE not in steps:
        return []
    fewer = [c for c in CONFIGS if c in steps and steps[c] < steps[SINGLE]]
    if not fewer:
        return []
    listed = ", ".join(f"`{c}` ({steps[c]})" for c in fewer)
    return [f"- **Fewer optimizer steps**: {listed} vs {steps[SINGLE]} for single-task, at the same examples seen "
            "(a task-group step holds a micro-batch of every task): their scores mix the method with the smaller "
            "number of updates at the same learning-rate schedule; `--group_batch_size` trades that against "
            "smaller per-task batches (bench/README.md)."]


def target_line(stats: dict[str, dict[str, Stat]], rows: list[dict[str, Any]]) -> list[str]:
    """Target: multi-task average >= single-task average with 1/N of the stored parameters."""
    base = stats.get(SINGLE)
    one_model = [c for c in CONFIGS if c in stats and c != SINGLE and stats[c]["average"].n]
    if base is None or not base["average"].n or not one_model:
        return ["- target (multi-task average >= single-task average with 1/N of the stored parameters): not "
                "decidable from these rows (needs `single` and a one-model multi-task configuration)."]
    params = {r["config"]: sum(r["params"]) for r in rows if r.get("params")}
    met = [c for c in one_model if stats[c]["average"].mean >= base["average"].mean]
    best = max(one_model, key=lambda c: stats[c]["average"].mean)
    share = ""
    if SINGLE in params and best in params:
        share = (f"; stored parameters {params[best]:,} (one model, all heads) vs {params[SINGLE]:,} "
                 f"({len(next(r for r in rows if r['config'] == SINGLE)['params'])} single-task models) = "
                 f"1/{params[SINGLE] / params[best]:.2f}")
    return [f"- target (a one-model multi-task average >= single-task average, with 1/N of the stored "
            f"parameters): **{'met' if met else 'not met'}**; best one-model configuration `{best}` "
            f"{stats[best]['average'].text()} vs single-task {base['average'].text()}; configurations meeting it: "
            f"{', '.join(f'`{c}`' for c in met) or 'none'}{share}."]


# Published single-task dev scores (×100) of the MiniLM-L6-H384 masked-LM checkpoint (microsoft/unilm MiniLM
# README: accuracy except CoLA's MCC) and, for STS-B which that table lacks, BERT-base's Pearson (transformers'
# text-classification README). The encoder here is all-MiniLM-L6-v2, a sentence-embedding fine-tune of MiniLM-L6.
PUBLISHED: dict[str, tuple[str, float, str]] = {
    "rte": ("accuracy", 68.8, "MiniLM-L6-H384"), "mrpc": ("accuracy", 88.9, "MiniLM-L6-H384"),
    "stsb": ("pearson", 88.6, "BERT-base"), "cola": ("mcc", 47.5, "MiniLM-L6-H384"),
    "sst2": ("accuracy", 91.5, "MiniLM-L6-H384"),
}


def published_lines(rows: list[dict[str, Any]], tasks: list[str]) -> list[str]:
    """Single-task scores next to the published ones, on the published metric (MRPC: accuracy, STS-B: Pearson)."""
    single = [r for r in rows if r["config"] == SINGLE]
    if not single:
        return []
    lines = ["", "Single-task baselines next to published single-task dev scores (×100; mean ± sd over seeds):", "",
             "| task | metric | single-task here | published | gap | published model |", "|---|---|---:|---:|---:|---|"]
    for task in tasks:
        metric, value, model = PUBLISHED[task]
        metrics = [r["tasks"][task].get("metrics", {}) for r in single]
        here = Stat([m[metric] for m in metrics if metric in m])
        gap = f"{100 * here.mean - value:+.1f}" if here.n else "–"
        lines.append(f"| {task} | {metric} | {here.text()} | {value:.1f} | {gap} | {model} |")
    return lines


def metric_label(task: str) -> str:
    return METRIC_NAMES.get(bc.GLUE_TASKS[task]["main_metric"], bc.GLUE_TASKS[task]["main_metric"])


def models_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Parameters trained and stored, and seconds per optimizer step, per configuration (first seed's runs)."""
    lines = ["| configuration | trainable parameters | stored parameters | s/step (median over runs and seeds) |",
             "|---|---:|---:|---:|"]
    for config in (c for c in CONFIGS if any(r["config"] == c for r in rows)):
        first = next(r for r in rows if r["config"] == config)
        steps = [s for r in rows if r["config"] == config for s in r.get("s_per_step", [])]
        trainable = first.get("trainable") or []
        lines.append(f"| `{config}` | {sum(trainable) / 1e6:.2f}M | {sum(first['params']) / 1e6:.2f}M | "
                     f"{statistics.median(steps):.2f} |" if steps and None not in trainable else
                     f"| `{config}` | – | {sum(first['params']) / 1e6:.2f}M | – |")
    return ["", "Models (one per task for `single`; parameters of the first seed's runs):", "", *lines]


def report(args: Any, settings: dict[str, Any], folder: Path, rows: list[dict[str, Any]], invocation: Any) -> str:
    """The markdown section: settings, the table over seeds, examples seen, models, and the conclusions."""
    tasks = args.tasks
    stats = table_stats(rows, tasks)
    configs = [c for c in CONFIGS if c in stats]
    # The single-task ΔMTL is 0 by definition (its sd shows the seeds' noise): not a candidate for best.
    best = {key: max((c for c in configs if stats[c][key].n and (key != "delta" or c != SINGLE)),
                     key=lambda c: stats[c][key].mean, default=None)
            for key in [*tasks, "average", "delta"]}

    def cell(config: str, key: str) -> str:
        text = stats[config][key].text()
        return f"**{text}**" if best[key] == config else text

    head = [f"{t} {metric_label(t)}" for t in tasks]
    table = ["| configuration | " + " | ".join(head) + " | average | ΔMTL % | seeds |",
             "|---|" + "---:|" * (len(tasks) + 2) + "---|"]
    for c in configs:
        seeds = sorted({r["seed"] for r in rows if r["config"] == c})
        delta = cell(c, "delta") if c != SINGLE else f"{stats[c]['delta'].text()} (baseline)"
        table.append(f"| `{c}` | " + " | ".join(cell(c, t) for t in tasks) + f" | {cell(c, 'average')} | "
                     f"{delta} | {len(seeds)} ({', '.join(map(str, seeds))}) |")
    seen_table = ["| configuration | " + " | ".join(tasks) + " | total | optimizer steps | minutes per seed |",
                  "|---|" + "---:|" * (len(tasks) + 3)]
    for c in configs:
        first = next(r for r in rows if r["config"] == c)
        wall = statistics.fmean(r["wall_s"] for r in rows if r["config"] == c) / 60
        seen_table.append(f"| `{c}` | " + " | ".join(str(first["tasks"][t]["seen"]) for t in tasks)
                          + f" | {sum(first['tasks'][t]['seen'] for t in tasks)} | {first['optimizer_steps']} | "
                          f"{wall:.1f} |")
    s = settings
    lora = any(c in configs for c in ("mt_lora", "mt_hybrid"))
    text = (f"model `{bc.model_name(args.model)}`; train rows {s['train']}, dev rows {s['dev']} (fixed random "
            f"subsets, data seed {s['data_seed']}); {s['epochs']} epoch(s) of single-task data; micro-batch "
            f"{s['batch_size']} (task-group steps: {s['group_batch_size'] or s['batch_size']} rows per task); "
            f"learning rate {s['learning_rate']}, linear decay, warm-up {s['warmup']:.0%}, weight decay "
            f"{s['weight_decay']}, AdamW; max_length {s['max_length']}; {'bf16 autocast' if s['bf16'] else 'fp32'}; "
            f"{'length-grouped batches; ' if s['group_by_length'] else ''}"
            + "".join(f"{t} with class weights {w}; " for t, w in s["class_weights"].items())
            + (f"LoRA r {s['r']}, alpha {s['alpha']}, dropout {s['lora_dropout']} (PEFT's default target modules), "
               f"learning rate {s['lora_learning_rate']} for mt_lora, adapters' {s['adapter_learning_rate']} for "
               "mt_hybrid; " if lora else "")
            + f"{args.jobs} run(s) at once; runs and recipes in `{bc.display_path(folder)}` (`manyheads compare`'s "
            "folder layout: compare.md there compares mt_proportional with single)")
    lines = [
        *invocation.header("quality (GLUE-mini): multi-task vs single-task at equal examples seen"),
        f"- settings: {text}",
        f"- time: {sum(r['wall_s'] for r in rows) / 60:.0f} min of runs in these rows, summed over runs",
        "",
        "Main metric ×100, mean ± sd over seeds (best of each column in bold). ΔMTL: mean over tasks of the "
        "relative gain over the single-task mean, in %. Each run is scored once, at its end, on the dev subset.",
        "", *table, "",
        "Examples seen per task (one seed) and optimizer steps (all runs of the configuration):",
        "", *seen_table,
        *models_lines(rows), "",
        *published_lines(rows, tasks), "",
        *delta_note(stats, tasks),
        *verdict_lines(stats, tasks),
        *constant_lines(rows, tasks),
        *weights_lines(rows, tasks),
        *steps_line(rows),
        *target_line(stats, rows),
        "",
    ]
    return "\n".join(lines)
