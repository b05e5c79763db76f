"""The examples in gnn_lic's docstrings run and show what they give (doctest)."""

import doctest
import importlib
import pkgutil

import pytest

import gnn_lic

MODULES = sorted(m.name for m in pkgutil.walk_packages(gnn_lic.__path__, "gnn_lic."))


def _examples(name):
    return [t for t in doctest.DocTestFinder().find(importlib.import_module(name)) if t.examples]


def test_the_docstrings_hold_examples():
    assert sum(len(_examples(name)) for name in MODULES) >= 20


@pytest.mark.parametrize("name", [name for name in MODULES if _examples(name)])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (output above)"
