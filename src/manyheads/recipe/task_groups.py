"""Many tasks from few lines: groups with shared settings, and entries that expand to one task per file or dataset.

A `tasks:` list holds three kinds of entries (see `config.py` for a full example):

- a task: a mapping with `type`, the task's settings and `data:`;
- a group: `{group: {SETTINGS}, tasks: [ENTRIES]}`. SETTINGS (task keys and `data:` keys) apply to every entry
  in it; an entry's own keys win, and its `data:` is merged with the group's key by key. Groups may nest.
- an expanding task: `data.train` is a glob (`intents/*/train.jsonl`, `**` allowed), or `data.hub` is a list of
  Hub datasets (ids, or `{hub: ID, hub_config: NAME}` mappings), or `data.hub_config` is a list of configs of one
  dataset. It gives one task per file (sorted) or dataset; `name` is a template, and so are `data.eval`,
  `data.test` and, for Hub lists, `data.train`. Template fields (`GLOB_FIELDS`, `HUB_FIELDS`): `{stem}` (file
  name without its extension), `{parent}` (the folder holding the file), `{index}` (0, 1, ... in order; a
  format spec works: `{index:02d}`); `{hub}` (the dataset id's last part), `{config}` (its config, '' when none).

`expand_tasks` turns the list into plain task entries, each with where it came from for messages; every problem
of every entry is collected, so one `validate` run reports them all.
"""

from __future__ import annotations

import glob
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ProblemCollector, shown
from .arguments import suggest

GROUP_KEYS = ("group", "tasks")
GLOB_FIELDS = ("stem", "parent", "index")
HUB_FIELDS = ("hub", "config", "index")
_GLOB_CHARS = "*?["
# Task data keys that are templates in an expanding entry (besides `name`).
_TEMPLATED = ("train", "eval", "test")


def is_glob(value: Any) -> bool:
    return isinstance(value, str) and any(c in value for c in _GLOB_CHARS)


def merged(defaults: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """`entry` over `defaults`; the `data` sections are merged key by key (the entry's keys win)."""
    out = {**defaults, **entry}
    if isinstance(defaults.get("data"), dict) and isinstance(entry.get("data"), dict):
        out["data"] = {**defaults["data"], **entry["data"]}
    return out


def expand_tasks(raw_tasks: list[Any], problems: ProblemCollector,
                 resolve: Callable[[str], Path] | None = None) -> list[tuple[str, Any]]:
    """The task entries of a `tasks:` list, groups and expanding entries flattened: `(where, entry)` pairs, where
    `where` names the entry in the file (`tasks[2].tasks[0]`, plus the file or dataset it was expanded from).

    `resolve` turns a relative path into the file it names (data_dir or the config's folder first). Without it,
    glob entries are kept as they are (to be expanded once the data folder is known).
    """
    out: list[tuple[str, Any]] = []
    for index, entry in enumerate(raw_tasks):
        _expand(entry, f"tasks[{index}]", {}, problems, resolve, out)
    return out


def flatten_groups(raw: Any) -> Any:
    """`raw` (a parsed recipe) with its groups and Hub lists expanded when that finds no problem (globs wait for
    the data folder); unchanged otherwise, so that `collect_config` reports the problems where they are written.
    What `read_yaml` returns: code that edits a recipe's task list (e.g. `compare`) sees plain task entries."""
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), list):
        return raw
    if not any(isinstance(t, dict) and ("group" in t or _hub_list(t)) for t in raw["tasks"]):
        return raw
    problems = ProblemCollector()
    flat = expand_tasks(raw["tasks"], problems)
    return raw if problems.problems else {**raw, "tasks": [entry for _, entry in flat]}


def _hub_list(entry: dict[str, Any]) -> bool:
    data = entry.get("data")
    return isinstance(data, dict) and (isinstance(data.get("hub"), list) or isinstance(data.get("hub_config"), list))


def _expand(entry: Any, where: str, defaults: dict[str, Any], problems: ProblemCollector,
            resolve: Callable[[str], Path] | None, out: list[tuple[str, Any]]) -> None:
    if isinstance(entry, dict) and "group" in entry:
        _expand_group(entry, where, defaults, problems, resolve, out)
        return
    if not isinstance(entry, dict):
        out.append((where, entry))  # reported by config._build_task
        return
    entry = merged(defaults, entry)
    data = entry.get("data")
    if not isinstance(data, dict):
        out.append((where, entry))
        return
    if _hub_list(entry):
        if is_glob(data.get("train")):
            problems.add(f"{where}.data: both a glob in 'train' ({shown(data['train'])}) and a list in 'hub' or "
                         "'hub_config'. Give one of them: a glob expands local files, a list expands Hub datasets.")
            return
        _expand_hub(entry, where, problems, out)
    elif is_glob(data.get("train")):
        if resolve is None:
            out.append((where, entry))
        else:
            _expand_glob(entry, where, problems, resolve, out)
    else:
        out.append((where, entry))


def _expand_group(entry: dict[str, Any], where: str, defaults: dict[str, Any], problems: ProblemCollector,
                  resolve: Callable[[str], Path] | None, out: list[tuple[str, Any]]) -> None:
    extra = sorted(str(k) for k in entry if k not in GROUP_KEYS)
    settings, members = entry.get("group"), entry.get("tasks")
    ok = True
    if extra:
        problems.add(f"{where}: a group takes only 'group' (the shared settings) and 'tasks' (its entries), got "
                     f"also {', '.join(extra)}. Move those keys into 'group:' (shared) or into one of its tasks.")
        ok = False
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        problems.add(f"{where}.group: expected a mapping of task settings shared by the group's tasks (e.g. "
                     f"{{type: classification, data: {{quoting: none}}}}), got {shown(settings)}.")
        ok = False
    elif "data" in settings and not isinstance(settings["data"], dict):
        problems.add(f"{where}.group.data: expected a mapping of data keys (e.g. {{format: conll}}), got "
                     f"{shown(settings['data'])}.")
        ok = False
    elif "name" in settings:
        problems.add(f"{where}.group.name: {shown(settings['name'])} would name every task of the group alike. "
                     "Give each task its own 'name' (or a template in an expanding entry).")
        ok = False
    if not isinstance(members, list) or not members:
        problems.add(f"{where}.tasks: a group needs a non-empty list of task entries under 'tasks:', got "
                     f"{shown(members)}.")
        ok = False
    if not ok:
        return
    for index, member in enumerate(members):
        _expand(member, f"{where}.tasks[{index}]", merged(defaults, settings), problems, resolve, out)


def _template_fields(template: Any, key: str, where: str, valid: tuple[str, ...], kind: str,
                     problems: ProblemCollector) -> bool:
    """True when `template` (a string) uses only `valid` fields; else records why not."""
    if not isinstance(template, str):
        problems.add(f"{where}.{key}: expected a text template such as '{{{valid[0]}}}' for the tasks {kind} "
                     f"expands to, got {shown(template)}.")
        return False
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as err:
        problems.add(f"{where}.{key}: {shown(template)} is not a valid template ({err}). Write fields as "
                     f"{', '.join('{' + f + '}' for f in valid)}, and a literal brace as '{{{{' or '}}}}'.")
        return False
    fine = True
    for name in names:
        if name not in valid:
            problems.add(f"{where}.{key}: {shown(template)} uses the unknown field {{{name}}}.{suggest(name, valid)} "
                         f"Valid fields for {kind}: {', '.join('{' + f + '}' for f in valid)}.")
            fine = False
    return fine


def _instances(entry: dict[str, Any], where: str, fields: list[dict[str, Any]], sources: list[str],
               overrides: list[dict[str, Any]], kind: str, valid: tuple[str, ...], problems: ProblemCollector,
               ) -> list[tuple[str, dict[str, Any]]]:
    """One entry per `fields` (its template values): `name` and the data templates filled in, then the data keys
    of `overrides` set; the names checked to differ (else nothing is returned)."""
    template = entry.get("name")
    if template is None:
        problems.add(f"{where}.name: missing. An entry that expands to several tasks needs a name template, e.g. "
                     f"'{{{valid[0]}}}'. Valid fields for {kind}: {', '.join('{' + f + '}' for f in valid)}.")
        return []
    data = entry["data"]
    templated = [k for k in _TEMPLATED if isinstance(data.get(k), str) and k not in overrides[0]]
    if not all([_template_fields(template, "name", where, valid, kind, problems),
                *[_template_fields(data[k], f"data.{k}", where, valid, kind, problems) for k in templated]]):
        return []
    names = [template.format(**values) for values in fields]
    clashes = sorted({n for n in names if names.count(n) > 1})
    for name in clashes:
        same = [s for n, s in zip(names, sources) if n == name]
        problems.add(f"{where}.name: the template {shown(template)} gives the name '{name}' to {len(same)} of the "
                     f"{len(names)} tasks ({', '.join(same[:4])}{', ...' if len(same) > 4 else ''}). Use a field "
                     f"that differs between them: {', '.join('{' + f + '}' for f in valid)}.")
    if clashes:
        return []
    out = []
    for name, values, source, override in zip(names, fields, sources, overrides):
        new_data = {**data, **{k: data[k].format(**values) for k in templated}, **override}
        out.append((f"{where} ({name}, from {source})", {**entry, "name": name, "data": new_data}))
    return out


def _expand_glob(entry: dict[str, Any], where: str, problems: ProblemCollector, resolve: Callable[[str], Path],
                 out: list[tuple[str, Any]]) -> None:
    pattern = entry["data"]["train"]
    base = resolve(".")
    full = resolve(pattern)
    matches = sorted(p for p in glob.glob(str(full), recursive=True) if Path(p).is_file())
    if not matches:
        problems.add(f"{where}.data.train: the glob {shown(pattern)} matches no file (looked for {full}). Check the "
                     "pattern and data_dir (relative patterns start at data_dir or the config's folder).")
        return
    shown_paths = [_relative(p, base, pattern) for p in matches]
    fields = [{"stem": Path(p).stem, "parent": Path(p).parent.name, "index": i} for i, p in enumerate(matches)]
    overrides = [{"train": s} for s in shown_paths]
    out.extend(_instances(entry, where, fields, shown_paths, overrides, f"the glob {shown(pattern)}", GLOB_FIELDS,
                          problems))


def _relative(path: str, base: Path, pattern: str) -> str:
    """A match as the entry would have written it: relative to the data folder when the pattern is."""
    if Path(pattern).expanduser().is_absolute():
        return path
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return path


def _expand_hub(entry: dict[str, Any], where: str, problems: ProblemCollector, out: list[tuple[str, Any]]) -> None:
    data = entry["data"]
    hubs, configs = data.get("hub"), data.get("hub_config")
    datasets: list[tuple[Any, Any]] = []
    if isinstance(hubs, list) and isinstance(configs, list):
        problems.add(f"{where}.data: both 'hub' and 'hub_config' are lists. Give a list of datasets in 'hub' "
                     "(ids, or {hub: ID, hub_config: NAME} mappings), or one 'hub' with a list of 'hub_config'.")
        return
    if isinstance(configs, list):
        if not isinstance(hubs, str):
            problems.add(f"{where}.data.hub: a list of hub_config needs one dataset id in 'hub', got {shown(hubs)}.")
            return
        datasets = [(hubs, c) for c in configs]
    else:
        for index, item in enumerate(hubs):
            if isinstance(item, str):
                datasets.append((item, configs))
            elif isinstance(item, dict) and isinstance(item.get("hub"), str) and set(item) <= {"hub", "hub_config"}:
                datasets.append((item["hub"], item.get("hub_config", configs)))
            else:
                problems.add(f"{where}.data.hub[{index}]: expected a dataset id (e.g. 'nyu-mll/glue') or a mapping "
                             f"{{hub: ID, hub_config: NAME}}, got {shown(item)}.")
        if len(datasets) != len(hubs):
            return
    if not datasets:
        problems.add(f"{where}.data: the list of Hub datasets is empty. Name at least one.")
        return
    bad = [(h, c) for h, c in datasets if not h or (c is not None and not isinstance(c, str))]
    if bad:
        problems.add(f"{where}.data: each Hub dataset needs an id and a text config, got {shown(bad[0])}.")
        return
    sources = [h + (f"/{c}" if c else "") for h, c in datasets]
    fields = [{"hub": h.rstrip("/").split("/")[-1], "config": c or "", "index": i} for i, (h, c) in enumerate(datasets)]
    overrides = [{"hub": h, "hub_config": c} for h, c in datasets]
    out.extend(_instances(entry, where, fields, sources, overrides, "a list of Hub datasets", HUB_FIELDS, problems))


__all__ = ["GLOB_FIELDS", "HUB_FIELDS", "expand_tasks", "flatten_groups", "merged"]
