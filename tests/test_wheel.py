"""The project's wheel installs its code as the package ``pasture_biomass`` (pyproject.toml maps
src/ to it), never as a top-level ``src``, and holds every subpackage of src/."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.project_copy import copy_project

REPO = Path(__file__).resolve().parents[1]


def build_wheel(repo: Path, dest: Path) -> Path:
    """The wheel of ``repo``, built offline with this environment's setuptools."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                           "--no-build-isolation", "--no-index", "-w", str(dest), str(repo)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return next(dest.glob("pasture_biomass-*.whl"))


def wheel_packages(wheel: Path) -> tuple[set[str], set[str]]:
    """(top-level names, dotted packages) of the wheel's Python files."""
    names = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")]
    tops = {n.split("/", 1)[0] for n in names}
    packages = {n.rpartition("/")[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    return tops, packages


def expected_packages(repo: Path) -> set[str]:
    src = repo / "src"
    return {".".join(["pasture_biomass", *p.parent.relative_to(src).parts]) for p in src.rglob("__init__.py")}


def check(repo: Path, dest: Path) -> None:
    tops, packages = wheel_packages(build_wheel(repo, dest))
    assert tops == {"pasture_biomass"}, f"top-level packages of the wheel: {sorted(tops)}"
    assert "src" not in tops
    assert packages == expected_packages(repo), sorted(packages ^ expected_packages(repo))


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the project: a build leaves build/ and *.egg-info behind, in the copy."""
    return copy_project(tmp_path / "repo")


def test_the_wheel_installs_src_as_pasture_biomass_only(project, tmp_path):
    check(project, tmp_path / "wheel")


def test_the_check_fails_on_a_wheel_that_installs_src(project, tmp_path):
    """The old pyproject.toml (``packages.find include = ["src*"]``) shipped a top-level ``src``."""
    text = (project / "pyproject.toml").read_text()
    start, end = text.index("[tool.setuptools]"), text.index("[tool.pytest")
    old = '[tool.setuptools.packages.find]\ninclude = ["src*"]\n\n'
    (project / "pyproject.toml").write_text(text[:start] + old + text[end:])
    with pytest.raises(AssertionError, match="top-level packages of the wheel"):
        check(project, tmp_path / "wheel")


def test_the_installed_code_imports_nothing_by_the_name_src():
    """Imports inside the package are relative: no ``src.`` import would resolve once installed."""
    bad = [f"{p.relative_to(REPO)}:{i}" for p in (REPO / "src").rglob("*.py")
           for i, line in enumerate(p.read_text().splitlines(), 1)
           if line.lstrip().startswith(("from src", "import src"))]  # fmt: skip
    assert not bad, bad
