"""The package's import graph, read from the source (module-level and function-level imports):
layers only import downwards, modules import no private name of another module, and no two
modules import each other, directly or through others.

Layers, bottom to top: the shared helpers (``registry``, ``fingerprint``, ``storage``,
``_optional``, ``_interrupt``, the package itself) < ``align`` (over the native ``_C``) < ``tokenization`` <
``kernels`` < ``loss`` < ``pipeline`` < ``integration`` < ``recipes`` < ``cli``.
"""
import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fusekernels"
LAYERS = [("", "_optional", "_interrupt", "registry", "fingerprint", "storage", "_C"), ("align",), ("tokenization",),
          ("kernels",), ("loss",), ("pipeline",), ("integration",), ("recipes",), ("cli", "__main__")]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}
# Cycles still to be broken, each by the work that owns those modules; an entry must go once its
# cycle is gone (test_known_cycles_still_exist), and no other cycle may appear.
KNOWN_CYCLES: list[set] = []


def _modules() -> dict:
    """module name -> path, for every .py file of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> list:
    """``(imported module, imported names, line)`` of every import of a fusekernels module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, (), node.lineno) for a in node.names if a.name.split(".")[0] == "fusekernels"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "fusekernels":
                continue
            names = [a.name for a in node.names]
            for n in names:  # "from . import choices": the submodule itself
                if f"{target}.{n}" in modules:
                    found.append((f"{target}.{n}", (), node.lineno))
            found.append((target, tuple(n for n in names if f"{target}.{n}" not in modules), node.lineno))
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYER_OF[parts[1] if len(parts) > 1 else ""]


def _graph():
    modules = _modules()
    edges = defaultdict(set)
    records = []
    for name, path in modules.items():
        for target, names, line in _imports(name, path, modules):
            if target not in modules and target.rpartition(".")[0] in modules and target.endswith("._C"):
                continue
            records.append((name, target, names, line))
            if target in modules and target != name:
                edges[name].add(target)
    return modules, edges, records


def test_every_module_has_a_layer():
    for name in _modules():
        assert name == "fusekernels" or name.split(".")[1] in LAYER_OF, f"{name}: add its package to LAYERS"


def test_no_import_runs_up_a_layer():
    _, _, records = _graph()
    upward = [f"{src} (line {line}) imports {dst}" for src, dst, _, line in records
              if dst.split(".")[-1] != "_C" and _layer(dst) > _layer(src)]
    assert not upward, "\n".join(upward)


def test_no_private_name_of_another_module_is_imported():
    modules, _, records = _graph()
    private = [f"{src} (line {line}) imports {n} from {dst}" for src, dst, names, line in records
               for n in names if n.startswith("_") and not n.endswith("__") and n != "_C" and dst != src]
    assert not private, "\n".join(private)


def _cycles() -> list:
    """Strongly connected components of more than one module (a package and its own submodules
    importing each other through the package's ``__init__`` is not counted)."""
    modules, edges, _ = _graph()
    cycles, index, low, stack, on_stack, counter = [], {}, {}, [], set(), [0]

    def strongconnect(v):  # Tarjan: strongly connected components with more than one module
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w.rpartition(".")[0] == v or v.rpartition(".")[0] == w:
                continue  # package <-> its own submodule
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in list(modules):
        if v not in index:
            strongconnect(v)
    return cycles


def test_no_import_cycles():
    new = [c for c in _cycles() if set(c) not in KNOWN_CYCLES]
    assert not new, new


def test_known_cycles_still_exist():
    found = [set(c) for c in _cycles()]
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in found]
    assert not gone, f"these cycles are gone: remove them from KNOWN_CYCLES: {gone}"


def test_the_checks_see_real_imports():
    """The graph is not empty and finds known arrows (a check that reads nothing cannot fail)."""
    _, edges, records = _graph()
    assert "fusekernels.pipeline.io" in edges["fusekernels.integration.train_command"]
    assert "fusekernels.integration" in edges["fusekernels.recipes.fusechat"]
    assert "fusekernels.recipes.choices" in edges["fusekernels.recipes.fusechat"]
    assert len(records) > 200
