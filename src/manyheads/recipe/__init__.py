"""The YAML recipe on top of the library: config file -> task objects, `MultiTaskTrainingArguments`, raw data,
trainer.

Nothing in the library imports this package (an import-linter contract in pyproject.toml says so and the test
suite checks it); `manyheads.cli` is its user.
"""

from __future__ import annotations

from .build import (
           PreparedData,
           build_callbacks,
           build_model,
           build_trainer,
           check_model_folder,
           plan_table,
           prepare_data,
)
from .config import RunConfig, TaskEntry, build_config, collect_config, default_output_dir, load_config, read_yaml
from .loading import DataConfig
from .sections import DiagnosticsConfig, FreezeConfig

__all__ = ["DataConfig", "DiagnosticsConfig", "FreezeConfig", "PreparedData", "RunConfig", "TaskEntry",
           "build_callbacks", "build_config", "build_model", "build_trainer", "check_model_folder",
           "collect_config", "default_output_dir", "load_config", "plan_table", "prepare_data", "read_yaml"]
