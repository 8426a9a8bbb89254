"""The architecture as a test: the import graph of attnlens and dashboard modules has no cycle, and imports inside
functions are kept for what is optional or slow to import.

Every import counts, wherever it is written (module level or inside a function; ``if TYPE_CHECKING:`` blocks
and ``if __name__ == "__main__":`` script entries aside: they never run on import). A function-local import of a project module is allowed only at the CLI edge
(``attnlens.cli.*``, which loads the library lazily so that ``attnlens --help`` answers at once); elsewhere a
function-local import must be of a third-party package in ``OPTIONAL_OR_SLOW``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("attnlens", "dashboard")
#: third-party packages a library function may import lazily: optional extras (spacy models, the dashboard's
#: streamlit, xarray views, clusters and object storage) or imports that cost a second or more and only some
#: commands need (diffusers/transformers model loading, plotting, dataframes)
OPTIONAL_OR_SLOW = {
    "spacy", "streamlit", "xarray", "selenium", "ray", "fsspec", "s3fs", "boto3", "moto", "matplotlib", "plotly",
    "scipy", "sklearn", "skimage", "diffusers", "transformers", "accelerate", "huggingface_hub", "pandas", "pyarrow",
    "safetensors", "sentencepiece", "open_clip", "IPython", "anywidget", "build", "setuptools", "kaleido",
}
CLI_EDGE = ("attnlens.cli", "attnlens.__main__", "attnlens.demo")  # demo: `make demo` runs CLI commands


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


MODULES = _modules()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        # ``if TYPE_CHECKING:`` never runs; ``if __name__ == "__main__":`` runs only when the module is a script
        if isinstance(node, ast.If) and ("TYPE_CHECKING" in ast.unparse(node.test) or "__main__" in ast.unparse(node.test)):
            skip |= {id(n) for n in ast.walk(node)}
    return skip


def _targets(mod: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Project modules an import statement loads (its module, and names that are submodules)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = mod.split(".")
            if MODULES[mod].name != "__init__.py":
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        subs = [f"{prefix}.{a.name}" for a in node.names]
        # ``from pkg import sub`` loads the submodule; it reads pkg's own namespace (a real edge to pkg, which may
        # still be initialising when pkg is an ancestor) only for names that are not submodules
        names = ([prefix] if any(s not in MODULES for s in subs) else []) + subs
    out = []
    for name in names:
        while name and name not in MODULES:  # `import attnlens.store.reader` loads attnlens.store.reader
            name = name.rpartition(".")[0] if name.split(".")[0] in PACKAGES and "." in name else ""
        if name and name not in out:
            out.append(name)
    return out


def _imports():
    """(module, target, is_local, third_party_root, line) for every import statement of the project."""
    rows = []
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_nodes(tree)
        local = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                local |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in skip:
                continue
            is_local = id(node) in local
            targets = _targets(mod, node)
            if targets:
                rows.extend((mod, t, is_local, None, node.lineno) for t in targets)
            else:
                root = (node.names[0].name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
                if not (isinstance(node, ast.ImportFrom) and node.level):
                    rows.append((mod, None, is_local, root, node.lineno))
    return rows


IMPORTS = _imports()


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    edges: dict[str, set[str]] = {}
    for mod, target, _, _, _ in IMPORTS:
        if target is not None and target != mod:
            edges.setdefault(mod, set()).add(target)
    assert len(edges) > 40  # the graph really was built
    cycle = _cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_function_local_imports_are_optional_or_slow_dependencies_or_at_the_cli_edge():
    bad = []
    for mod, target, is_local, root, line in IMPORTS:
        if not is_local or mod.startswith(CLI_EDGE):
            continue
        if target is not None:
            bad.append(f"{MODULES[mod].relative_to(ROOT)}:{line} imports {target} inside a function")
        elif root not in OPTIONAL_OR_SLOW:
            bad.append(f"{MODULES[mod].relative_to(ROOT)}:{line} imports {root} inside a function")
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_cli():
    users = sorted({f"{m} imports {t}" for m, t, _, _, _ in IMPORTS
                    if t is not None and t.startswith("attnlens.cli") and not m.startswith(CLI_EDGE)})
    assert not users, users


@pytest.mark.parametrize("edges, expect", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}}, None),
])
def test_the_cycle_finder_finds_cycles(edges, expect):
    assert _cycle(edges) == expect
