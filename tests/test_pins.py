"""The pinned dependency range, and the private APIs of those dependencies that manyheads relies on.

Each private use is listed, with its upgrade risk, where it is made (grep "PRIVATE"). This file is the alarm: on a
transformers, accelerate, PEFT or torch outside what was tested, or one that renamed what manyheads reaches into,
it fails here, by name, instead of a run silently saving no balancing state or training on a slice of the data.
"""

from __future__ import annotations

import inspect
import re
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # the test extra installs tomli on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def requirement(name: str) -> Requirement:
    pool = PROJECT["dependencies"] + [r for extra in PROJECT["optional-dependencies"].values() for r in extra]
    found = [Requirement(r) for r in pool if Requirement(r).name == name]
    assert found, f"{name} is not a requirement in pyproject.toml"
    return found[0]


@pytest.mark.parametrize("name", ["transformers", "accelerate", "peft", "torch"])
def test_the_installed_release_is_inside_the_tested_pin(name):
    pin = requirement(name)
    installed = version(name).split("+")[0]
    assert pin.specifier.contains(installed, prereleases=True), (
        f"{name} {installed} is outside the tested range '{pin.specifier}' in pyproject.toml: run the suite on it, "
        "check the private uses listed in tests/test_pins.py, then widen the pin.")


@pytest.mark.parametrize("name", ["transformers", "accelerate"])
def test_the_core_pins_are_one_minor_release(name):
    """A pin as wide as a major release (`<6`) is what let an untested Trainer in before: keep it to the minor."""
    pin = requirement(name)
    bounds = {s.operator: s.version for s in pin.specifier}
    assert set(bounds) == {">=", "<"}, pin
    low, high = (tuple(int(x) for x in bounds[op].split(".")[:2]) for op in (">=", "<"))
    assert high == (low[0], low[1] + 1), f"{name}: '{pin.specifier}' spans more than one minor release"


def test_private_trainer_hooks_have_the_signatures_manyheads_overrides():
    from transformers import Trainer

    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    assert list(inspect.signature(Trainer._load_from_checkpoint).parameters)[:3] == ["self", "resume_from_checkpoint",
                                                                                     "model"]
    assert list(inspect.signature(Trainer._get_output_dir).parameters) == ["self", "trial"]
    assert list(inspect.signature(Trainer._prepare_inputs).parameters) == ["self", "inputs"]
    # Rotation reads args.save_total_limit at save time, and auto_find_batch_size keeps its size in _train_batch_size.
    assert "save_total_limit" in inspect.getsource(Trainer._save_checkpoint)
    assert "self._train_batch_size" in inspect.getsource(Trainer._update_auto_batch_size)


def test_accelerate_batch_sampler_shard_has_the_attributes_the_loader_sets():
    from accelerate.data_loader import BatchSamplerShard

    source = inspect.getsource(BatchSamplerShard)
    # The loader sets these two to make the wrapper a passthrough (and gives it the sampler's `set_epoch`).
    for name in ("self.num_processes = num_processes", "self.process_index = process_index"):
        assert name in source, f"accelerate's BatchSamplerShard no longer has {name} (manyheads.data.loader)"


def test_peft_lora_layers_keep_their_active_adapter_list_where_manyheads_switches_it():
    from peft.tuners.tuners_utils import BaseTunerLayer

    source = inspect.getsource(BaseTunerLayer)
    assert re.search(r"def active_adapters?\b", source) and "self._active_adapter" in source


def test_datasets_keeps_select_as_an_index_mapping():
    from datasets import Dataset

    data = Dataset.from_dict({"input_ids": [[1], [1, 2], [1, 2, 3]]})
    assert data._indices is None and data.select([2, 0])._indices is not None


def test_torch_has_the_amx_probe():
    import torch

    assert callable(torch.cpu._is_amx_tile_supported) and callable(torch.cpu._init_amx)


def test_no_private_accelerate_state_is_flipped_any_more():
    """The non-finite skip used to turn accelerate's private gradient-sync flag off; it now gates the optimizer and
    scheduler steps (manyheads.training.step_gate). Nothing in the package may go back to that flag."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "src").rglob("*.py")
                 if "_set_sync_gradients" in p.read_text(encoding="utf-8")]
    assert offenders == []
