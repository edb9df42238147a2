"""Soft sharing (GLUE-mini): hard vs LoRA vs hybrid multi-task models at equal examples seen (not a test).

Study 7 (issue 15) is the quality study (bench/quality.py, built on `manyheads compare`) with the configurations
`single`, `mt_proportional` (hard sharing: the shared encoder trains, one head per task), `mt_lora` (the encoder
frozen, one LoRA adapter per task + its head; learning rate --lora_learning_rate) and `mt_hybrid` (the shared
encoder trains plus one LoRA adapter per task; the adapters at --adapter_learning_rate), every one trained on the
same subsets with proportional sampling and the same optimizer steps. Its section adds trainable and stored
parameters and seconds per step to the quality tables. Every quality.py option applies.

    HF_HUB_OFFLINE=1 python bench/sharing.py --data_dir ../shared/data --scale 0.67
"""

from __future__ import annotations

import sys

import quality

if __name__ == "__main__":
    sys.exit(quality.main(presets={"quick": {"cache_dir": str(quality.bc.OUT_DIR / "sharing-quick")}},
                          defaults=quality.SHARING, script="sharing.py"))
