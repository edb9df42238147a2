"""manyheads: one shared encoder, a head per task, trained on the real `transformers.Trainer`.

```python
from manyheads import Classification, MultiTaskModel, MultiTaskTrainer, MultiTaskTrainingArguments, Regression
```
The YAML recipe and the command line live in `manyheads.recipe` and `manyheads.cli`, on top of this API.
"""

from transformers import AutoConfig, AutoModel

from .balancing import AGGREGATORS, WEIGHTINGS, LossWeighting
from .data.collator import MultiTaskCollator
from .data.strategies import SAMPLING_STRATEGIES, SamplingStrategy
from .errors import ConfigError
from .hardware import bf16_is_fast
from .modeling.adapters import SHARING_MODES, Sharing
from .modeling.config import MultiTaskConfig
from .modeling.model import MultiTaskModel, MultiTaskOutput
from .serving.predictor import MultiTaskPredictor
from .tasks import (
    TASK_TYPES,
    Classification,
    MultiLabel,
    QuestionAnswering,
    Regression,
    Seq2Seq,
    SequenceTask,
    Task,
    TokenClassification,
)
from .trainer import MultiTaskTrainer
from .training.step_gate import NonFiniteLossError
from .training_args import MultiTaskTrainingArguments

AutoConfig.register("manyheads", MultiTaskConfig, exist_ok=True)
AutoModel.register(MultiTaskConfig, MultiTaskModel, exist_ok=True)

__version__ = "0.2.0"

__all__ = [
    "AGGREGATORS",
    "Classification",
    "ConfigError",
    "LossWeighting",
    "MultiLabel",
    "MultiTaskCollator",
    "MultiTaskConfig",
    "MultiTaskModel",
    "MultiTaskOutput",
    "MultiTaskPredictor",
    "MultiTaskTrainer",
    "MultiTaskTrainingArguments",
    "NonFiniteLossError",
    "QuestionAnswering",
    "Regression",
    "Seq2Seq",
    "SAMPLING_STRATEGIES",
    "SamplingStrategy",
    "SHARING_MODES",
    "Sharing",
    "SequenceTask",
    "TASK_TYPES",
    "Task",
    "TokenClassification",
    "WEIGHTINGS",
    "bf16_is_fast",
]
