"""A non-editable install: the wheel ships the configs and the Flower app, claims only aimfl and aim_core, and
runs a federated simulation from the installed app folder, far from any source tree."""

import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from aim_core.data.annotations import read_annotations
from aim_core.data.partition import write_partitions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this tree, installed with --target (the environment already holds its dependencies)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy: pip builds in the tree, and a build/ left there can carry stale files
    for name in ("aimfl", "aim_core", "server", "client", "configs"):
        shutil.copytree(os.path.join(REPO, name), source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(source), "-w", str(root / "dist")],
                   check=True, capture_output=True)
    (wheel,) = glob.glob(str(root / "dist" / "*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(root / "site"), wheel],
                   check=True, capture_output=True)
    return wheel, root / "site"


def run_installed(site, *args, cwd):
    env = {**os.environ, "PYTHONPATH": str(site), "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_wheel_claims_only_its_own_names_and_ships_configs_and_the_app(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"aimfl", "aim_core", "aimfl-0.1.0.dist-info"}
    for shipped in ("aim_core/configs/base.yaml", "aim_core/configs/data/k400.yaml",
                    "aim_core/federated/app/pyproject.toml", "aim_core/federated/app/server/server_app.py",
                    "aim_core/federated/app/client/client_app.py"):
        assert shipped in names


@pytest.mark.slow
def test_the_installed_package_imports_lists_configs_and_simulates(installed, synthetic_world, tmp_path):
    _, site = installed
    probe = run_installed(site, "-c", "import aimfl, aim_core.config as c, importlib.util as u; "
                          "print(aimfl.__file__, c.CONFIG_DIR, u.find_spec('server'), u.find_spec('client'))",
                          cwd=tmp_path)
    module, config_dir, server, client = probe.stdout.split()
    assert module.startswith(str(site)) and config_dir.startswith(str(site)) and server == client == "None"
    assert "k400_clip_vit_b16_8f" in run_installed(site, "-m", "aimfl", "configs", cwd=tmp_path).stdout

    records = read_annotations(os.path.join(synthetic_world, "train.txt"), "list")
    write_partitions(records, str(tmp_path / "parts"), "iid", 2, 0.5, 2, seed=0)
    run_config = (f'config="tiny_synthetic" overrides="data.root={synthetic_world}" '
                  f'partition-dir="{tmp_path / "parts"}" out-dir="{tmp_path / "run"}" num-server-rounds=1 min-nodes=2 '
                  'warmup-rounds=0 batch-size=4')
    result = run_installed(site, "-m", "aimfl", "simulate", "--nodes", "2", "--run-config", run_config, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["rounds_done"] == 1 and (tmp_path / "run.flwr.log").is_file()
