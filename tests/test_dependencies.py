"""Every third-party module the project imports is a declared dependency, and the internals it relies on exist.

A package that happens to be installed on a developer's machine hides a missing declaration until a new user's
first command fails (`tensorboard` did exactly that). This test reads the declarations from pyproject.toml, not
from the installed metadata, so removing a dependency there fails it, naming the import.
"""

import ast
import importlib
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("aim_core", "server", "client", "benchmarks")
OWN = {"aim_core", "aimfl", "server", "client", "benchmarks"}
# Modules of a declared distribution that import another distribution only when they are imported themselves.
NEEDS_ANOTHER_DISTRIBUTION = {"torch.utils.tensorboard": "tensorboard"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalise(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def declared(pyproject: dict) -> tuple[set[str], set[str]]:
    """(the distributions every install gets, those of optional extras)."""
    project = pyproject["project"]
    required = {requirement_name(r) for r in project["dependencies"]}
    optional = {requirement_name(r) for extra in project.get("optional-dependencies", {}).values() for r in extra}
    return required, optional - required


def imports_of(path: Path):
    """(line, dotted module, imported at module level) for every absolute import, lazy ones included."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            yield node.lineno, name, id(node) in top_level


def distributions_needed(module: str, providers: dict) -> set[str]:
    """The distributions an import of `module` needs (empty: none is installed that provides it)."""
    needed = {normalise(d) for d in providers.get(module.split(".")[0], [])}
    for prefix, distribution in NEEDS_ANOTHER_DISTRIBUTION.items():
        if module == prefix or module.startswith(prefix + "."):
            needed = {normalise(distribution)}
    return needed


def undeclared_imports(pyproject: dict, root: Path = ROOT) -> list[str]:
    required, optional = declared(pyproject)
    providers = importlib.metadata.packages_distributions()
    problems = []
    for folder in SCANNED:
        for path in sorted((root / folder).rglob("*.py")):
            for line, module, eager in imports_of(path):
                top = module.split(".")[0]
                sibling = (path.parent / f"{top}.py").is_file()  # a benchmark script importing its neighbour
                if top in sys.stdlib_module_names or top in OWN or top == "__future__" or sibling:
                    continue
                where = f"{path.relative_to(root)}:{line}: import {module}"
                dists = distributions_needed(module, providers)
                if dists and dists <= required:
                    continue
                if dists and dists <= required | optional:
                    if eager:
                        problems.append(f"{where}: {sorted(dists - required)} is an optional extra, so the import "
                                        "must be lazy (inside the function that needs it)")
                    continue
                problems.append(f"{where}: provided by {sorted(dists) or 'no installed distribution'}, which "
                                "pyproject.toml does not declare")
    return problems


def read_pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def test_every_third_party_import_is_a_declared_dependency():
    assert undeclared_imports(read_pyproject()) == []


@pytest.mark.parametrize("dependency", ["tensorboard", "open_clip_torch", "flwr-datasets"])
def test_removing_a_dependency_is_caught_and_named(dependency):
    pyproject = read_pyproject()
    pyproject["project"]["dependencies"] = [r for r in pyproject["project"]["dependencies"]
                                            if requirement_name(r) != normalise(dependency)]
    problems = undeclared_imports(pyproject)
    assert problems and all(normalise(dependency) in p for p in problems), problems


# Private or undocumented internals the code relies on. The version bounds in pyproject.toml admit only releases that
# have them; after an upgrade, this test names the one that went missing.
INTERNALS = [
    ("open_clip.model", "_build_vision_tower"),
    ("timm.models.vision_transformer", "VisionTransformer._pos_embed"),
    ("timm.models.swin_transformer", "SwinTransformerBlock._attn"),
    ("torch.utils.serialization.config", "load.mmap"),
    ("flwr.serverapp", "RdpAccountant.state_dict"),
    ("flwr.serverapp", "RdpAccountant.load_state_dict"),
    ("flwr_datasets.partitioner", "PathologicalPartitioner._determine_partition_id_to_unique_labels"),
]


@pytest.mark.parametrize("module, attribute", INTERNALS)
def test_internals_the_code_uses_exist(module, attribute):
    value = importlib.import_module(module)
    for part in attribute.split("."):
        assert hasattr(value, part), f"{module}.{attribute}: {part!r} is missing in this version"
        value = getattr(value, part)


@pytest.mark.parametrize("strategy", ["FedAdam", "FedYogi"])
def test_adaptive_strategies_keep_their_moments_where_the_checkpoint_reads_them(strategy):
    """Resuming FedAdam or FedYogi restores the instance attributes `m_t` and `v_t`."""
    import flwr.serverapp.strategy

    instance = getattr(flwr.serverapp.strategy, strategy)()
    for name in ("m_t", "v_t"):
        assert hasattr(instance, name), f"flwr's {strategy} keeps no {name!r} any more"


def test_the_pathological_partitioner_keeps_the_fields_the_covering_subclass_sets():
    from flwr_datasets.partitioner import PathologicalPartitioner

    partitioner = PathologicalPartitioner(num_partitions=2, partition_by="label", num_classes_per_partition=1)
    for name in ("_num_partitions", "_num_classes_per_partition", "_partition_by", "_partition_id_to_unique_labels"):
        assert hasattr(partitioner, name), f"flwr-datasets' PathologicalPartitioner has no {name!r} any more"
