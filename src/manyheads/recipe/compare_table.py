"""The arithmetic of `manyheads compare`: statistics over seeds, the verdict per task, ΔMTL and the tables.

Pure functions of made-up or measured numbers (no model, no files), shared with `bench/quality.py`.

The verdict rule: a task's multi-task and single-task main metrics over the seeds are compared with Welch's
t-test (unequal variances). "multi-task helped" / "multi-task hurt" when p < `ALPHA` (0.05) in the better /
worse direction (the metric's own: lower is better for `mse`), else "no clear difference". With fewer than two
seeds on a side the seeds' spread is unknown, so the verdict is always "no clear difference (1 seed: spread
unknown)". When every seed gave the same value on both sides (sd 0), any difference of the means counts as
clear. With 2 seeds the test has about 2 degrees of freedom and needs a difference of over 4 standard errors:
3 or more seeds are needed to see anything but large effects.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ALPHA = 0.05
HELPED, HURT, UNCLEAR = "multi-task helped", "multi-task hurt", "no clear difference"
RULE = (f"Welch's t-test over seeds, p < {ALPHA}: 'multi-task helped' / 'multi-task hurt' in the metric's better / "
        "worse direction, else 'no clear difference'; with 1 seed the spread is unknown and nothing is claimed.")


@dataclass(frozen=True)
class Stat:
    """Values of one metric over seeds."""

    values: tuple[float, ...]

    def __init__(self, values: Sequence[float]):
        object.__setattr__(self, "values", tuple(float(v) for v in values))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else float("nan")

    @property
    def sd(self) -> float:
        """Sample standard deviation (n - 1); NaN for fewer than 2 values."""
        return statistics.stdev(self.values) if self.n > 1 else float("nan")

    def text(self, scale: float = 1.0, digits: int = 4) -> str:
        """'0.8120 ± 0.0100' (mean ± sd; the mean alone for one value, '–' for none)."""
        if not self.values:
            return "–"
        return f"{scale * self.mean:.{digits}f}" + (f" ± {scale * self.sd:.{digits}f}" if self.n > 1 else "")


@dataclass(frozen=True)
class Verdict:
    """Multi-task vs single-task on one metric.

    `difference` is mean(multi) - mean(single) in the metric's units; `gain` has the sign flipped where lower is
    better, so a positive gain is always an improvement. `clear` is None when the spread is unknown (1 seed).
    """

    difference: float
    gain: float
    clear: bool | None
    p_value: float | None
    verdict: str

    @property
    def spread(self) -> str:
        """'beyond the seeds' spread (p = 0.012)' / 'within the seeds' spread (p = 0.41)' / 'unknown (1 seed)'."""
        if self.clear is None:
            return "unknown (1 seed)"
        where = "beyond" if self.clear else "within"
        return f"{where} the seeds' spread (p = {self.p_value:.3g})"


def welch_p_value(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test; 0 or 1 when both samples have no spread (means differ or not)."""
    from scipy import stats

    sa, sb = Stat(a), Stat(b)
    if sa.sd == 0 and sb.sd == 0:
        return 1.0 if sa.mean == sb.mean else 0.0
    with warnings.catch_warnings():
        # scipy warns of precision loss when one side's values are (nearly) all equal; the p-value is still valid.
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(list(a), list(b), equal_var=False).pvalue)


def compare_values(multi: Sequence[float], single: Sequence[float], greater_is_better: bool = True,
                   alpha: float = ALPHA) -> Verdict:
    """The verdict of the module docstring's rule for one task's main metric over seeds."""
    m, s = Stat(multi), Stat(single)
    if not m.n or not s.n:
        raise ValueError(f"compare_values needs at least one value on each side, got {m.n} and {s.n}")
    difference = m.mean - s.mean
    gain = difference if greater_is_better else -difference
    if m.n < 2 or s.n < 2:
        return Verdict(difference, gain, None, None, f"{UNCLEAR} (1 seed: spread unknown)")
    p = welch_p_value(m.values, s.values)
    clear = p < alpha and gain != 0
    verdict = (HELPED if gain > 0 else HURT) if clear else UNCLEAR
    return Verdict(difference, gain, clear, p, verdict)


def relative_gain(multi: float, single: float, greater_is_better: bool) -> float | None:
    """(-1)^l (M - S) / |S| (l = 1 where lower is better); None when S is 0 (a relative gain over 0 is undefined)."""
    if abs(single) < 1e-12:
        return None
    return (1.0 if greater_is_better else -1.0) * (multi - single) / abs(single)


def delta_mtl(multi: Mapping[str, float], single: Mapping[str, float],
              greater_is_better: Mapping[str, bool]) -> tuple[float | None, list[str]]:
    """ΔMTL (Maninis et al. 2019; Vandenhende et al. 2021) as a fraction: the mean over tasks of the relative gain
    of multi-task over single-task. Returns it (None when no task is usable) and the tasks it covers: those
    present on both sides with a single-task value other than 0."""
    gains = {t: relative_gain(multi[t], single[t], greater_is_better[t]) for t in single if t in multi}
    used = [t for t, g in gains.items() if g is not None]
    return (statistics.fmean(gains[t] for t in used) if used else None), used


def task_row(task: str, metric: str, greater_is_better: bool, multi: Sequence[float],
             single: Sequence[float]) -> dict[str, Any]:
    """One task of the comparison table (plain numbers; `markdown_table` formats them)."""
    verdict = compare_values(multi, single, greater_is_better)
    m, s = Stat(multi), Stat(single)
    return {"task": task, "metric": metric, "greater_is_better": greater_is_better,
            "multi_task": {"mean": m.mean, "sd": _none_if_nan(m.sd), "values": list(m.values)},
            "single_task": {"mean": s.mean, "sd": _none_if_nan(s.sd), "values": list(s.values)},
            "difference": verdict.difference, "gain": verdict.gain, "clear": verdict.clear,
            "p_value": verdict.p_value, "spread": verdict.spread, "verdict": verdict.verdict}


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The comparison from per-run results.

    Args:
        rows: one per finished run, each with `kind` ("multi_task" or "single_task"), `seed`, `main`
            ({task: main metric value}), `main_metric` ({task: name}), `greater_is_better` ({task: bool}) and
            optionally `parameters` (stored parameter count).

    Returns:
        `{"tasks": [task_row, ...], "delta_mtl": {...}, "parameters": {...}, "seeds": [...], "rule": RULE}`;
        ΔMTL in percent, from the means over seeds, plus its mean ± sd over seeds (each seed's multi-task values
        against the single-task means) when there are several seeds.
    """
    multi = [r for r in rows if r["kind"] == "multi_task"]
    single = [r for r in rows if r["kind"] == "single_task"]
    if not multi or not single:
        raise ValueError("summarize needs results of the multi-task run and of single-task runs")
    names, better = dict(multi[0]["main_metric"]), dict(multi[0]["greater_is_better"])
    tasks = [t for t in names if any(t in r["main"] for r in single)]
    values = {t: ([r["main"][t] for r in multi], [r["main"][t] for r in single if t in r["main"]]) for t in tasks}
    table = [task_row(t, names[t], better[t], *values[t]) for t in tasks]
    single_means = {t: Stat(values[t][1]).mean for t in tasks}
    multi_means = {t: Stat(values[t][0]).mean for t in tasks}
    delta, used = delta_mtl(multi_means, single_means, better)
    per_seed = [d for r in multi if (d := delta_mtl(r["main"], single_means, better)[0]) is not None]
    spread = Stat(per_seed)
    delta_info = {"percent": None if delta is None else 100 * delta, "tasks": used,
                  "left_out": [t for t in tasks if t not in used],
                  "per_seed_percent": [100 * d for d in per_seed],
                  "per_seed_sd_percent": _none_if_nan(100 * spread.sd) if spread.n > 1 else None}
    first_seed = min(r["seed"] for r in rows)
    mt_params = next((r.get("parameters") for r in multi if r["seed"] == first_seed), None)
    st_params = [r.get("parameters") for r in single if r["seed"] == first_seed]
    parameters = {"multi_task": mt_params, "single_task_total": None, "single_task_models": len(st_params)}
    if st_params and all(isinstance(p, int) for p in st_params):
        parameters["single_task_total"] = sum(st_params)
    return {"tasks": table, "delta_mtl": delta_info, "parameters": parameters,
            "seeds": sorted({r["seed"] for r in rows}), "rule": RULE}


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def _number(value: float | None, digits: int = 4, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _spread_text(side: Mapping[str, Any]) -> str:
    return _number(side["mean"]) + (f" ± {side['sd']:.4f}" if side.get("sd") is not None else "")


def markdown_table(summary: Mapping[str, Any]) -> list[str]:
    """The comparison as markdown lines: the per-task table, ΔMTL, stored parameters and the rule."""
    lines = ["| task | main metric | multi-task | single-task | difference | seeds' spread | verdict |",
             "|---|---|---:|---:|---:|---|---|"]
    for row in summary["tasks"]:
        arrow = "higher is better" if row["greater_is_better"] else "lower is better"
        lines.append(f"| {row['task']} | {row['metric']} ({arrow}) | {_spread_text(row['multi_task'])} | "
                     f"{_spread_text(row['single_task'])} | {_number(row['difference'], sign=True)} | "
                     f"{row['spread']} | **{row['verdict']}** |")
    delta = summary["delta_mtl"]
    text = f"- ΔMTL: {_number(delta['percent'], 2, sign=True)} %"
    if delta.get("per_seed_sd_percent") is not None:
        per_seed = Stat(delta["per_seed_percent"])
        text += f" (per seed: {per_seed.mean:+.2f} ± {per_seed.sd:.2f} %)"
    text += (" = mean over tasks of (-1)^l (M - S) / |S|, l = 1 where lower is better, from the means over seeds; "
             f"tasks: {', '.join(delta['tasks']) or 'none'}")
    if delta.get("left_out"):
        text += f"; left out (single-task mean 0): {', '.join(delta['left_out'])}"
    lines += ["", text + "."]
    params = summary["parameters"]
    if params.get("multi_task") and params.get("single_task_total"):
        ratio = params["single_task_total"] / params["multi_task"]
        lines.append(f"- Stored parameters: {params['multi_task']:,} in one multi-task model vs "
                     f"{params['single_task_total']:,} in {params['single_task_models']} single-task models "
                     f"({ratio:.2f}x as many).")
    lines.append(f"- Verdict rule: {summary['rule']}")
    return lines


# ----- several configurations (`--groups`, `--finetune`) -----
CONFIGURATION_LABELS = {"multi_task": "multi-task", "fine_tuned": "fine-tuned", "single_task": "single-task"}


def _configurations(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, list[Mapping[str, Any]]]]:
    """(name, kind, its runs' rows): multi-task, each group (in the order of first appearance), fine-tuned,
    single-task."""
    out = [("multi-task", "multi_task", [r for r in rows if r["kind"] == "multi_task"])]
    groups = list(dict.fromkeys(r["run"] for r in rows if r["kind"] == "group"))
    out += [(name, "group", [r for r in rows if r["run"] == name]) for name in groups]
    for kind in ("fine_tuned", "single_task"):
        chosen = [r for r in rows if r["kind"] == kind]
        if chosen:
            out.append((CONFIGURATION_LABELS[kind], kind, chosen))
    return out


def summarize_configurations(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per configuration (see `_configurations`), each with one row per task that also trained alone:
    the configuration's main metric over seeds against single-task's (`task_row`'s verdict), its ΔMTL (percent,
    from the means over seeds, plus the per-seed values: each seed's runs against the single-task means), and
    its stored parameters: the sum over its models of the first seed (N encoders and heads for fine-tuned and
    single-task, one model for multi-task or a group)."""
    multi = [r for r in rows if r["kind"] == "multi_task"]
    if not multi:
        raise ValueError("summarize_configurations needs the results of the multi-task run")
    names, better = dict(multi[0]["main_metric"]), dict(multi[0]["greater_is_better"])
    single = {t: [r["main"][t] for r in rows if r["kind"] == "single_task" and t in r["main"]] for t in names}
    single_means = {t: Stat(v).mean for t, v in single.items() if v}
    first_seed = min(r["seed"] for r in rows)
    out = []
    for name, kind, runs in _configurations(rows):
        tasks = [t for t in names if t in single_means and any(t in r["main"] for r in runs)]
        table = []
        for task in tasks:
            row = task_row(task, names[task], better[task], [r["main"][task] for r in runs if task in r["main"]],
                           single[task])
            table.append({"configuration": name, "score": row.pop("multi_task"), **row})
        means = {t: Stat([r["main"][t] for r in runs if t in r["main"]]).mean for t in tasks}
        delta, used = delta_mtl(means, {t: single_means[t] for t in tasks}, better)
        seeds = sorted({r["seed"] for r in runs})
        per_seed = []
        for seed in seeds:
            values = {t: v for r in runs if r["seed"] == seed for t, v in r["main"].items() if t in tasks}
            if (d := delta_mtl(values, {t: single_means[t] for t in values}, better)[0]) is not None:
                per_seed.append(d)
        first = [r.get("parameters") for r in runs if r["seed"] == first_seed]
        out.append({"name": name, "kind": kind, "runs": sorted({r["run"] for r in runs}), "tasks": tasks,
                    "rows": table,
                    "delta_mtl": {"percent": None if delta is None else 100 * delta, "tasks": used,
                                  "per_seed_percent": [100 * d for d in per_seed],
                                  "per_seed_sd_percent": _none_if_nan(100 * Stat(per_seed).sd)
                                  if len(per_seed) > 1 else None},
                    "parameters": sum(first) if first and all(isinstance(p, int) for p in first) else None,
                    "models": len(first)})
    return out


def configurations_table(configurations: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: one row per configuration per task, then ΔMTL and stored parameters per configuration."""
    lines = ["| configuration | task | main metric | score | single-task | difference | seeds' spread | verdict |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for config in configurations:
        for row in config["rows"]:
            arrow = "higher is better" if row["greater_is_better"] else "lower is better"
            baseline = config["kind"] == "single_task"
            verdict = "(baseline)" if baseline else f"**{row['verdict']}**"
            lines.append(f"| {config['name']} | {row['task']} | {row['metric']} ({arrow}) | "
                         f"{_spread_text(row['score'])} | {_spread_text(row['single_task'])} | "
                         f"{'–' if baseline else _number(row['difference'], sign=True)} | "
                         f"{'–' if baseline else row['spread']} | {verdict} |")
    lines.append("")
    for config in configurations:
        delta = config["delta_mtl"]
        text = f"- {config['name']}: ΔMTL {_number(delta['percent'], 2, sign=True)} %"
        if delta.get("per_seed_sd_percent") is not None:
            per_seed = Stat(delta["per_seed_percent"])
            text += f" (per seed: {per_seed.mean:+.2f} ± {per_seed.sd:.2f} %)"
        text += f" over {', '.join(delta['tasks']) or 'no task'}"
        if config.get("parameters"):
            models = config["models"]
            text += f"; stored parameters {config['parameters']:,} in {models} model{'s' if models != 1 else ''}"
        lines.append(text + ".")
    return lines
