"""Config composition and strict keys."""

import glob
import os

import pytest

from aim_core.config import CONFIG_DIR, ConfigError, load_config

REQUIRED = [
    "k400_clip_vit_b16_8f", "k400_clip_vit_b16_16f", "k400_clip_vit_b16_32f", "k400_clip_vit_l14_8f",
    "ssv2_clip_vit_b16_8f", "k700_clip_vit_b16_8f", "diving48_clip_vit_b16_32f",
    "k400_in21k_vit_b16_8f", "ssv2_in21k_vit_b16_8f", "k400_in21k_swin_b_32f",
]


def experiment_configs():
    return sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml")) if "base" not in p)


def test_the_papers_experiments_exist():
    assert set(REQUIRED) <= set(experiment_configs())


@pytest.mark.parametrize("name", experiment_configs())
def test_every_experiment_config_loads(name):
    cfg = load_config(name)
    assert cfg.model.num_frames == cfg.data.num_frames
    assert cfg.model.num_classes == cfg.data.num_classes


def test_bases_compose_in_order_and_the_experiment_wins():
    cfg = load_config("ssv2_clip_vit_b16_8f")
    assert cfg.model.backbone.name == "ViT-B-16" and cfg.model.backbone.pretrained == "openai"  # model base
    assert cfg.data.num_classes == 174 and cfg.data.sampling == "uniform"  # data base
    assert cfg.schedule.epochs == 50  # schedule base
    assert cfg.model.temporal_adapter_in is True and cfg.model.mlp_adapter_scale == 1.0  # the file itself


def test_command_line_overrides_come_last():
    cfg = load_config("k400_clip_vit_b16_8f", ["data.num_frames=16", "model.backbone.pretrained=null"])
    assert cfg.model.num_frames == 16 and cfg.model.backbone.pretrained is None


def test_unknown_key_in_a_file_names_key_and_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(f"_base_: [{CONFIG_DIR}/k400_clip_vit_b16_8f.yaml]\nmodel:\n  adapter_ratoi: 0.5\n")
    with pytest.raises(ConfigError, match=r"model\.adapter_ratoi.*typo\.yaml"):
        load_config(str(path))


def test_unknown_override_and_bad_syntax_are_errors():
    with pytest.raises(ConfigError, match="data.num_frame"):
        load_config("tiny_clip", ["data.num_frame=8"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("tiny_clip", ["data.num_frames"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_config")


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  variant: aim\n data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:3: not valid YAML"):
        load_config(str(path))


@pytest.mark.parametrize("override, message", [
    ("schedule.lr=abc", "schedule.lr='abc' in command-line override 'schedule.lr=abc': expected a number"),
    ("schedule.epochs=0", "schedule.epochs=0 is out of range"),
    ("schedule.batch_size=-4", "schedule.batch_size=-4 is out of range"),
    ("schedule.epochs=2.5", "schedule.epochs=2.5 in command-line override 'schedule.epochs=2.5': expected an integer"),
    ("data.num_classes=2000000000", "data.num_classes=2000000000 is out of range"),
    ("data.flip=3", "data.flip=3 in command-line override 'data.flip=3': expected true or false"),
    ("schedule.lr=.inf", "schedule.lr=inf is out of range"),
    ("data.crop_scale=[0.5]", r"data.crop_scale=\[0.5\]: expected two numbers in \[0, 1\]"),
])
def test_a_value_of_the_wrong_type_or_range_names_its_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny_clip", [override])


def test_a_stored_config_takes_overrides_as_strictly_as_a_file():
    from aim_core.config import config_from_dict, to_dict

    stored = to_dict(load_config("tiny_clip"))
    assert config_from_dict(stored, ["schedule.lr=1e-4"]).schedule.lr == 1e-4
    with pytest.raises(ConfigError, match="model.adapter_ration"):
        config_from_dict(stored, ["model.adapter_ration=0.5"])
    stored["data"]["num_classes"] = 2_000_000_000
    with pytest.raises(ConfigError, match="data.num_classes=2000000000 is out of range"):
        config_from_dict(stored)


def test_the_in21k_config_is_the_papers_backbone_and_augreg_is_named_apart():
    paper = load_config("k400_in21k_vit_b16_8f").model.backbone
    assert (paper.name, paper.pretrained) == ("vit_base_patch16_224", "orig_in21k_ft_in1k")  # jx_vit_base_p16_224
    assert list(paper.mean) == [0.485, 0.456, 0.406] and list(paper.std) == [0.229, 0.224, 0.225]  # ImageNet's
    augreg = load_config("k400_in21k_augreg_vit_b16_8f").model.backbone
    assert augreg.pretrained == "augreg_in21k" and list(augreg.mean) == [0.5, 0.5, 0.5]
