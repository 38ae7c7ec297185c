"""The dependency wheels the offline Kaggle package carries, and what the install may change.

They are the closure of the project's runtime requirements (pyproject.toml, with the ``lora``
extra), at the versions this environment runs, minus what every Kaggle GPU image has (torch,
torchvision, numpy, pandas, pillow, scikit-learn, OpenCV and what those need). pip keeps an
installed distribution that satisfies a requirement, so a carried wheel is used only where the
image lacks the package, or has one older than the project's floor (``floors``: the build says
which). Binary wheels come for each CPython a Kaggle image may run (``PYTHONS``).

``python -m src.kaggle_wheels --out .venv/wheels`` downloads them (``make .venv/.installed``);
the package build then needs no network.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from ..core.errors import UserError

REPO = Path(__file__).resolve().parents[2]
# What every Kaggle GPU image has: the package takes them, and what they need, from the image.
IMAGE_HAS = ("torch", "torchvision", "numpy", "pandas", "pillow", "scikit-learn", "opencv-python-headless")
PYTHONS = ("3.11", "3.12", "3.13")  # requires-python >= 3.11
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
EXTRAS = ("lora",)  # peft for members trained with --lora-rank


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: Path = REPO / "pyproject.toml") -> list[Requirement]:
    """The project's runtime requirements, its extras' included."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = project["dependencies"] + [r for e in EXTRAS for r in project.get("optional-dependencies", {}).get(e, [])]
    return [Requirement(line) for line in lines]


def floors(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The requirements with a lower bound: an image's older version is upgraded, because the code
    cannot run with it (pyproject.toml's comments say why)."""
    return [str(r) for r in requirements(pyproject) if any(s.operator in (">=", ">", "==", "~=") for s in r.specifier)]


def _wanted(req: Requirement, extras: set[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""}))


def closure(roots: list[Requirement]) -> dict[str, str]:
    """Canonical name -> installed version of ``roots`` and all they need in this environment
    (markers evaluated for this interpreter, extras followed)."""
    seen: dict[str, str] = {}
    todo = [(canon(r.name), set(r.extras)) for r in roots if _wanted(r, set())]
    while todo:
        name, extras = todo.pop()
        if name in seen and not extras:
            continue
        try:
            seen[name] = md.version(name)
        except md.PackageNotFoundError:
            raise UserError(f"{name} is not installed here; run make .venv/.installed") from None
        todo += [(canon(r.name), set(r.extras)) for r in map(Requirement, md.requires(name) or [])
                 if _wanted(r, extras) and canon(r.name) not in seen]  # fmt: skip
    return seen


def carried() -> dict[str, str]:
    """Name -> version of each distribution the package carries a wheel of."""
    image = closure([Requirement(n) for n in IMAGE_HAS])
    return {n: v for n, v in sorted(closure(requirements()).items()) if n not in image}


def _wheel_name_version(whl: Path) -> tuple[str, str]:
    name, version = whl.name.split("-")[:2]
    return canon(name), version


def _serves(whl: Path, python: str) -> bool:
    """Whether the wheel installs on CPython ``python`` ("3.12"): pure, for that version, or abi3 of an earlier one."""
    tags, abi = whl.name.split("-")[-3:-1]
    want = int(python.replace(".", ""))
    for tag in tags.split("."):
        if tag.startswith("py3") or (tag.startswith("cp3") and (int(tag[2:]) == want or (abi == "abi3" and
                                                                                        int(tag[2:]) <= want))):
            return True
    return False


def wheels_for(wheels_dir: Path, pins: dict[str, str]) -> list[Path]:
    """The wheels of ``pins`` in ``wheels_dir``, for every CPython of ``PYTHONS``; anything missing
    is one line with the fix."""
    have: dict[str, list[Path]] = {}
    for whl in sorted(wheels_dir.glob("*.whl")) if wheels_dir.is_dir() else []:
        name, version = _wheel_name_version(whl)
        if pins.get(name) == version:
            have.setdefault(name, []).append(whl)
    missing = []
    for name, version in pins.items():
        lacking = [py for py in PYTHONS if not any(_serves(w, py) for w in have.get(name, []))]
        missing += [f"{name}=={version} for CPython {', '.join(lacking)}"] if lacking else []
    if missing:
        raise UserError(f"{wheels_dir}: no wheel of {'; '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; "
                        "run make .venv/.installed (it downloads them once)")  # fmt: skip
    return [w for ws in have.values() for w in ws]


def download(dest: Path) -> list[Path]:
    """Download the carried wheels (no dependencies: the closure is explicit) for each CPython."""
    pins = carried()
    dest.mkdir(parents=True, exist_ok=True)
    for version in PYTHONS:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
               "--only-binary=:all:", "--python-version", version, "--implementation", "cp", "-d", str(dest)]
        cmd += [a for p in PLATFORMS for a in ("--platform", p)] + [f"{n}=={v}" for n, v in pins.items()]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise UserError(f"pip download for CPython {version} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return wheels_for(dest, pins)
