"""Mutation check of the trainer's flags: a test must fail when a flag's effect is removed.

For every flag of the user's guide (``../shared/seed/flags.txt``, else the copy beside this file)
and every flag added beyond it (``extra_flags.txt``)
the check pins the flag's TrainConfig field for the project's code (``sitecustomize.py``): a
value flag to its default, ``--x`` to False and ``--no-x`` to True. It then runs the tests marked
``@pytest.mark.guards("--x")`` and expects one to fail. A flag survives when its tests pass
under the mutant, or when no test guards it. Before the mutants, the guard tests must pass.

    python tests/mutation/check.py [--flags lr seed] [--jobs 2]    (make mutation)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from src.core.config import build_parser, default_of  # noqa: E402

GUIDE_FLAGS = [ROOT.parent / "shared" / "seed" / "flags.txt", HERE / "flags.txt"]
EXTRA_FLAGS = HERE / "extra_flags.txt"  # flags added beyond the guide
FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


def guide_flags() -> list[str]:
    path = next(p for p in GUIDE_FLAGS if p.is_file())
    return [line.strip() for line in path.read_text().splitlines() if line.strip().startswith("--")]


def extra_flags() -> list[str]:
    return [line.strip() for line in EXTRA_FLAGS.read_text().splitlines() if line.strip().startswith("--")]


def mutant(flag: str) -> tuple[str, object]:
    """The field a flag sets and the value that removes the flag's effect."""
    action = next(a for a in build_parser()._actions if flag in a.option_strings)
    if action.const is True:  # store_true
        return action.dest, False
    if action.const is False:  # store_false
        return action.dest, True
    return action.dest, default_of(action.dest)


def pytest(flag: str | None, env_extra: dict[str, str]) -> tuple[int, str, float]:
    env = {**os.environ, **env_extra, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
           "DVC_NO_ANALYTICS": "1", "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:xdist", f"--guards={flag or 'any'}"]
    cmd += ["-x"] if flag else []
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t


def run_mutant(flag: str) -> dict:
    name, value = mutant(flag)
    env = {"FLAG_MUTANT": f"{name}={json.dumps(value)}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    rc, out, secs = pytest(flag, env)
    caught = FAILED.findall(out)
    verdict = {0: "SURVIVED", 1: "caught", 5: "SURVIVED (no guard test)"}.get(rc, f"ERROR rc={rc}")
    if rc == 1 and not caught:
        verdict = "ERROR (no failed test named)"
    return {"flag": flag, "pinned": f"{name} = {value!r}", "verdict": verdict,
            "test": caught[0] if caught else "", "seconds": round(secs, 1), "tail": out[-800:] if rc not in (0, 1) else ""}


def table(rows: list[dict]) -> str:
    lines = ["| flag | pinned to | verdict | failing test | s |", "|---|---|---|---|---|"]
    lines += [f"| `{r['flag']}` | `{r['pinned']}` | {r['verdict']} | `{r['test']}` | {r['seconds']} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flags", nargs="+", help="only these flags, without their dashes: lr use-huber (default: the "
                   "guide's and extra_flags.txt's)")
    p.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    p.add_argument("--out", help="the table (default: benchmarks/results/flag_mutation.md for all flags, "
                   "flag_mutation_subset.md for --flags, so a check of a few never overwrites the full table)")
    args = p.parse_args(argv)
    args.out = args.out or str(ROOT / "benchmarks" / "results" / (
        "flag_mutation_subset.md" if args.flags else "flag_mutation.md"))
    flags = [f"--{f.lstrip('-')}" for f in args.flags] if args.flags else guide_flags() + extra_flags()

    rc, out, secs = pytest(None, {})
    if rc != 0:
        print(out[-3000:])
        print(f"the guard tests fail without any mutant (rc {rc}); fix them first", file=sys.stderr)
        return 2
    print(f"guard tests pass unmutated ({secs:.0f} s); testing {len(flags)} mutants", flush=True)

    rows = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(run_mutant, flags):
            rows.append(r)
            print(f"{r['flag']:32s} {r['verdict']:26s} {r['test']} ({r['seconds']} s)", flush=True)
            if r["tail"]:
                print(r["tail"])
    survived = [r["flag"] for r in rows if r["verdict"] != "caught"]
    text = table(rows) + f"\n\n{len(survived)} of {len(rows)} flags survive" + (
        f": {' '.join(survived)}\n" if survived else "\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print("\n" + text + f"\ntable: {args.out}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
