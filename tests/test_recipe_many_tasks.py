"""Declaring many tasks in a recipe: group settings, one entry per glob of files or list of Hub datasets, and every
mistake of every expanded task reported at once."""

from __future__ import annotations

import pytest
import yaml

from manyheads.errors import ConfigError
from manyheads.recipe import build_config, build_model, load_config, prepare_data, read_yaml

from .conftest import base_config, review_rows, write_jsonl


def intents(data_dir, n: int = 50) -> None:
    """`intents/<name>/train.jsonl` and `dev.jsonl` for n intents."""
    for i in range(n):
        folder = data_dir / "intents" / f"intent{i:02d}"
        folder.mkdir(parents=True)
        write_jsonl(folder / "train.jsonl", review_rows(8, i))
        write_jsonl(folder / "dev.jsonl", review_rows(4, 100 + i))


def config(tiny_model_dir, data_dir, tmp_path, tasks, **training) -> dict:
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out", **training)
    raw["tasks"] = tasks
    return raw


def problems_of(raw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    return info.value.problems


def test_a_glob_entry_builds_one_task_per_file(tiny_model_dir, tmp_path):
    data_dir = tmp_path / "data"
    intents(data_dir)
    entry = {"name": "{parent}", "type": "classification", "text": "text", "label": "sentiment", "weight": 0.5,
             "labels": ["neg", "pos"],
             "data": {"train": "intents/*/train.jsonl", "eval": "intents/{parent}/dev.jsonl", "max_train_samples": 6}}
    run = build_config(config(tiny_model_dir, data_dir, tmp_path, [entry]))
    assert [e.name for e in run.tasks] == [f"intent{i:02d}" for i in range(50)]
    for i, e in enumerate(run.tasks):
        assert e.task.type == "classification" and e.task.weight == 0.5 and e.task.text == ["text"]
        assert e.data.train == f"intents/intent{i:02d}/train.jsonl"
        assert e.data.eval == f"intents/intent{i:02d}/dev.jsonl"
        assert e.data.max_train_samples == 6
    prepared = prepare_data(run, tokenize=False)
    assert all(len(prepared.raw[e.name].splits["train"]) == 6 for e in run.tasks)
    assert all(len(prepared.raw[e.name].splits["eval"]) == 4 for e in run.tasks)
    model = build_model(run, prepared.tasks)
    assert list(model.tasks) == [e.name for e in run.tasks]


def test_glob_name_fields_stem_and_index(tiny_model_dir, tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "flat").mkdir(parents=True)
    for name in ("b_topic", "a_topic"):
        write_jsonl(data_dir / "flat" / f"{name}.jsonl", review_rows(8, 0))
    entry = {"name": "t{index:02d}_{stem}", "type": "classification", "text": "text", "label": "sentiment",
             "data": {"train": "flat/*.jsonl"}}
    run = build_config(config(tiny_model_dir, data_dir, tmp_path, [entry]))
    assert [e.name for e in run.tasks] == ["t00_a_topic", "t01_b_topic"]


def test_group_settings_apply_and_a_task_overrides_them(tiny_model_dir, data_dir, tmp_path):
    group = {"group": {"type": "classification", "text": "text", "weight": 2.0, "label": "sentiment",
                       "data": {"train": "train.jsonl", "eval": "eval.jsonl", "max_train_samples": 20}},
             "tasks": [{"name": "plain"},
                       {"name": "own", "weight": 0.5, "label": "match", "data": {"max_train_samples": 7}},
                       {"name": "regress", "type": "regression", "label": "score"}]}
    after = {"name": "outside", "type": "classification", "text": "text", "label": "sentiment",
             "data": {"train": "train.jsonl"}}
    run = build_config(config(tiny_model_dir, data_dir, tmp_path, [group, after]))
    tasks = {e.name: e for e in run.tasks}
    assert list(tasks) == ["plain", "own", "regress", "outside"]
    assert tasks["plain"].task.weight == 2.0 and tasks["plain"].task.label == "sentiment"
    assert tasks["plain"].data.max_train_samples == 20 and tasks["plain"].data.eval == "eval.jsonl"
    # A task's own keys win, and its data is merged with the group's key by key.
    assert tasks["own"].task.weight == 0.5 and tasks["own"].task.label == "match"
    assert tasks["own"].data.max_train_samples == 7 and tasks["own"].data.train == "train.jsonl"
    assert tasks["regress"].task.type == "regression" and tasks["regress"].task.weight == 2.0
    # Nothing leaks out of the group.
    assert tasks["outside"].task.weight == 1.0 and tasks["outside"].data.max_train_samples is None


def test_nested_groups_merge_outer_then_inner(tiny_model_dir, data_dir, tmp_path):
    inner = {"group": {"data": {"max_train_samples": 5}}, "tasks": [{"name": "a"}, {"name": "b", "weight": 3.0}]}
    outer = {"group": {"type": "classification", "text": "text", "label": "sentiment", "weight": 2.0,
                       "data": {"train": "train.jsonl", "max_train_samples": 9}},
             "tasks": [inner, {"name": "c"}]}
    run = build_config(config(tiny_model_dir, data_dir, tmp_path, [outer]))
    got = {e.name: (e.task.weight, e.data.max_train_samples) for e in run.tasks}
    assert got == {"a": (2.0, 5), "b": (3.0, 5), "c": (2.0, 9)}


def test_a_hub_list_expands_to_one_task_per_dataset(tiny_model_dir, data_dir, tmp_path):
    configs = {"name": "glue_{config}", "type": "classification", "text": "sentence",
               "data": {"hub": "nyu-mll/glue", "hub_config": ["sst2", "cola"], "max_train_samples": 100}}
    datasets = {"name": "{hub}_{index}", "type": "classification", "text": "text",
                "data": {"hub": ["stanfordnlp/imdb", {"hub": "cornell-movie-review-data/rotten_tomatoes"},
                                 {"hub": "nyu-mll/glue", "hub_config": "rte"}]}}
    raw = config(tiny_model_dir, None, tmp_path, [configs, datasets])
    del raw["data_dir"]
    run = build_config(raw)
    got = {e.name: (e.data.hub, e.data.hub_config, e.data.max_train_samples) for e in run.tasks}
    assert got == {"glue_sst2": ("nyu-mll/glue", "sst2", 100), "glue_cola": ("nyu-mll/glue", "cola", 100),
                   "imdb_0": ("stanfordnlp/imdb", None, None),
                   "rotten_tomatoes_1": ("cornell-movie-review-data/rotten_tomatoes", None, None),
                   "glue_2": ("nyu-mll/glue", "rte", None)}
    assert all(e.task.text == ["sentence"] for e in run.tasks[:2])


def test_a_hub_list_can_template_its_local_files(tiny_model_dir, tmp_path):
    data_dir = tmp_path / "data"
    for name in ("sst2", "cola"):
        (data_dir / name).mkdir(parents=True)
        write_jsonl(data_dir / name / "train.jsonl", review_rows(8, 0))
    entry = {"name": "{config}", "type": "classification", "text": "text", "label": "sentiment",
             "data": {"hub": "nyu-mll/glue", "hub_config": ["sst2", "cola"], "train": "{config}/train.jsonl"}}
    run = build_config(config(tiny_model_dir, data_dir, tmp_path, [entry]))
    assert [(e.name, e.data.train) for e in run.tasks] == [("sst2", "sst2/train.jsonl"), ("cola", "cola/train.jsonl")]
    prepared = prepare_data(run, tokenize=False)  # --data_dir given: the local files, no network
    assert len(prepared.raw["cola"].splits["train"]) == 8


def test_every_mistake_of_every_entry_is_reported_at_once(tiny_model_dir, tmp_path):
    data_dir = tmp_path / "data"
    intents(data_dir, 3)
    tasks = [
        # A glob that matches nothing.
        {"name": "{stem}", "type": "classification", "text": "text", "data": {"train": "nowhere/*.jsonl"}},
        # A template whose names repeat: every file is called train.
        {"name": "{stem}", "type": "classification", "text": "text", "data": {"train": "intents/*/train.jsonl"}},
        # An unknown template field, with a suggestion.
        {"name": "{parnet}", "type": "classification", "text": "text", "data": {"train": "intents/*/train.jsonl"}},
        # Each expanded task is checked as a written one: a bad setting in every one of the three.
        {"name": "x_{parent}", "type": "classification", "text": "text", "weight": "heavy",
         "data": {"train": "intents/*/train.jsonl"}},
        # A group with a bad member and a stray key.
        {"group": {"type": "classification"}, "tasks": [{"name": "g", "typo_key": 1, "data": {"train": "a.jsonl"}}],
         "weight": 2},
        {"group": {"type": "classification", "text": "text"},
         "tasks": [{"name": "h", "data": {"train": "a.jsonl", "formt": "csv"}}]},
        # A Hub list with an unknown field and a bad item.
        {"name": "{dataset}", "type": "classification", "data": {"hub": ["glue", 3]}},
    ]
    found = problems_of(config(tiny_model_dir, data_dir, tmp_path, tasks))
    text = "\n".join(found)

    def one(*parts: str) -> None:
        assert sum(all(p in line for p in parts) for line in found) == 1, (parts, text)

    one("tasks[0].data.train", "'nowhere/*.jsonl'", "matches no file", "data_dir")
    one("tasks[1].name", "'{stem}'", "'train' to 3 of the 3 tasks", "{parent}")
    one("tasks[2].name", "{parnet}", "Did you mean 'parent'?", "{stem}, {parent}, {index}")
    for i in range(3):
        one(f"tasks[3] (x_intent{i:02d}, from intents/intent{i:02d}/train.jsonl).weight", "heavy")
    one("tasks[4]", "only 'group'", "weight")
    one("tasks[5].tasks[0] (h).data", "formt")
    one("tasks[6].data.hub[1]", "3", "dataset id")
    assert not any("tasks[4].tasks[0]" in line for line in found)  # a broken group is not expanded
    assert len(found) == 9, text


def test_a_template_without_a_field_names_the_clash_and_a_hub_name_is_required(tiny_model_dir, tmp_path):
    tasks = [{"name": "same", "type": "classification", "text": "t", "data": {"hub": "g", "hub_config": ["a", "b"]}},
             {"type": "classification", "text": "t", "data": {"hub": ["x", "y"]}},
             {"name": "{config}", "type": "classification", "text": "t", "data": {"hub": ["x"], "hub_config": ["a"]}}]
    raw = config(tiny_model_dir, None, tmp_path, tasks)
    del raw["data_dir"]
    found = problems_of(raw)
    assert any("tasks[0].name" in p and "'same' to 2 of the 2 tasks (g/a, g/b)" in p for p in found)
    assert any("tasks[1].name: missing" in p and "{hub}, {config}, {index}" in p for p in found)
    assert any("tasks[2].data: both 'hub' and 'hub_config' are lists" in p for p in found)


def test_read_yaml_gives_plain_entries_that_compare_can_pick_from(tiny_model_dir, data_dir, tmp_path):
    """Code that edits a recipe's task list (compare's single-task runs) sees one plain entry per task."""
    group = {"group": {"type": "classification", "text": "text", "label": "sentiment",
                       "data": {"train": "train.jsonl", "eval": "eval.jsonl"}},
             "tasks": [{"name": "a"}, {"name": "b", "label": "match"}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config(tiny_model_dir, data_dir, tmp_path, [group])), encoding="utf-8")
    raw, _ = read_yaml(path)
    assert [t["name"] for t in raw["tasks"]] == ["a", "b"]
    assert raw["tasks"][1] == {"type": "classification", "text": "text", "label": "match", "name": "b",
                               "data": {"train": "train.jsonl", "eval": "eval.jsonl"}}
    assert [e.name for e in load_config(path).tasks] == ["a", "b"]
    # A group with a mistake stays as written, so that the message names it where it is.
    path.write_text(yaml.safe_dump(config(tiny_model_dir, data_dir, tmp_path, [{"group": 1, "tasks": []}])),
                    encoding="utf-8")
    assert read_yaml(path)[0]["tasks"] == [{"group": 1, "tasks": []}]
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.group: expected a mapping"):
        load_config(path)


def test_compare_plans_each_task_of_a_glob_entry_alone(tiny_model_dir, tmp_path):
    from manyheads.recipe.compare import plan_comparison

    data_dir = tmp_path / "data"
    intents(data_dir, n=3)
    entry = {"name": "{parent}", "type": "classification", "text": "text", "label": "sentiment",
             "data": {"train": "intents/*/train.jsonl", "eval": "intents/{parent}/dev.jsonl"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config(tiny_model_dir, data_dir, tmp_path, [entry], max_steps=6)),
                    encoding="utf-8")
    comparison = plan_comparison(str(path), [], [1], tmp_path / "compare")
    assert [r.key for r in comparison.runs] == ["mt/seed-1"] + [f"single-intent{i:02d}/seed-1" for i in range(3)]
    for run in comparison.runs[1:]:
        assert [t["name"] for t in run.config["tasks"]] == run.tasks


def test_tasks_sharing_a_head_are_checked_when_the_recipe_is_read(tiny_model_dir, data_dir, tmp_path):
    def data():
        return {"train": "train.jsonl", "eval": "eval.jsonl"}

    tasks = [{"name": "a", "type": "classification", "text": "text", "label": "sentiment", "head": "shared",
              "data": data()},
             {"name": "b", "type": "regression", "text": "text", "label": "score", "head": "shared", "data": data()},
             {"name": "c", "type": "classification", "text": "text", "label": "sentiment", "head": "x y",
              "data": data()}]
    found = problems_of(config(tiny_model_dir, data_dir, tmp_path, tasks))
    assert any("head 'shared'" in p and "'a' (classification), 'b' (regression)" in p for p in found)
    assert any("head: got 'x y'" in p for p in found)  # and every other problem with it


def test_the_per_task_cap_is_made_before_fitting_so_the_recipe_and_the_trainer_see_the_same_rows(tiny_model_dir,
                                                                                                    tmp_path):
    from manyheads.recipe import build_trainer

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", review_rows(40, 1))
    write_jsonl(data_dir / "eval.jsonl", review_rows(8, 2))
    raw = config(tiny_model_dir, data_dir, tmp_path, base_config(tiny_model_dir, data_dir, tmp_path)["tasks"][:2],
                 max_train_samples_per_task=12)
    run = build_config(raw)
    prepared = prepare_data(run, tokenize=False)
    assert {name: len(prepared.raw[name].splits["train"]) for name in prepared.raw} == {"sentiment": 12, "match": 12}
    assert len(prepared.raw["sentiment"].splits["eval"]) == 8  # evaluation splits are never cut
    trainer = build_trainer(run, prepared)
    assert trainer.train_dataset.sizes == {"sentiment": 12, "match": 12}
    tokenizer = trainer.processing_class
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in trainer.train_dataset.datasets["sentiment"]
             ["input_ids"]]
    assert texts == [text.lower() for text in prepared.raw["sentiment"].splits["train"]["text"]]
