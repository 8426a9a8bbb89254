"""The README's Python snippet and every docstring example under attnlens/ and dashboard/ run, as written.

* **README.md**: its ```` ```python ```` blocks run in order, in one namespace, in a fresh working directory (the
  snippet writes ``runs/...``). It loads the embedded default model, offline. A trailing comment that is a Python
  literal (``golden = run.token_positions("golden")  # [6]``) is a claim, and is checked.
* **``>>>`` examples**: every docstring of every ``.py`` file (module, classes, functions, methods; found by parsing
  the source, so nothing is imported for files without examples) runs under ``doctest`` in its module's namespace,
  each docstring in its own fresh working directory. No example may be skipped (``+SKIP``).
* **``::`` literal blocks** without ``>>>`` that compile as Python run with ``exec`` in a copy of their module's
  namespace plus ``attnlens`` (the name every example assumes imported). Blocks that do not compile are layouts and
  shell commands; blocks that compile but are pseudo-code are listed in :data:`PSEUDOCODE` with the reason.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import attnlens

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("attnlens", "dashboard")

#: (docstring owner, how the block starts) → why it is not run
PSEUDOCODE = {
    ("attnlens.methods.base", "out = forward_and_loss(z)"):
        "the sampler's refinement loop written out; forward_and_loss and update are the sampler's internals",
}


@dataclass(frozen=True)
class Docstring:
    module: str  # dotted module name
    owner: str  # dotted name of the module, class or function the docstring belongs to
    path: Path
    lineno: int  # line of the docstring in the file
    text: str

    @property
    def id(self) -> str:
        return self.owner


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def docstrings() -> list[Docstring]:
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            module = module_name(path)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

            def visit(node, owner):
                doc = ast.get_docstring(node, clean=True) if isinstance(
                    node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) else None
                if doc:
                    lineno = node.body[0].lineno if not isinstance(node, ast.Module) else 1
                    found.append(Docstring(module, owner, path, lineno, doc))
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                        visit(child, f"{owner}.{child.name}")

            visit(tree, module)
    return found


def literal_blocks(text: str) -> list[str]:
    """The reST literal blocks of a docstring: the indented lines after a line ending in ``::``, dedented."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if not line.rstrip().endswith("::"):
            continue
        base = len(line) - len(line.lstrip())
        body = []
        for nxt in lines[i + 1:]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= base:
                break
            body.append(nxt)
        code = textwrap.dedent("\n".join(body)).strip("\n")
        if code:
            blocks.append(code)
    return blocks


def is_python(code: str) -> bool:
    try:
        compile(code, "<block>", "exec")
    except SyntaxError:
        return False
    return True


DOCSTRINGS = docstrings()
DOCTESTS = [d for d in DOCSTRINGS if doctest.DocTestParser().get_examples(d.text)]
BLOCKS = [(d, code) for d in DOCSTRINGS for code in literal_blocks(d.text) if ">>>" not in code and is_python(code)]


def pseudocode(doc: Docstring, code: str) -> tuple[str, str] | None:
    return next((key for key in PSEUDOCODE if key[0] == doc.owner and code.startswith(key[1])), None)


RUN_BLOCKS = [(d, code) for d, code in BLOCKS if pseudocode(d, code) is None]


def readme_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(encoding="utf-8"), re.S | re.M)


@pytest.fixture(autouse=True)
def one_thread():
    """The small models run several times faster on one thread, above all on a busy machine (as test_analysis)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def registry_restored():
    """Examples register methods ("mass-on-noun", "mine"); take them out again so other tests see the built-ins."""
    attnlens.available_methods()  # the built-ins register lazily: load them before the snapshot
    registry = sys.modules[attnlens.register_method.__module__]._REGISTRY
    saved = dict(registry)
    yield
    registry.clear()
    registry.update(saved)


# ------------------------------------------------------------------------------------------------- the collection
def test_examples_are_collected_and_none_skipped():
    owners = {d.owner for d in DOCTESTS}
    # the public objects whose docstrings promise examples are among them, wherever their modules move
    for obj in (attnlens.Run, attnlens.sample):
        assert f"{obj.__module__}.{obj.__qualname__}" in owners, obj
    assert {attnlens.load_pipeline.__module__, attnlens.Recorder.__module__} <= owners
    assert len(DOCTESTS) >= 10
    assert any(d.owner == "attnlens" for d, _ in RUN_BLOCKS), "the package docstring's workflow is not collected"
    assert len(readme_blocks()) >= 2
    skipped = [f"{d.owner}: {e.source.strip()}" for d in DOCTESTS for e in doctest.DocTestParser().get_examples(d.text)
               if e.options.get(doctest.SKIP)]
    assert skipped == []
    stale = set(PSEUDOCODE) - {pseudocode(d, c) for d, c in BLOCKS}
    assert not stale, "PSEUDOCODE names a block that no longer exists"


def test_literal_block_extraction():
    text = "Intro::\n\n    a = 1\n    b = a + 1\n\nLayout::\n\n    RUN/\n      manifest.json\n\nprose after"
    blocks = literal_blocks(text)
    assert blocks == ["a = 1\nb = a + 1", "RUN/\n  manifest.json"]
    assert [is_python(b) for b in blocks] == [True, False]


# ------------------------------------------------------------------------------------------------------- running
def params(items: list[tuple]) -> list:
    """One test per docstring (or literal block), named after its owner."""
    out = []
    for item in items:
        doc, code = item[0], item[-1] if len(item) > 1 else item[0].text
        name = doc.id if len(item) == 1 else f"{doc.id}:{code.splitlines()[0][:40]}"
        out.append(pytest.param(*item, id=name))
    return out


@pytest.mark.parametrize("doc", params([(d,) for d in DOCTESTS]))
def test_docstring_examples(doc: Docstring, tmp_path, monkeypatch, registry_restored):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(doc.module)
    test = doctest.DocTestParser().get_doctest(doc.text, dict(vars(module)), doc.owner, str(doc.path), doc.lineno - 1)
    report = []
    runner = doctest.DocTestRunner(optionflags=0)
    result = runner.run(test, out=report.append)
    assert result.attempted == len(test.examples) and result.failed == 0, "".join(report)


@pytest.mark.parametrize("doc, code", params(RUN_BLOCKS))
def test_docstring_python_blocks(doc: Docstring, code: str, tmp_path, monkeypatch, registry_restored):
    monkeypatch.chdir(tmp_path)
    namespace = {**vars(importlib.import_module(doc.module)), "attnlens": attnlens}
    exec(compile(code, f"{doc.path}:{doc.owner}", "exec"), namespace)  # noqa: S102  (our own documentation)


def literal_claims(code: str) -> dict[str, object]:
    """``name = ...  # <python literal>`` lines of a snippet (top level only): the values the comments promise."""
    claims = {}
    for line in code.splitlines():
        m = re.match(r"^(\w+) = .*?#\s*(.+?)\s*$", line)
        if m:
            try:
                claims[m.group(1)] = ast.literal_eval(m.group(2))
            except (ValueError, SyntaxError):
                pass
    return claims


def test_literal_claims_parsing():
    code = 'layer = run.layers[0]   # "down.attn2"\nx = f(1)   # (sample, head)\n  y = 2  # [3]\ng = h()  # [6]'
    assert literal_claims(code) == {"layer": "down.attn2", "g": [6]}


def test_readme_python_snippet(tmp_path, monkeypatch, registry_restored):
    monkeypatch.chdir(tmp_path)
    blocks = readme_blocks()
    namespace: dict[str, object] = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102
    claims = {k: v for code in blocks for k, v in literal_claims(code).items()}
    assert {"layer", "golden"} <= claims.keys()  # the README's `# "down_blocks..."` and `# [6]`
    assert {k: namespace[k] for k in claims} == claims
    maps = namespace["maps"]  # "(sample, head, token, y, x), float32"
    assert maps.ndim == 5 and maps.dtype == np.float32
    assert {"step", "phase", "iteration", "y", "x"} <= set(namespace["ds"].dims)
    runs = sorted(attnlens.find_runs(tmp_path / "runs"))
    assert [p.name for p in runs] == ["crown-syngen", "mine", "plain"]
    opened = {p.name: attnlens.open_run(p) for p in runs}
    assert all(r.complete for r in opened.values())
    assert opened["crown-syngen"].manifest["method"]["name"] == "syngen"
    assert opened["mine"].manifest["method"]["name"] == "mass-on-noun"
    assert "peak" in opened["mine"].scalars()  # the custom loss's extra term is recorded
    assert opened["plain"].image() is not None  # rec.save_images
    assert inspect.isfunction(namespace["mass_on_noun"])
