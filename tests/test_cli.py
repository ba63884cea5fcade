"""The command line's shared vocabulary: --version, configs, print-config, defaults in --help, --out."""

from importlib.metadata import version

import pytest
import yaml

from aimfl.cli import main


def test_version_is_the_installed_distribution(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"aimfl {version('aimfl')}"


def test_configs_lists_the_experiments_with_their_summaries_and_not_the_layers(capsys):
    assert main(["configs"]) == 0
    names = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert {"synthetic", "demo", "k400_clip_vit_b16_8f", "ssv2_clip_vit_b16_8f"} <= set(names)
    assert "base" not in names
    assert "Kinetics-400" in names["k400_clip_vit_b16_8f"]


def test_print_config_shows_the_resolved_config_with_overrides(capsys):
    assert main(["print-config", "synthetic", "schedule.lr=0.01", "data.root=/videos"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["schedule"]["lr"] == 0.01
    assert printed["data"]["train_list"] == "/videos/train.txt"  # interpolations resolved
    assert printed["log_every"] == 10  # base.yaml's defaults are there too


def test_print_config_names_a_misspelt_key_in_one_line(capsys):
    assert main(["print-config", "synthetic", "schedule.lrr=0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "schedule.lrr" in err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["partition", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "random seed of the split (default: 0)" in out and "(default: 0.5)" in out
    assert "(default: None)" not in out


def test_train_out_and_an_output_dir_override_cannot_disagree(capsys, tmp_path):
    assert main(["train", "synthetic", f"output_dir={tmp_path / 'a'}", "--out", str(tmp_path / "b")]) == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("argv, config, overrides", [
    (["train", "synthetic", "seed=1"], "synthetic", ["seed=1"]),
    (["eval", "synthetic", "--checkpoint", "c.safetensors", "seed=1"], "synthetic", ["seed=1"]),
    (["info", "k400_clip_vit_b16_8f"], "k400_clip_vit_b16_8f", []),
    (["print-config", "synthetic", "seed=1"], "synthetic", ["seed=1"]),
    (["pretrain-image"], "synthetic", []),
    (["pretrain-image", "image_pretrain.steps=5"], "synthetic", ["image_pretrain.steps=5"]),
    (["demo", "--out", "o"], "demo", []),
    (["demo", "demo.clients=3", "seed=2"], "demo", ["demo.clients=3", "seed=2"]),
    (["demo", "tiny_synthetic", "demo.clients=3"], "tiny_synthetic", ["demo.clients=3"]),
    (["local-federation", "k400_clip_vit_b16_8f", "--out", "o", "seed=1"], "k400_clip_vit_b16_8f", ["seed=1"]),
    (["local-federation", "local_federation.rounds=4"], "demo", ["local_federation.rounds=4"]),
    (["predict", "v.mp4", "--checkpoint", "c.safetensors"], None, []),
    (["predict", "v.mp4", "synthetic", "--checkpoint", "c.safetensors", "data.test_clips=2"], "synthetic",
     ["data.test_clips=2"]),
    (["predict", "v.mp4", "data.test_clips=2", "--checkpoint", "c.safetensors"], None, ["data.test_clips=2"]),
])
def test_every_command_takes_the_config_as_its_first_positional(monkeypatch, argv, config, overrides):
    import aimfl.cli as cli

    seen = {}
    for name in ("cmd_train", "cmd_eval", "cmd_info", "cmd_print_config", "cmd_pretrain_image", "cmd_demo",
                 "cmd_local_federation", "cmd_predict"):
        monkeypatch.setattr(cli, name, lambda args: seen.update(config=args.config, overrides=args.overrides))
    assert cli.main(argv) == 0
    assert seen == {"config": config, "overrides": overrides}


@pytest.mark.parametrize("command", [["demo"], ["local-federation"], ["predict", "v.mp4", "--checkpoint", "c"]])
def test_no_command_takes_a_config_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--config", "synthetic"])
    assert exit_info.value.code == 2 and "--config" in capsys.readouterr().err
