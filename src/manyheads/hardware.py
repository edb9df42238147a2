"""What the machine offers for mixed precision, asked once per decision and forceable in tests.

Why this exists: `TrainingArguments(bf16=True)` refuses a machine without a GPU unless `use_cpu` is set, and on a
CPU bf16 autocast pays only where the CPU has bf16 matrix units (Intel AMX: 1.5-2x the samples/s of fp32 on MiniLM
here; on CPUs without them it ran at about 0.45x). Every branch below is a plain function so that a test can force
it with `monkeypatch` and exercise the branch the machine at hand does not take (see tests/test_precision.py).
"""

from __future__ import annotations

import torch


def has_accelerator() -> bool:
    """A GPU (or other device `Trainer` trains on instead of the CPU) is available."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    xpu, mps = getattr(torch, "xpu", None), getattr(torch.backends, "mps", None)
    return (torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())
            or bool(mps is not None and mps.is_available()))


def has_fp16_device() -> bool:
    """A CUDA or XPU device: where fp16 autocast (and its loss scaling) runs; elsewhere fp16=True would train fp32."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())


def cpu_has_bf16_matrix_units() -> bool:
    """The CPU has AMX tiles (Intel Sapphire Rapids and later): bf16 matrix products run several times faster
    than fp32 ones. AVX512-BF16 alone converts, it does not make autocast pay."""
    # PRIVATE torch API: `torch.cpu._is_amx_tile_supported` / `_init_amx` are the only AMX probe torch has. Risk: a
    # rename makes this False (fp32 picked, slower, still right); the except below keeps that from failing.
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_amx_tile_supported() and cpu._init_amx())
    except (AttributeError, RuntimeError):
        return False


def accelerator_has_bf16() -> bool:
    """The GPU (or other accelerator) supports bf16, as `TrainingArguments` itself decides."""
    from transformers.utils import is_torch_bf16_gpu_available

    return bool(is_torch_bf16_gpu_available())


def bf16_is_fast() -> bool:
    """Whether bf16 autocast is the faster precision here: a GPU with bf16 (Ampere and later), or, on a machine
    without a GPU, a CPU with AMX. `bf16="auto"` in `MultiTaskTrainingArguments` resolves to this."""
    if has_accelerator():
        return accelerator_has_bf16()
    return cpu_has_bf16_matrix_units()


def precision_reason(bf16: bool) -> str:
    """One line saying why `bf16` is (or is not) the fast choice on this machine, for logs and the demo."""
    if has_accelerator():
        return "the GPU supports bf16" if accelerator_has_bf16() else "the GPU has no bf16 support"
    units = cpu_has_bf16_matrix_units()
    if bf16:
        return ("CPU autocast; this CPU has AMX bf16 matrix units" if units else
                "CPU autocast; this CPU has no AMX, where bf16 usually runs slower than fp32")
    return ("this CPU has AMX, bf16 would be faster (bf16: auto picks it)" if units else
            "this CPU has no AMX bf16 matrix units, where fp32 is faster")


__all__ = ["accelerator_has_bf16", "bf16_is_fast", "cpu_has_bf16_matrix_units", "has_accelerator", "has_fp16_device",
           "precision_reason"]
