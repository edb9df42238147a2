"""The recipe's data files: what `data: {train: ...}` reads."""

from manyheads.recipe import build_config, prepare_data

from .conftest import base_config


def test_a_jsonl_file_with_blank_lines_trains(tmp_path, tiny_model_dir, data_dir):
    lines = (data_dir / "train.jsonl").read_text().splitlines()
    (data_dir / "gaps.jsonl").write_text("\n".join(line + "\n" for line in lines), encoding="utf-8")
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["tasks"] = [{**raw["tasks"][0], "data": {"train": "gaps.jsonl"}}]
    prepared = prepare_data(build_config(raw))
    assert len(prepared.train["sentiment"]) == len(lines)
