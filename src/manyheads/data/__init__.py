"""Data stages: the user's datasets to model-ready ones (`datasets.py`), which task each micro-batch holds
(`strategies.py`, `samplers.py`), padding per batch (`collator.py`). Reading files is the recipe's job."""
