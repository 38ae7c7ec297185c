"""The project's source files a command runs: its module and every project module it imports,
directly or not (also the imports inside functions). The workflow gives each rule the files of
the command it runs as inputs, so a change in one reruns exactly the jobs that run it; Snakemake's
own code trigger sees only `run:` blocks and scripts, not `python -m` commands.

Static (ast), so nothing is imported: the workflow calls it while it parses.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(__file__).resolve().parents[1].name  # "src"


def _path(module: str) -> Path | None:
    """The file of a project module name (``src.a.b``), or None when it is not the project's."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*parts)
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Module names that ``path`` imports (absolute, and relative ones resolved), with the
    ``from X import name`` candidates ``X.name`` (a name may be a submodule)."""
    here = _module(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


@cache
def files_of(module: str) -> tuple[str, ...]:
    """Sorted paths (relative to the repository root) of ``module`` and all it imports of the
    project, package ``__init__`` files included."""
    start = _path(module)
    if start is None:
        raise ValueError(f"{module} is not a module of the project")
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        name = _module(path)
        parents = [_path(".".join(name.split(".")[:i])) for i in range(1, name.count(".") + 1)]
        todo += [p for p in parents if p is not None]
        todo += [p for p in map(_path, _imports(path)) if p is not None]
    return tuple(sorted(str(p.relative_to(ROOT)) for p in seen))
