"""Every benchmark study in sequence, one fresh process each: the one command behind bench/RESULTS.md.

    HF_HUB_OFFLINE=1 python bench/run_all.py --data_dir ../shared/data

Studies, in this order (cheapest first, so that a long quality study cannot starve the others):
throughput.py (study 2), inference.py (study 3), balancing.py (study 4: balancing overheads), monitor.py
(study 4: monitor overheads), sharing.py (study 7: hard vs LoRA vs hybrid
sharing) and quality.py (study 1). Each appends its own section to the results file. The common options are
passed on to every script that accepts them (read from its --help), so a study with fewer options still runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import _common as bc

STUDIES: dict[str, str] = {
    "throughput": "throughput.py",
    "inference": "inference.py",
    "balancing": "balancing.py",
    "monitor": "monitor.py",
    "sharing": "sharing.py",
    "quality": "quality.py",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bc.parser(__doc__)
    parser.add_argument("--data_dir", default=str(bc.DEFAULT_DATA_DIR), help="the GLUE data folder")
    parser.add_argument("--model", default=None, help="encoder folder or Hub id (default: each script's)")
    parser.add_argument("--results", default=None,
                        help="results file for every study (default: each script's: bench/RESULTS.md, or "
                             "bench/out/RESULTS-quick.md with --quick)")
    parser.add_argument("--studies", nargs="+", default=list(STUDIES), choices=list(STUDIES))
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="every study's tiny smoke settings")
    size.add_argument("--full", action="store_true", help="GPU-size settings where a study has them (quality)")
    parser.add_argument("--no_write", action="store_true", help="studies print only")
    parser.add_argument("--keep_going", action="store_true", help="run the next study after a failed one")
    parser.add_argument("--dry_run", action="store_true", help="print the commands; run nothing")
    return parser.parse_args(argv)


def accepted(script: Path) -> str:
    """The script's --help text (cheap: the scripts parse options before importing torch)."""
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""


def command(script: Path, args: argparse.Namespace) -> list[str]:
    options = accepted(script)
    flags: list[str] = []
    for name, value in (("--data_dir", args.data_dir), ("--model", args.model), ("--results", args.results)):
        if value is not None and name in options:
            flags += [name, value]
    for name in ("--quick", "--full", "--no_write"):
        if getattr(args, name[2:]) and name in options:
            flags.append(name)
    return [sys.executable, str(script), *flags]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = []
    failed = False
    for study in args.studies:
        script = bc.BENCH / STUDIES[study]
        cmd = command(script, args)
        shown = " ".join(["python", str(Path("bench") / script.name), *cmd[2:]])
        print(f"==> {study}: {shown}", flush=True)
        if args.dry_run:
            continue
        start = time.perf_counter()
        code = subprocess.run(cmd).returncode
        minutes = (time.perf_counter() - start) / 60
        summary.append(f"{study:10s} exit {code}, {minutes:.1f} min")
        if code != 0:
            failed = True
            if not args.keep_going:
                break
    if summary:
        print("\n" + "\n".join(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
