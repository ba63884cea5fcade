"""Checkpoints and adapter files from untrusted places: nothing in them runs code, reads paths or allocates without
bound, and a damaged file gets one line naming it (exit 2)."""

import os

import pytest
import torch
from helpers import TINY, tiny_overrides

import aimfl
from aim_core.config import to_dict
from aim_core.engine.checkpoint import CheckpointError, load_training_state, save_trainable, save_training_state
from aimfl import cli


class Payload:
    """A pickle that writes a file when it is unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil_checkpoint(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "trainable": Payload(str(marker))}, path)
    return path, marker


def test_a_checkpoint_with_a_code_payload_is_refused_and_the_code_never_runs(evil_checkpoint):
    path, marker = evil_checkpoint
    with pytest.raises(CheckpointError, match="not a readable aimfl checkpoint"):
        load_training_state(path)
    assert not marker.exists()


def test_train_refuses_to_resume_from_a_payload(evil_checkpoint, synthetic_world, tmp_path, capsys):
    path, marker = evil_checkpoint
    code = cli.main(["train", TINY, *tiny_overrides(synthetic_world, tmp_path / "run"), f"resume={path}"])
    assert code == 2 and not marker.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("content", [b"", b"plain text, not a checkpoint\n", "truncated"])
def test_a_damaged_training_state_is_one_line_naming_the_file(tmp_path, content):
    path = tmp_path / "last.pt"
    if content == "truncated":
        save_training_state({"epoch": 3, "trainable": {"w": torch.zeros(1000)}}, str(path))
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(path)):
        load_training_state(str(path))


@pytest.mark.parametrize("content", [b"", b"some text\n", "truncated"])
def test_eval_with_a_damaged_adapter_file_exits_2_with_one_line(tiny_cfg, tmp_path, content, capsys):
    path = tmp_path / "final.safetensors"
    if content == "truncated":
        cfg = tiny_cfg("tiny_clip")
        aimfl.save_adapters(aimfl.build_model(cfg), str(path), cfg)
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.write_bytes(content)
    assert cli.main(["eval", "tiny_clip", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0]


def test_metadata_asking_for_two_billion_classes_is_refused_before_building(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg("tiny_clip")
    path = str(tmp_path / "huge.safetensors")
    config = to_dict(cfg)
    config["data"]["num_classes"] = 2_000_000_000
    save_trainable(aimfl.build_model(cfg), path, config)
    assert cli.main(["predict", "clip.mp4", "--checkpoint", path]) == 2
    assert "data.num_classes=2000000000 is out of range" in capsys.readouterr().err


def test_class_names_come_from_the_metadata_never_from_a_path_in_it(tiny_cfg, synthetic_world, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("\n".join(f"SECRET-LINE-{k}" for k in range(10)) + "\n")
    cfg = aimfl.load_config(TINY, tiny_overrides(synthetic_world, tmp_path, f"data.class_names={secret}"))
    path = str(tmp_path / "adapters.safetensors")
    save_trainable(aimfl.build_model(cfg), path, to_dict(cfg))  # metadata without class names
    video = synthetic_world / open(synthetic_world / "val.txt").readline().split()[0]
    assert cli.main(["predict", str(video), "--checkpoint", path]) == 0
    out = capsys.readouterr().out
    assert "SECRET" not in out and len(out.strip().splitlines()) == 5
    assert os.path.isfile(secret)
