"""Mutation testing of the core modules: would the test suite notice a bug?

mutmut (https://mutmut.readthedocs.io) copies the package into ``mutants/``, makes small changes
("mutants") to the code of the core modules (``<`` becomes ``<=``, a constant changes, an argument
goes missing, ...) and runs, for each mutant, the tests that reach the changed function. A mutant
the tests do not notice ("survived") is a behaviour no test pins. Which modules and which tests is
configured under ``[tool.mutmut]`` in pyproject.toml: the core modules, each against the tests that
mirror it.

A full run takes hours on two cores (some tests train the tiny model first), so ``--sample N``
runs a seeded random sample of the mutants instead and says so. Not part of CI.

Usage (from the repository root)::

    .venv/bin/pip install -c constraints.txt mutmut        # the pinned version
    .venv/bin/python tools/mutation_test.py --sample 150 --seed 0
    .venv/bin/python tools/mutation_test.py                # every mutant
    .venv/bin/mutmut show hisd_edge.atomic.x_write_text__mutmut_3   # one mutant's diff

It prints, per module, the mutants killed, survived and timed out, the kill rate, and the diff of
each survivor; ``--json`` writes the same as JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
MUTMUT_VERSION = "3.8.1"  # the generation step below uses mutmut's own functions; pinned in constraints.txt
# mutmut's status words -> how they count. A timeout is a kill (the mutant made a test hang, which
# CI would notice); "no tests" is a survivor (nothing runs that code).
KILLED = {"killed", "timeout", "caught by type check"}
NOT_RUN = {"not checked", "skipped", "check was interrupted by user"}

_GENERATE = """
import os
from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants
from mutmut.mutation.trampoline import set_mutant_under_test
set_mutant_under_test("mutant_generation")
os.makedirs("mutants", exist_ok=True)
copy_src_dir()
copy_also_copy_files()
create_mutants({jobs})
"""


def _mutmut() -> str:
    exe = shutil.which("mutmut") or str(Path(sys.executable).with_name("mutmut"))
    if not Path(exe).exists():
        sys.exit(
            f"mutmut is not installed: {sys.executable} -m pip install -c constraints.txt mutmut=={MUTMUT_VERSION}"
        )
    return exe


def tiny_checkpoint() -> Path:
    """The tests' tiny checkpoint (tests/conftest.py), trained once here instead of in every test
    session mutmut starts; the tests pick it up from HISD_EDGE_TEST_TINY_CHECKPOINT."""
    path = ROOT / "mutants" / "tiny-checkpoint.safetensors"
    if not path.exists():
        recipe = ["--arch", "tiny_cnn", "--epochs", "3", "--lr", "0.1", "--threads", "1", "--seed", "0"]
        subprocess.run(
            [sys.executable, "-m", "hisd_edge", "train", *recipe, "--no-progress", "--out", str(path)],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return path


def all_mutants(jobs: int) -> List[str]:
    """Every mutant name of the configured modules (generating ``mutants/`` if needed)."""
    subprocess.run([sys.executable, "-c", _GENERATE.format(jobs=jobs)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    names: List[str] = []
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        names.extend(json.loads(meta.read_text())["exit_code_by_key"])
    return names


def results() -> Dict[str, str]:
    """mutant name -> status, as mutmut recorded them."""
    out = subprocess.run([_mutmut(), "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True)
    status = {}
    for line in out.stdout.splitlines():
        name, sep, word = line.strip().rpartition(": ")
        if sep and name.startswith("hisd_edge."):
            status[name] = word
    return status


def module_of(name: str) -> str:
    """``hisd_edge.convert.verify.x_verify__mutmut_3`` -> ``hisd_edge/convert/verify.py``."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if "__mutmut_" in part and part.startswith(("x_", "xǁ")):  # x_function / xǁClassǁmethod
            return "/".join(parts[:i]) + ".py"
    return name


def report(names: List[str], status: Dict[str, str], sampled_of: int) -> Dict[str, object]:
    per_module: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name in names:
        per_module[module_of(name)][status.get(name, "not checked")] += 1
    rows = []
    for module, counts in sorted(per_module.items()):
        killed = sum(counts[s] for s in KILLED)
        run = sum(counts.values()) - sum(counts[s] for s in NOT_RUN)
        rows.append({"module": module, "mutants": run, "killed": killed, "counts": dict(counts)})
    total_run = sum(r["mutants"] for r in rows)
    total_killed = sum(r["killed"] for r in rows)
    survivors = sorted(n for n in names if status.get(n) not in KILLED | NOT_RUN)
    return {
        "mutants_total": sampled_of,
        "mutants_run": total_run,
        "sampled": len(names) < sampled_of,
        "killed": total_killed,
        "kill_rate": total_killed / total_run if total_run else None,
        "modules": rows,
        "survivors": survivors,
    }


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=None, help="run this many mutants, drawn at random (seeded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="mutants run in parallel (default 2)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--no-diffs", action="store_true", help="do not print the survivors' diffs")
    args = parser.parse_args(argv)

    exe = _mutmut()
    names = all_mutants(args.jobs)
    chosen = sorted(random.Random(args.seed).sample(names, args.sample)) if args.sample else names
    what = (
        f"a seeded sample (seed {args.seed}) of {len(chosen)} of {len(names)}" if args.sample else f"all {len(names)}"
    )
    print(f"mutation testing: {what} mutants of the modules in [tool.mutmut] (pyproject.toml)", flush=True)
    env = {**os.environ, "HISD_EDGE_TEST_TINY_CHECKPOINT": str(tiny_checkpoint())}
    command = [exe, "run", "--max-children", str(args.jobs)] + (chosen if args.sample else [])
    subprocess.run(command, cwd=ROOT, check=False, env=env)

    summary = report(chosen, results(), len(names))
    print()
    print(f"{'module':<36} {'mutants':>7} {'killed':>7} {'rate':>7}  other")
    for row in summary["modules"]:
        other = {k: v for k, v in row["counts"].items() if k != "killed"}
        rate = f"{100 * row['killed'] / row['mutants']:.1f}%" if row["mutants"] else "-"
        print(f"{row['module']:<36} {row['mutants']:>7} {row['killed']:>7} {rate:>7}  {other or ''}")
    rate = summary["kill_rate"]
    print(
        f"{'total':<36} {summary['mutants_run']:>7} {summary['killed']:>7} "
        f"{'-' if rate is None else f'{100 * rate:.1f}%':>7}  ({what} mutants; timeouts count as killed)"
    )
    if not args.no_diffs:
        for name in summary["survivors"]:
            shown = subprocess.run([exe, "show", name], cwd=ROOT, capture_output=True, text=True, check=False)
            print("\n" + shown.stdout.strip())
    if args.json:
        args.json.write_text(json.dumps({**summary, "seed": args.seed, "command": " ".join(sys.argv)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
