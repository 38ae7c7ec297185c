"""Pins one TrainConfig field for every read made by the project's code (tests/mutation/check.py).

Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``, so the trainer under pytest,
torchrun workers and Snakemake jobs all see the same mutant. ``FLAG_MUTANT=field=<json value>``:
every attribute read of ``field`` from a file under the project's ``src/`` returns the value,
so the flag is parsed, printed and saved as given but acts as if it had not been given. Reads
from tests see the real value, so a test that only checks the parsed config cannot catch it.
"""

import importlib.abc
import importlib.machinery
import json
import os
import sys


class _PinOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, value):
        self.name, self.value = name, value

    def find_spec(self, fullname, path, target=None):
        if fullname != "src.core.config":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _pin(module, self.name, self.value)

        spec.loader.exec_module = exec_module
        return spec


def _pin(module, name: str, value) -> None:
    if name not in module.FIELDS:
        raise SystemExit(f"FLAG_MUTANT: {name!r} is not a TrainConfig field")
    src = os.path.dirname(os.path.dirname(os.path.abspath(module.__file__))) + os.sep  # src/, above src/core/
    getframe, read = sys._getframe, object.__getattribute__

    def __getattribute__(self, attr):
        if attr == name and getframe(1).f_code.co_filename.startswith(src):
            return value
        return read(self, attr)

    module.TrainConfig.__getattribute__ = __getattribute__


_spec = os.environ.get("FLAG_MUTANT")
if _spec:
    _name, _, _value = _spec.partition("=")
    sys.meta_path.insert(0, _PinOnImport(_name, json.loads(_value)))
