"""`manyheads env`: versions and hardware, for bug reports."""

from __future__ import annotations

import argparse
import os
import platform

HELP = "Print versions of manyheads and its stack, and the available hardware."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def describe() -> dict[str, str]:
    import accelerate
    import datasets
    import torch
    import transformers

    from .. import __version__

    info = {
        "manyheads": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
        "cuda available": str(torch.cuda.is_available()),
    }
    if torch.cuda.is_available():
        info["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        info["bf16 supported"] = str(torch.cuda.is_bf16_supported())
    return info


def run(args: argparse.Namespace, extra: list[str]) -> int:
    for key, value in describe().items():
        print(f"{key + ':':<16}{value}")
    return 0
