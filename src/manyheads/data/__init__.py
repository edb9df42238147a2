"""Data stages: loading (`loading.py`), one-task batch sampling (`samplers.py`), padding (`collator.py`)."""
