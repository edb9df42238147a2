"""`manyheads report`: a real tiny run rendered in headless Chromium, every figure loaded, the tables filled."""

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from manyheads.cli.main import main
from manyheads.errors import ConfigError
from manyheads.recipe import build_config, build_trainer
from manyheads.report import build_report, load_run

from .conftest import base_config, review_rows, write_jsonl

FIGURES = {"train_loss.png", "eval_metrics.png", "weights_sampling.png", "relative_update.png",
           "gradient_conflict.png"}


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished tiny run: monitor and conflict on, evaluation every 4 steps, checkpoints (no final state)."""
    root = tmp_path_factory.mktemp("report-run")
    write_jsonl(root / "train.jsonl", review_rows(64, 1))
    write_jsonl(root / "eval.jsonl", review_rows(24, 2))
    raw = base_config(tiny_model_dir, root, root / "out", max_steps=8, logging_steps=2, eval_strategy="steps",
                      eval_steps=4, save_strategy="steps", save_steps=4)
    raw["tasks"] = raw["tasks"][:3]
    raw["diagnostics"] = {"update_monitor": True, "monitor_every": 2, "conflict_every": 4}
    trainer = build_trainer(build_config(raw))
    trainer.train()
    trainer.save_model()
    (root / "out" / "eval_results.json").write_text(json.dumps(trainer.evaluate()), encoding="utf-8")
    return root / "out"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium is not installed, and this test renders the report in headless Chromium. Install it "
                "(Debian/Ubuntu: apt-get install -y chromium); .ci/run installs it when it is missing.")


class Page(HTMLParser):
    """The parts of the rendered DOM the test checks: body attributes, images, table cells."""

    def __init__(self):
        super().__init__()
        self.body, self.images, self.tables, self._cell = {}, [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell.strip())
            self._cell = None


def render_in_chromium(index: Path, tmp_path: Path) -> Page:
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000",
                           "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    page = Page()
    page.feed(done.stdout)
    return page


def test_report_renders_every_figure_and_fills_the_tables(run_dir, tmp_path):
    assert not (run_dir / "trainer_state.json").exists()  # the newest checkpoint's history is used
    assert main(["report", str(run_dir)]) == 0
    folder = run_dir / "report"
    assert FIGURES <= {p.name for p in folder.iterdir()}
    text = (folder / "index.html").read_text(encoding="utf-8")
    assert "checkpoint-8/trainer_state.json" in text
    assert "http://" not in text and "https://" not in text  # nothing fetched from a network

    page = render_in_chromium(folder / "index.html", tmp_path)
    assert page.body.get("data-figures") == f"{len(FIGURES)}/{len(FIGURES)}"
    assert {Path(img["src"]).name for img in page.images} == FIGURES
    assert all(img.get("data-loaded") == "yes" for img in page.images)

    metrics, conflict, plan = page.tables
    header, *rows = metrics
    assert header[:3] == ["task", "metric", "better"] and "after training" in header
    by_key = {(r[0], r[1]): dict(zip(header, r)) for r in rows}
    for key in [("sentiment", "accuracy"), ("match", "f1"), ("colors", "micro_f1"), ("(all)", "average")]:
        row = by_key[key]
        assert row["last step"] == "8" and row["best step"] in ("4", "8")
        assert 0.0 <= float(row["last"]) <= 1.0 and float(row["after training"]) == pytest.approx(float(row["last"]),
                                                                                                   abs=1e-3)
    assert [r[0] for r in conflict[1:]] == ["sentiment", "match", "colors"]
    assert all(float(r[1]) > 0 for r in conflict[1:])
    assert [r[0] for r in plan[1:]] == ["sentiment", "match", "colors"]
    assert "relative_update_band" in text and "update_monitor: true" in text  # the run's config


def test_report_data_reads_every_source(run_dir):
    data = load_run(run_dir)
    assert data.tasks == {"sentiment": "classification", "match": "classification", "colors": "multilabel"}
    assert sorted({r["step"] for r in data.monitor_groups()}) == [2, 4, 6, 8]
    assert [r["step"] for r in data.conflict] == [4, 8]
    assert data.band() == (1e-6, 1e-2)
    assert data.final_eval["eval_average"] == pytest.approx(data.eval_logs()[-1]["eval_average"], abs=1e-6)
    assert data.greater_is_better("colors", "micro_f1") and not data.greater_is_better("sentiment", "loss")


def test_final_state_wins_and_missing_diagnostics_are_explained(run_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    history = [{"loss": 1.0, "loss_a": 1.2, "step": 5}, {"loss": 0.5, "loss_a": 0.4, "step": 10},
               {"eval_a_accuracy": 0.7, "eval_average": 0.7, "step": 10}]
    (bare / "trainer_state.json").write_text(json.dumps({"log_history": history}), encoding="utf-8")
    (bare / "checkpoint-3").mkdir()
    (bare / "checkpoint-3" / "trainer_state.json").write_text('{"log_history": []}', encoding="utf-8")
    index = build_report(bare)
    text = index.read_text(encoding="utf-8")
    assert "log history: ../trainer_state.json" in text
    assert "No update monitor measurements" in text and "No gradient-conflict measurements" in text
    assert (index.parent / "train_loss.png").stat().st_size > 0 and (index.parent / "eval_metrics.png").is_file()


def test_not_a_run_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no trainer_state.json"):
        build_report(tmp_path)
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_figures_are_drawn_on_the_agg_canvas():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from manyheads.report.figures import _new

    figure, axes = _new(2, 2, 1, 2)
    # No GUI backend is involved whatever MPLBACKEND says: the report never touches pyplot.
    assert isinstance(figure.canvas, FigureCanvasAgg) and len(axes[0]) == 2
