"""`manyheads predict` streams, checks every row, and never leaves a partial result under the output's name."""

import json

import pytest

from manyheads import Classification, MultiTaskModel, TokenClassification
from manyheads.cli.main import main
from manyheads.errors import ConfigError
from manyheads.records import iter_records, read_records
from manyheads.serving.predictor import MultiTaskPredictor

from .conftest import make_encoder, make_tokenizer, review_rows


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A saved model (untrained heads: these tests are about rows, not accuracy) with a single-text task, a
    pair task and a token task."""
    folder = tmp_path_factory.mktemp("predict-model")
    model = MultiTaskModel.from_encoder(make_encoder(), [
        Classification(name="sentiment", labels=["neg", "pos"]),
        Classification(name="match", text=["text", "other"], labels=["no", "yes"]),
        TokenClassification(name="ner", labels=["O", "B-COL"]),
    ])
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return str(folder)


def write_lines(path, rows) -> str:
    """JSONL from dicts (or raw strings, written as they are)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def predict(model_dir, rows_path, out, *options) -> int:
    return main(["predict", model_dir, "--input", str(rows_path), "--output", str(out), *options])


def read_output(out) -> list[dict]:
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def assert_nothing_written(out) -> None:
    assert not out.exists()
    assert not out.with_name(out.name + ".partial").exists()


def pairs(n: int) -> list[dict]:
    """Rows of varied lengths (so that sorting by length inside a chunk would show if order leaked)."""
    return [{"text": r["text"] + " red" * (i % 4), "other": r["other"]} for i, r in enumerate(review_rows(n, 4))]


# ----- options and paths: checked before anything is loaded or written -----
# case: (MODEL_DIR, --output, other options, the error); {tmp}: the test's folder, {model}: the saved model,
# {encoder}: a plain BERT folder.
BAD_OPTIONS = {
    "batch_zero": ("{model}", "{tmp}/out.jsonl", ["--batch_size", "0"],
                   "--batch_size: got 0; give the rows per encoder pass (>= 1), e.g. 32."),
    "batch_negative": ("{model}", "{tmp}/out.jsonl", ["--batch_size", "-4"], "--batch_size: got -4;"),
    "chunk_zero": ("{model}", "{tmp}/out.jsonl", ["--chunk_rows", "0"], "--chunk_rows: got 0;"),
    "output_folder_missing": ("{model}", "{tmp}/nowhere/out.jsonl", [],
                              "--output: folder {tmp}/nowhere does not exist; create it (mkdir -p {tmp}/nowhere)"),
    "output_is_folder": ("{model}", "{tmp}/empty", [],
                         "--output: {tmp}/empty is a folder; give a file in it, e.g. {tmp}/empty/predictions.jsonl"),
    "model_missing": ("{tmp}/no-model", "{tmp}/out.jsonl", [],
                      "MODEL_DIR: folder not found: {tmp}/no-model; give the folder written by 'manyheads train'"),
    "model_is_encoder": ("{encoder}", "{tmp}/out.jsonl", [],
                         "MODEL_DIR: {encoder} holds a 'bert' model, not a manyheads one"),
    "model_empty_folder": ("{tmp}/empty", "{tmp}/out.jsonl", [],
                           "MODEL_DIR: {tmp}/empty holds no manyheads model (no config.json)"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_options_and_paths_exit_2_and_write_nothing(case, model_dir, tiny_model_dir, tmp_path, capsys):
    def fill(text: str) -> str:
        return text.format(tmp=tmp_path, model=model_dir, encoder=tiny_model_dir)

    model, out, options, message = BAD_OPTIONS[case]
    (tmp_path / "empty").mkdir()
    rows = write_lines(tmp_path / "rows.jsonl", [{"text": "good"}])
    assert predict(fill(model), rows, fill(out), *options) == 2
    err = capsys.readouterr().err
    assert f"error: {fill(message)}" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists() and list(tmp_path.rglob("*.partial")) == []
    assert list((tmp_path / "empty").iterdir()) == []


# ----- files that cannot be read: named by file and line -----
def test_unreadable_files_name_the_file_and_line(model_dir, tmp_path, capsys):
    cases = {
        "latin1.jsonl": ('{"text": "good"}\n\n{"text": "caf\xe9"}\n'.encode("latin-1"),
                         "latin1.jsonl:3: not UTF-8 text (byte 0xe9 at column 14); the input must be UTF-8: "
                         "convert it, e.g. `iconv -f latin1 -t utf-8"),
        "latin1.csv": ("text\ngood\ncaf\xe9\n".encode("latin-1"), "latin1.csv:3: not UTF-8 text (byte 0xe9"),
        "broken.jsonl": (b'{"text": "good"}\n{"text": "bad"\n', "broken.jsonl:2: not valid JSON (Expecting ',' "
                                                             "delimiter at column 15)"),
        "list.jsonl": (b'{"text": "good"}\n["good"]\n', "list.jsonl:2: expected a JSON object of fields"),
        "short.csv": (b'text,other\ngood,bad\n"a, b"\n', "short.csv:3: values in this row: 1; columns in the header "
                                                        "(line 1): 2 ['text', 'other']; every row needs one value"),
        "twice.csv": (b"text,text\na,b\n", "twice.csv:1: the header names ['text'] more than once"),
        "long.tsv": (b"text\tother\ngood\tbad\tred\n", "long.tsv:2: values in this row: 3; columns in the "
                                                   "header (line 1): 2 ['text', 'other']; quote a value that holds"),
        "broken.json": (b'[{"text": "good"},\n {"text": }]', "broken.json:2: not valid JSON"),
        "items.json": (b'[{"text": "good"}, 3]', "items.json: item 2: expected a JSON object of fields, e.g. "
                                                 '{"text": "..."}; got a number (3)'),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        out = tmp_path / f"{name}.out.jsonl"
        assert predict(model_dir, tmp_path / name, out) == 2, name
        err = capsys.readouterr().err
        assert f"error: {tmp_path}/{message}" in err, err
        assert f"--output: {out} not written" in err and "--on_error skip" not in err
        assert_nothing_written(out)


def test_reader_is_lazy_and_counts_lines(tmp_path):
    path = write_lines(tmp_path / "rows.jsonl", [{"text": "a"}, "", "   ", {"text": "b"}, "{oops"])
    rows = iter_records(path)
    assert next(rows) == (f"{path}:1", {"text": "a"})
    assert next(rows) == (f"{path}:4", {"text": "b"})  # blank lines skipped, still counted
    with pytest.raises(ConfigError, match=r"rows.jsonl:5: not valid JSON"):
        next(rows)
    # CSV: the header is line 1, a quoted cell may span lines, a byte-order mark is not part of the first name.
    csv_path = tmp_path / "rows.csv"
    csv_path.write_bytes('\ufefftext,other\n"two\nlines",x\n\ngood,y\n'.encode())
    assert list(iter_records(csv_path)) == [(f"{csv_path}:2", {"text": "two\nlines", "other": "x"}),
                                            (f"{csv_path}:5", {"text": "good", "other": "y"})]
    assert read_records(csv_path) == [{"text": "two\nlines", "other": "x"}, {"text": "good", "other": "y"}]


# ----- rows a task cannot read -----
BAD_ROWS = [
    ({"text": None}, [], "field 'text' (task 'sentiment') is null; give a string"),
    ({"text": 3.5, "other": "x"}, [], "field 'text' (task 'sentiment') is a number (3.5); give a string"),
    ({"text": ["good", "red"]}, [], "field 'text' (task 'sentiment') is a list; give a string"),
    ({"text": "good", "other": True}, ["--task", "match"], "field 'other' (task 'match') is a boolean (true)"),
    ({"text": "good"}, ["--task", "match"], "field 'other' (task 'match') is missing; the row has ['text']"),
    ({"other": "x"}, ["--task", "ner"], "field 'tokens' (task 'ner') is missing (a plain 'text' field would do "
                                        "too); the row has ['other']"),
    ({"tokens": ["the", 7]}, ["--task", "ner"], "field 'tokens' (task 'ner') is a list of words holding a number "
                                                "(7); every word must be a string"),
    ({"id": 4}, [], "no task can read this row: its fields are ['id']; the tasks read sentiment: 'text'; "
                    "match: 'text' + 'other'; ner: 'tokens'"),
]


@pytest.mark.parametrize("bad, options, message", BAD_ROWS)
def test_a_bad_row_fails_with_its_line_and_field(bad, options, message, model_dir, tmp_path, capsys):
    rows = write_lines(tmp_path / "rows.jsonl", [{"text": "good", "other": "bad"}, "", {"text": "fine", "other": "red"},
                                                  bad])
    out = tmp_path / "out.jsonl"
    assert predict(model_dir, rows, out, *options) == 2
    err = capsys.readouterr().err
    assert f"error: {rows}:4: {message}" in err, err
    assert f"--output: {out} not written" in err and "--on_error skip marks such rows" in err
    assert_nothing_written(out)


def test_a_token_task_takes_text_or_a_list_of_words(model_dir, tmp_path):
    rows = write_lines(tmp_path / "rows.jsonl", [{"tokens": ["the", "red", "box"]}, {"text": "the red box"}])
    out = tmp_path / "out.jsonl"
    assert predict(model_dir, rows, out, "--task", "ner") == 0
    lines = read_output(out)
    assert [line["ner"]["words"] for line in lines] == [["the", "red", "box"]] * 2
    assert lines[0]["ner"]["tags"] == lines[1]["ner"]["tags"]


def test_skip_marks_the_bad_tasks_and_predicts_the_rest(model_dir, tmp_path, capsys):
    rows = write_lines(tmp_path / "rows.jsonl", [
        {"text": "good red", "other": "bad"},
        {"text": "good", "other": None},  # match cannot read it; sentiment and ner (via 'text') can
        {"id": 1},  # no task can
        {"text": 5},
    ])
    out = tmp_path / "out.jsonl"
    assert predict(model_dir, rows, out, "--on_error", "skip") == 0
    lines = read_output(out)
    assert [line["index"] for line in lines] == [0, 1, 2, 3]
    assert list(lines[0]) == ["index", "sentiment", "match", "ner"]
    assert lines[1]["match"] == {"error": f"{rows}:2: field 'other' (task 'match') is null; give a string"}
    assert lines[1]["sentiment"]["label"] in ("neg", "pos") and lines[1]["ner"]["words"] == ["good"]
    assert list(lines[2]) == ["index", "error"] and lines[2]["error"].startswith(f"{rows}:3: no task can read")
    assert lines[3] == {"index": 3,
                        "sentiment": {"error": f"{rows}:4: field 'text' (task 'sentiment') is a number (5); "
                                               "give a string"},
                        "ner": {"error": f"{rows}:4: field 'text' (task 'ner') is a number (5); give a string "
                                         "or a list of words"}}
    # The good rows are predicted exactly as without the bad ones.
    clean = MultiTaskPredictor(model_dir).predict([{"text": "good red", "other": "bad"}])[0]
    assert lines[0]["sentiment"]["scores"] == pytest.approx(clean["sentiment"]["scores"], abs=1e-6)
    summary = capsys.readouterr().out
    assert "4 rows ->" in summary and "rows predicted per task: sentiment 2, match 1, ner 2" in summary
    assert f'3 rows marked with "error" (--on_error skip); the first: {rows}:2:' in summary


def test_without_task_each_row_runs_the_tasks_it_has_fields_for(model_dir, tmp_path):
    # One row without 'other' no longer drops the pair task for every row.
    rows = write_lines(tmp_path / "rows.jsonl", [{"text": "good", "other": "bad"}, {"text": "red"}])
    out = tmp_path / "out.jsonl"
    assert predict(model_dir, rows, out) == 0
    lines = read_output(out)
    assert set(lines[0]) == {"index", "sentiment", "match", "ner"}
    assert set(lines[1]) == {"index", "sentiment", "ner"}


# ----- streaming -----
def test_chunks_keep_the_input_order_and_the_same_lines(model_dir, tmp_path):
    rows = write_lines(tmp_path / "rows.jsonl", pairs(10))
    one, three = tmp_path / "one.jsonl", tmp_path / "three.jsonl"
    # One row per encoder pass: every row gets the same padding in both runs, so the lines are identical.
    assert predict(model_dir, rows, one, "--batch_size", "1") == 0
    assert predict(model_dir, rows, three, "--batch_size", "1", "--chunk_rows", "3") == 0
    assert three.read_text() == one.read_text()
    lines = read_output(three)
    assert [line["index"] for line in lines] == list(range(10))
    expected = MultiTaskPredictor(model_dir, batch_size=4).predict(pairs(10))
    for line, want in zip(lines, expected):
        assert line["sentiment"]["label"] == want["sentiment"]["label"]
        assert line["match"]["scores"] == pytest.approx(want["match"]["scores"], abs=1e-5)
        assert line["ner"]["tags"] == want["ner"]["tags"]


def test_lines_are_written_to_the_partial_file_as_chunks_finish(model_dir, tmp_path, monkeypatch):
    rows = write_lines(tmp_path / "rows.jsonl", pairs(7))
    out = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    seen = []
    original = MultiTaskPredictor.predict_rows

    def spy(self, records, row_tasks):
        # When a chunk starts, the chunks before it are on disk and the final name does not exist yet.
        seen.append((len(partial.read_text().splitlines()), out.exists()))
        return original(self, records, row_tasks)

    monkeypatch.setattr(MultiTaskPredictor, "predict_rows", spy)
    assert predict(model_dir, rows, out, "--chunk_rows", "3") == 0
    assert seen == [(0, False), (3, False), (6, False)]
    assert len(read_output(out)) == 7 and not partial.exists()


def test_a_bad_row_in_the_last_chunk_leaves_no_output(model_dir, tmp_path, capsys):
    rows = write_lines(tmp_path / "rows.jsonl", [*pairs(9), {"text": None, "other": "x"}])
    out = tmp_path / "out.jsonl"
    out.write_text("a finished earlier run\n")
    assert predict(model_dir, rows, out, "--chunk_rows", "3") == 2
    err = capsys.readouterr().err
    assert f"error: {rows}:10: field 'text' (task 'sentiment') is null" in err
    assert f"--output: {out} not written: the run stopped at the problem above, and {out}.partial was removed" in err
    # The final name never holds a partial result: what was there stays as it was.
    assert out.read_text() == "a finished earlier run\n"
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_predict_rows_equals_predict_and_plan_row_explains(model_dir):
    predictor = MultiTaskPredictor(model_dir, batch_size=3)
    records = pairs(5)
    together = predictor.predict(records)
    per_row = predictor.predict_rows(records, [["sentiment", "match"]] * 5)
    for a, b in zip(together, per_row):
        assert list(b) == ["sentiment", "match"]
        assert a["match"]["scores"] == pytest.approx(b["match"]["scores"], abs=1e-5)
    plan = predictor.plan_row({"text": "good", "other": None}, where="row 3")
    assert plan.tasks == ["sentiment", "ner"] and plan.error is None
    assert plan.errors == {"match": "row 3: field 'other' (task 'match') is null; give a string"}
    # The Python API refuses values that are not text instead of predicting on "None".
    with pytest.raises(ValueError, match=r"records\[1\]: field 'text' \(tasks 'sentiment', 'ner'\) is null"):
        predictor.predict([{"text": "good"}, {"text": None}], tasks=["sentiment", "ner"])
