"""Fingerprints for `Dataset.map` when a task tokenizes its rows.

`datasets` names the result of `map` (and its cache file, for datasets read from files) by hashing the mapped
function, closure included, and the closure holds the tokenizer: one pickle of the whole vocabulary per call. That
is 0.6 s for MiniLM's tokenizer, so tokenizing the train and eval splits of 200 tasks spent four minutes hashing
(bench/many_tasks.py). Here the tokenizer is hashed once per tokenizer object and the rest (the dataset's own
fingerprint, the task's settings and fitted state, the code that encodes) is cheap to hash, so the fingerprint
still changes whenever the tokenized output could.
"""

from __future__ import annotations

import weakref
from typing import Any

from datasets.fingerprint import Hasher

# (id, vocabulary size) -> (a weak reference to the tokenizer, its hash). The size is in the key because
# `add_tokens` changes what the tokenizer produces; the weak reference tells a reused id from the same object.
_TOKENIZER_HASHES: dict[tuple[int, int], tuple[Any, str]] = {}


def tokenizer_hash(tokenizer: Any) -> str:
    """`datasets`' hash of `tokenizer`, computed once per tokenizer object and vocabulary size."""
    key = (id(tokenizer), len(tokenizer))
    cached = _TOKENIZER_HASHES.get(key)
    if cached is None or cached[0]() is not tokenizer:
        cached = (weakref.ref(tokenizer), Hasher.hash(tokenizer))
        _TOKENIZER_HASHES[key] = cached
    return cached[1]


def map_fingerprint(dataset: Any, tokenizer: Any, task: Any, *parts: Any) -> str | None:
    """A fingerprint for `dataset.map(...)` by `task` with `tokenizer` (None: let `datasets` hash it itself, e.g. for
    a task whose settings cannot be pickled)."""
    try:
        code = [getattr(getattr(type(task), name, None), "__code__", None) for name in ("encode", "encode_labels")]
        return Hasher.hash([getattr(dataset, "_fingerprint", None), tokenizer_hash(tokenizer),
                            f"{type(task).__module__}.{type(task).__qualname__}", code, task, *parts])
    except Exception:  # noqa: BLE001 - any pickling failure: fall back to datasets' own (slow) hashing
        return None
