"""Soft sharing (GLUE-mini): hard vs LoRA vs hybrid multi-task models at equal examples seen (not a test).

Study 7 (issue 15): the quality study (bench/quality.py) with the configurations `single`, `mt_proportional`,
`mt_lora` and `mt_hybrid`; every quality.py option applies (bench/README.md, study 7).

    HF_HUB_OFFLINE=1 python bench/sharing.py --data_dir ../shared/data --scale 0.67
"""

from __future__ import annotations

import sys

import quality

if __name__ == "__main__":
    sys.exit(quality.main(presets={"quick": {"cache_dir": str(quality.bc.OUT_DIR / "sharing-quick")}},
                          defaults=quality.SHARING, script="sharing.py"))
