"""The package's layout (#26): the top level of src/ holds the command-line tools only, each short
(it parses and delegates); the library lives in subpackages; the training package reads in
functions short enough to read at once."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def test_the_top_level_of_src_holds_short_clis_only():
    found = {}
    for path in sorted(SRC.glob("*.py")):
        if path.name == "__init__.py":
            continue
        text = path.read_text()
        lines = len(text.splitlines())
        if 'if __name__ == "__main__":' not in text or lines > 80:
            found[path.name] = lines
    assert len(list(SRC.glob("*.py"))) > 10
    assert not found, f"not a CLI, or over 80 lines: {found}"


def test_no_function_of_the_training_package_is_over_60_lines():
    long = {}
    for path in sorted((SRC / "training").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long[f"{path.name}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert not long, long
