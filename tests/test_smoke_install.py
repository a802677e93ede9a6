"""Smoke test: the environment installed and the core dependencies import."""

import importlib


def test_core_dependencies_import():
    import gymnasium
    import minigrid
    import networkx
    import sympy
    import torch

    assert torch.__version__.startswith("2."), torch.__version__
    importlib.import_module("torch.cuda")
    assert callable(torch.cuda.is_available)
    for mod in (sympy, networkx, gymnasium, minigrid):
        assert mod.__version__
