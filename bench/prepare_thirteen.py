"""The data folder of the 13-task study (examples/thirteen_tasks.yaml): links to the shared files, plus TREC and
SemEval-2018 E-c converted to JSONL, which the recipe reads (not a test).

    python bench/prepare_thirteen.py [--data_dir ../shared/data] [--out bench/out/thirteen/data]
    HF_HUB_OFFLINE=1 manyheads validate examples/thirteen_tasks.yaml --data_dir bench/out/thirteen/data --model ...

- GLUE (sst2, cola, rte, mrpc, stsb, qnli) and the SQuAD subset: symbolic links to their shared folders (nothing is
  copied); `conll2003/valid.txt` and `test.txt`: links to the shared files;
- `conll2003/train.txt`: the shared file's sentences shuffled (seed 0), the first sentence holding each POS, chunk
  and NER tag moved to the front, so that the recipe's first 1000 sentences hold every tag of the eval file (else
  the POS and chunk heads would miss rare tags such as WP$);
- `trec/{coarse,fine}/{train,test}.jsonl`: `{"text", "label"}` from `train_5500.label` and `TREC_10.label` (lines
  "COARSE:fine question"; a fine label keeps its coarse class: "ENTY:other" and "HUM:other" differ). The training rows
  are shuffled (seed 0) and the first row of each fine label is moved to the front, so that the recipe's first
  1000 rows (`max_train_samples`) hold every label the test file uses;
- `semeval2018_ec/{train,dev}.jsonl`: `{"text", "emotions"}` from the E-c TSV files, `emotions` the names of the
  columns set to 1, comma-separated ("anger,disgust"; "" for none): the `multilabel` task's `label_separator`
  form.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
from pathlib import Path

LINKED = ("sst2", "cola", "rte", "mrpc", "stsb", "qnli", "squad_v1.1_subset")
TREC = {"train": "train_5500.label", "test": "TREC_10.label"}
SEMEVAL = {"train": "2018-E-c-En-train.txt", "dev": "2018-E-c-En-dev.txt"}
EMOTIONS = ["anger", "anticipation", "disgust", "fear", "joy", "love", "optimism", "pessimism", "sadness",
            "surprise", "trust"]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_trec(path: Path) -> list[dict[str, str]]:
    rows = []
    with path.open(encoding="latin-1") as handle:  # train_5500.label is ISO-8859-1
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            label, _, question = line.strip().partition(" ")
            if ":" not in label or not question:
                raise SystemExit(f"{path}: line {number} is not 'COARSE:fine question': {line.strip()!r}")
            rows.append({"text": question.strip(), "coarse": label.split(":")[0], "fine": label})
    return rows


def every_label_first(rows: list[dict[str, str]], key: str, seed: int = 0) -> list[dict[str, str]]:
    """`rows` shuffled, then the first row of each label moved to the front (in shuffled order)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    seen: set[str] = set()
    first, rest = [], []
    for row in rows:
        (rest if row[key] in seen else first).append(row)
        seen.add(row[key])
    return first + rest


def reorder_conll(source: Path, target: Path, seed: int = 0) -> int:
    """`source`'s sentences (blank-line separated, -DOCSTART- dropped) shuffled, those that first hold a tag of
    some column moved to the front; returns the number of sentences."""
    sentences, lines = [], []
    for line in [*source.read_text(encoding="utf-8").splitlines(), ""]:
        if line.strip() and not line.startswith("-DOCSTART-"):
            lines.append(line)
        elif lines:
            sentences.append(lines)
            lines = []
    random.Random(seed).shuffle(sentences)
    seen: set[tuple[int, str]] = set()
    first, rest = [], []
    for sentence in sentences:
        tags = {(i, tag) for line in sentence for i, tag in enumerate(line.split()[1:], start=1)}
        (first if tags - seen else rest).append(sentence)
        seen |= tags
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join("\n".join(s) + "\n\n" for s in first + rest), encoding="utf-8")
    return len(sentences)


def read_semeval(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:  # CRLF: newline="" lets csv strip it
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    missing = [e for e in EMOTIONS if rows and e not in rows[0]]
    if missing:
        raise SystemExit(f"{path}: no column {missing[0]!r}; expected ID, Tweet and {', '.join(EMOTIONS)}")
    return [{"text": r["Tweet"], "emotions": ",".join(e for e in EMOTIONS if int(r[e]))} for r in rows]


def link(target: Path, link_path: Path) -> None:
    if link_path.is_symlink() or link_path.exists():
        if link_path.is_symlink() and Path(os.readlink(link_path)) == target:
            return
        raise SystemExit(f"{link_path} exists and is not a link to {target}; remove it or choose another --out")
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.symlink_to(target, target_is_directory=target.is_dir())


def prepare(data_dir: Path, out: Path) -> list[str]:
    """Fill `out`; returns one line per folder written."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for name in LINKED:
        source = (data_dir / name).resolve()
        if not source.is_dir():
            raise SystemExit(f"{source}: folder not found. Give --data_dir the folder that holds {', '.join(LINKED)}")
        link(source, out / name)
        lines.append(f"{out / name} -> {source}")
    conll = (data_dir / "conll2003").resolve()
    for name in ("valid.txt", "test.txt"):
        link(conll / name, out / "conll2003" / name)
    count = reorder_conll(conll / "train.txt", out / "conll2003" / "train.txt")
    lines.append(f"{out / 'conll2003'}: train.txt {count} sentences (reordered), links to valid.txt and test.txt")
    train = every_label_first(read_trec(data_dir / "trec" / TREC["train"]), "fine")
    test = read_trec(data_dir / "trec" / TREC["test"])
    for level in ("coarse", "fine"):
        for split, rows in (("train", train), ("test", test)):
            write_jsonl(out / "trec" / level / f"{split}.jsonl", [{"text": r["text"], "label": r[level]} for r in rows])
        lines.append(f"{out / 'trec' / level}: train {len(train)} rows, test {len(test)} rows, "
                     f"{len({r[level] for r in train})} labels")
    for split, file in SEMEVAL.items():
        rows = read_semeval(data_dir / "semeval2018_ec" / file)
        write_jsonl(out / "semeval2018_ec" / f"{split}.jsonl", rows)
        lines.append(f"{out / 'semeval2018_ec' / f'{split}.jsonl'}: {len(rows)} rows")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data", help="the shared data folder (read only)")
    parser.add_argument("--out", default="bench/out/thirteen/data", help="the data folder to fill (links + JSONL)")
    args = parser.parse_args()
    for line in prepare(Path(args.data_dir), Path(args.out)):
        print(line)


if __name__ == "__main__":
    main()
