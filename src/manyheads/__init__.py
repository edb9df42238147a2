"""manyheads: one shared encoder, a head per task, trained on the real `transformers.Trainer`."""

from transformers import AutoConfig, AutoModel

from .config import (
    BalancingConfig,
    DataConfig,
    DiagnosticsConfig,
    FreezeConfig,
    RunConfig,
    SamplingConfig,
    TaskConfig,
    build_config,
    load_config,
)
from .errors import ConfigError
from .modeling.config import MultiTaskConfig
from .modeling.model import MultiTaskModel, MultiTaskOutput
from .tasks import TASK_TYPES, Task

AutoConfig.register("manyheads", MultiTaskConfig, exist_ok=True)
AutoModel.register(MultiTaskConfig, MultiTaskModel, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "BalancingConfig",
    "ConfigError",
    "DataConfig",
    "DiagnosticsConfig",
    "FreezeConfig",
    "MultiTaskConfig",
    "MultiTaskModel",
    "MultiTaskOutput",
    "RunConfig",
    "SamplingConfig",
    "TASK_TYPES",
    "Task",
    "TaskConfig",
    "build_config",
    "load_config",
]
