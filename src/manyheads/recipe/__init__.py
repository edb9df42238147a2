"""The YAML recipe on top of the library: config file -> task objects, `MultiTaskTrainingArguments`, data, trainer.

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
from .config import DataConfig, RunConfig, TaskEntry, build_config, collect_config, load_config, read_yaml
from .sections import BalancingConfig, DiagnosticsConfig, FreezeConfig, SamplingConfig

__all__ = ["BalancingConfig", "DataConfig", "DiagnosticsConfig", "FreezeConfig", "PreparedData", "RunConfig",
           "SamplingConfig", "TaskEntry", "build_callbacks", "build_config", "build_model", "build_trainer",
           "check_model_folder", "collect_config", "load_config", "plan_table", "prepare_data", "read_yaml"]
