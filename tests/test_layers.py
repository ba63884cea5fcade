"""The code is in layers that import downward only, with no cycle, lazy imports inside functions included.

    aim_core.config                     the bottom
    aim_core.model | aim_core.data      side by side: neither imports the other
    aim_core.engine
    aim_core.federated                  what both Flower apps share
    server | client                     the Flower apps: neither imports the other
    aimfl.processes, .credentials       tools of the commands
    aimfl.train, .pretrain_image, .simulation, .deployment
    aimfl.staging
    aimfl.demo, .local_federation
    aimfl                               the public API
    aimfl.cli, aimfl.__main__           the command line: nothing imports it
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("aim_core", "server", "client", "aimfl")

LAYERS = [
    ("config", 0, ["aim_core", "aim_core.config"]),
    ("model", 1, ["aim_core.model"]),
    ("data", 1, ["aim_core.data"]),
    ("engine", 2, ["aim_core.engine"]),
    ("federated", 3, ["aim_core.federated"]),
    ("server", 4, ["server"]),
    ("client", 4, ["client"]),
    ("command tools", 5, ["aimfl.processes", "aimfl.credentials"]),
    ("recipes", 6, ["aimfl.train", "aimfl.pretrain_image", "aimfl.simulation", "aimfl.deployment"]),
    ("staging", 7, ["aimfl.staging"]),
    ("commands", 8, ["aimfl.demo", "aimfl.local_federation"]),
    ("api", 9, ["aimfl"]),
    ("cli", 10, ["aimfl.cli", "aimfl.__main__"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def layer_of(module: str) -> tuple[str, int]:
    """The layer whose most specific prefix names `module`."""
    best = None
    for name, rank, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[2]):
                best = (name, rank, len(prefix))
    assert best is not None, f"{module} is in no layer of tests/test_layers.py"
    return best[0], best[1]


def project_imports(path: Path, modules: dict[str, Path]):
    """(line, imported project module) for every import in the file, module level or lazy."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import submodule` imports the submodule
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                       for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                yield node.lineno, target


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """The import graph of the project's modules, and every import that runs upward or sideways."""
    modules = all_modules()
    graph, wrong = {m: set() for m in modules}, []
    for module, path in modules.items():
        here = layer_of(module)
        for line, target in project_imports(path, modules):
            if target not in modules:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: imports {target}, which does not exist")
                continue
            there = layer_of(target)
            graph[module].add(target)
            if there[0] != here[0] and there[1] >= here[1]:
                direction = "upward" if there[1] > here[1] else "sideways"
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {here[0]} layer imports {target} ({direction}, "
                             f"{there[0]} layer)")
    return graph, wrong


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_imports_run_downward_only():
    _, wrong = import_graph()
    assert wrong == []


def test_no_import_cycle():
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_the_checks_catch_an_upward_import_and_a_cycle():
    graph, _ = import_graph()
    assert layer_of("aim_core.model.vit") == ("model", 1) and layer_of("aimfl") == ("api", 9)
    assert cycles({**graph, "aim_core.model.layers": graph["aim_core.model.layers"] | {"aim_core.model.vit"}})
    assert layer_of("aim_core.engine.step")[1] > layer_of("aim_core.model.trainable")[1]


@pytest.mark.parametrize("package", ["aim_core", "aim_core.model", "aim_core.data", "aim_core.engine",
                                     "aim_core.federated"])
def test_each_layer_says_what_it_is_for_and_exports_nothing(package):
    init = ROOT / package.replace(".", "/") / "__init__.py"
    tree = ast.parse(init.read_text())
    docstring = ast.get_docstring(tree)
    assert docstring and len(docstring.split()) > 15, f"{init}: say in one paragraph what the layer is for"
    assert len(tree.body) == 1, f"{init}: a layer's __init__ holds its docstring only"


def test_aim_core_holds_a_handful_of_modules_at_its_top():
    assert sorted(p.name for p in (ROOT / "aim_core").glob("*.py")) == ["__init__.py", "config.py"]
