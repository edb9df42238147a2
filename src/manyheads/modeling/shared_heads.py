"""Head sharing across datasets: several tasks (datasets) that train ONE head, named by their `head` setting.

tasksource and jiant users keep "two instances of the same task" (an RTE-like and an MNLI-like set) apart for
sampling, loss and metrics while one head learns from both. Here each dataset stays a task of its own (its
name, sampler share, loss, `eval_<task>_<metric>`), and the model keeps one head per head name: `heads.<head>` in
the weights, one output `<head>` in `predict`, `export` and `serve`. The first task of a head (in the model's
order) is its representative: prediction reads the head's outputs with that task's settings and fitted state
(labels, target scaling, thresholds).

Rules, checked when the model is built (`head_group_problems`) and once labels are fitted (`label_problem`):
the tasks of one head are of one type, none of them generates text (a decoder is shared with the `decoder`
setting instead), none has its own LoRA adapter (the head would read two different encoders), a head name that
is also a task's name is that task's own head, and their label lists agree.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..tasks import Task, TextGeneration, head_name


def head_groups(tasks: Mapping[str, Task]) -> dict[str, list[str]]:
    """`{head name: [its tasks, in the model's order]}`; a task without a `head` setting is its own head."""
    groups: dict[str, list[str]] = {}
    for name, task in tasks.items():
        groups.setdefault(head_name(task), []).append(name)
    return groups


def head_group_problems(tasks: Mapping[str, Task], adapters: bool) -> list[str]:
    """What makes these head groups impossible, one line each (settings only; labels come later)."""
    problems = []
    for head, names in head_groups(tasks).items():
        if head in tasks and head_name(tasks[head]) != head:
            problems.append(f"task '{head}': its name is the head name of tasks {names} but it trains head "
                            f"'{head_name(tasks[head])}'; rename the shared head or the task.")
        if len(names) < 2:
            continue
        types = {tasks[n].type for n in names}
        if len(types) > 1:
            listed = ", ".join(f"'{n}' ({tasks[n].type})" for n in names)
            problems.append(f"head '{head}': tasks {listed} share it but are of different types; one head serves "
                            "one type. Give them separate heads (remove 'head') or one type.")
        generating = [n for n in names if isinstance(tasks[n], TextGeneration)]
        if generating:
            problems.append(f"head '{head}': tasks {generating} generate text, so they have a decoder, not a head; "
                            "remove 'head' (generation tasks share a decoder with 'decoder: shared').")
        if adapters:
            adapted = [n for n in names if tasks[n].adapter]
            if adapted:
                problems.append(f"head '{head}': tasks {adapted} have their own LoRA adapter, so one head would read "
                                "different encoders; set 'adapter: false' on the tasks that share a head, or use "
                                "hard sharing.")
    return problems


def label_problem(head: str, tasks: list[Task]) -> str | None:
    """Why the tasks of one head cannot share it once their labels are known (None when they can)."""
    known = [task for task in tasks if task.num_outputs is not None]
    if len(known) < 2:
        return None
    first = known[0]
    for other in known[1:]:
        if other.label_list != first.label_list:
            return (f"head '{head}': task '{first.name}' has labels {first.label_list} and task '{other.name}' has "
                    f"{other.label_list}; datasets that share a head need the same labels in the same order. Map "
                    "the labels to one set (or declare 'labels' on both), or give the tasks separate heads.")
    return None
