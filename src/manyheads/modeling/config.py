"""`MultiTaskConfig`: the encoder's config plus one spec per task, saved as one `config.json`."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig


class MultiTaskConfig(PretrainedConfig):
    """Configuration of a `MultiTaskModel`.

    Args:
        encoder (`dict`): the shared encoder's config (`PretrainedConfig.to_dict()`, with its `model_type`).
        tasks (`list[dict]`): one spec per task (`TaskConfig.spec()`: name, type, labels, options, ...).
        sharing (`dict`): how the tasks share the encoder (`Sharing.to_dict()`: mode and LoRA settings); absent in
            folders saved before soft sharing existed, which are `hard`.
    """

    model_type = "manyheads"

    def __init__(self, encoder: dict[str, Any] | None = None, tasks: list[dict[str, Any]] | None = None,
                 sharing: dict[str, Any] | None = None, **kwargs):
        self.encoder = dict(encoder or {})
        self.tasks = list(tasks or [])
        self.sharing = dict(sharing or {"mode": "hard"})
        super().__init__(**kwargs)

    def encoder_config(self) -> PretrainedConfig:
        """The encoder's own config object, rebuilt from the stored dict."""
        values = dict(self.encoder)
        return AutoConfig.for_model(values.pop("model_type"), **values)

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.get("hidden_size") or self.encoder.get("d_model") or self.encoder["dim"])

    @property
    def task_names(self) -> list[str]:
        return [t["name"] for t in self.tasks]
