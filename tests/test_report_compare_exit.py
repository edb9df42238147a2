"""`manyheads report` on a `manyheads compare` folder writes the comparison page and exits 0 (issue 29 item 2 e)."""

from __future__ import annotations

import json

from manyheads.cli.main import main
from manyheads.report import stalled_lines

SUMMARY = {
    "config_file": "glue.yaml", "seeds": [1, 2],
    "tasks": [{"task": "sst2", "metric": "accuracy", "greater_is_better": True,
               "multi_task": {"mean": 0.81, "sd": 0.01}, "single_task": {"mean": 0.79, "sd": 0.02},
               "difference": 0.02, "spread": "within", "verdict": "no clear difference"}],
}


def test_report_of_a_comparison_folder_exits_0(tmp_path, capsys):
    (tmp_path / "compare.json").write_text(json.dumps(SUMMARY), encoding="utf-8")
    assert main(["report", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert f"report written to {tmp_path / 'report' / 'index.html'}" in captured.out
    assert "error" not in captured.err
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert "no clear difference" in page
    assert stalled_lines(tmp_path) == []  # the folder holds no run of its own


def test_report_of_a_folder_that_is_neither_still_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no trainer_state.json" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
