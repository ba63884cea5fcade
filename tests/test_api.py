"""The public API (`import aimfl`), in process: build, one training step, save and load adapters, evaluate, predict."""

import torch
from helpers import TINY, tiny_overrides

import aimfl
from aim_core.model.trainable import trainable_state
from aimfl import cli


def test_one_step_then_save_load_evaluate_and_predict(synthetic_world, tmp_path):
    cfg = aimfl.load_config(TINY, tiny_overrides(synthetic_world, tmp_path, "schedule.warmup_epochs=0"))
    torch.manual_seed(0)
    model = aimfl.build_model(cfg)
    before = {k: v.clone() for k, v in trainable_state(model).items()}
    trainer = aimfl.build_trainer(model, cfg, torch.device("cpu"), updates_per_epoch=1)
    video = torch.randn(2, cfg.data.num_frames, 3, cfg.data.input_size, cfg.data.input_size)
    loss = trainer.step(video, torch.tensor([0, 1]))
    assert torch.isfinite(loss) and trainer.updates == 1
    after = trainable_state(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)

    path = str(tmp_path / "adapters.safetensors")
    aimfl.save_adapters(model, path, cfg)
    torch.manual_seed(0)
    fresh = aimfl.build_model(cfg)
    metadata = aimfl.load_adapters(fresh, path, cfg)
    assert "class_names" in metadata
    for key, value in trainable_state(fresh).items():
        assert torch.equal(value, after[key]), key

    report = aimfl.evaluate(fresh, cfg)
    assert report["videos"] == 10 and 0 <= report["top1"] <= report["top5"] <= 1 and report["skipped"] == 0
    video_path = synthetic_world / open(synthetic_world / "val.txt").readline().split()[0]
    probs = aimfl.predict(fresh, cfg, str(video_path))
    assert probs.shape == (cfg.data.num_classes,) and abs(float(probs.sum()) - 1) < 1e-5


def test_predict_rejects_an_unknown_override_key_like_every_command(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg("tiny_clip")
    path = str(tmp_path / "adapters.safetensors")
    aimfl.save_adapters(aimfl.build_model(cfg), path, cfg)
    assert cli.main(["predict", "clip.mp4", "--checkpoint", path, "model.adapter_ration=0.5"]) == 2
    assert "unknown config key 'model.adapter_ration'" in capsys.readouterr().err
