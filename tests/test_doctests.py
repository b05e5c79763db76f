"""The examples in gnn_lic's docstrings run and show what they give (doctest)."""

import doctest
import importlib
import pkgutil

import pytest

import gnn_lic

#: module name -> how many of its docstrings hold examples
EXAMPLES = {m.name: sum(1 for t in doctest.DocTestFinder().find(importlib.import_module(m.name)) if t.examples)
            for m in pkgutil.walk_packages(gnn_lic.__path__, "gnn_lic.")}


def test_the_docstrings_hold_examples():
    assert sum(EXAMPLES.values()) >= 20


@pytest.mark.parametrize("name", sorted(name for name, count in EXAMPLES.items() if count))
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (output above)"
