"""The examples in docstrings and the README run as written."""

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import evorl_nb

MODULES = sorted(m.name for m in pkgutil.walk_packages(evorl_nb.__path__, "evorl_nb."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_readme_python_blocks_run():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(blocks) >= 3
    scope: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["mine"].equation() == "δ^2 + 0.2*Q(s_t, a_t)"


def test_public_functions_have_docstrings():
    missing = []
    for name in MODULES:
        mod = importlib.import_module(name)
        for attr in getattr(mod, "__all__", []):
            obj = getattr(mod, attr)
            if callable(obj) and not (obj.__doc__ or "").strip():
                missing.append(f"{name}.{attr}")
    assert not missing, missing
