"""Centralized training: DDP equivalence, kill-and-resume, eval/predict, the training step's parts."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import TINY, aimfl, tiny_overrides
from safetensors.torch import load_file

from aim_core.engine.checkpoint import load_training_state
from aim_core.engine.evaluation import average_view_probabilities
from aim_core.engine.step import Trainer, build_mixup, build_optimizer, build_scheduler, build_trainer
from aim_core.model.factory import build_model
from aimfl.processes import find_program


@pytest.fixture(scope="module")
def trained_run(synthetic_world, tmp_path_factory):
    """An uninterrupted 3-epoch run (the reference for the resume and DDP tests)."""
    out = tmp_path_factory.mktemp("run_full")
    aimfl("train", TINY, *tiny_overrides(synthetic_world, out))
    return out


@pytest.mark.slow
def test_a_run_writes_final_json_checkpoints_and_reports(trained_run):
    final = json.loads((trained_run / "final.json").read_text())
    for key in ("val_top1", "val_top5", "val_loss", "trainable_params", "epochs", "wall_seconds", "val_order_top1"):
        assert key in final
    assert final["epochs"] == 3 and 0 <= final["val_top1"] <= final["val_top5"] <= 1
    lines = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert all(0 < line["train_loss"] < 10 and line["train_skipped_videos"] == 0 for line in lines)
    for name in ("final.safetensors", "checkpoints/last.pt", "checkpoints/best.safetensors",
                 "eval/per_class_accuracy.csv", "eval/confusion_matrix.png"):
        assert (trained_run / name).is_file(), name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run / "tensorboard"))
    events.Reload()
    assert {"step/loss", "step/lr", "train_loss", "val_top1"} <= set(events.Tags()["scalars"])
    steps = [e.step for e in events.Scalars("step/loss")]  # every log_every micro-batches: the first of each epoch
    assert len(steps) == 3 and steps == sorted(set(steps)) and steps[0] == 1
    assert [e.step for e in events.Scalars("train_loss")] == [1, 2, 3]


@pytest.mark.slow
def test_kill_and_resume_reaches_the_same_weights(synthetic_world, trained_run, tmp_path):
    out = tmp_path / "run_killed"
    cmd = [sys.executable, "-m", "aimfl", "train", TINY, *tiny_overrides(synthetic_world, out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.is_file() and load_training_state(last)["epoch"] >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.1)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be interrupted"
    assert not (out / "final.json").exists()
    interrupted_at = load_training_state(last)["epoch"]
    assert 1 <= interrupted_at < 3

    resumed = aimfl("train", TINY, *tiny_overrides(synthetic_world, out, "resume=auto"))
    assert f"resumed from {last} after epoch {interrupted_at}" in resumed.stdout
    reference, result = load_file(trained_run / "final.safetensors"), load_file(out / "final.safetensors")
    assert reference.keys() == result.keys()
    for key in reference:
        torch.testing.assert_close(result[key], reference[key], rtol=0, atol=1e-6, msg=key)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics][-2:] == [2, 3]


@pytest.mark.slow
def test_ddp_two_gloo_ranks_match_one_process(synthetic_world, trained_run, tmp_path):
    """2 ranks x batch 4 (DDP, gloo) against 1 process x batch 8: the same total batch of the same clips."""
    out = tmp_path / "run_ddp"
    cmd = [find_program("torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "aimfl", "train", TINY,
           *tiny_overrides(synthetic_world, out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    final = json.loads((out / "final.json").read_text())
    assert final["world_size"] == 2 and final["ranks_in_sync"] is True
    reference, result = load_file(trained_run / "final.safetensors"), load_file(out / "final.safetensors")
    for key in reference:
        torch.testing.assert_close(result[key], reference[key], rtol=1e-4, atol=2e-5, msg=key)


@pytest.mark.slow
def test_eval_cli_writes_per_class_csv_and_confusion_png(synthetic_world, trained_run, tmp_path):
    out = tmp_path / "eval"
    result = aimfl("eval", TINY, *tiny_overrides(synthetic_world, trained_run),
                   "--checkpoint", str(trained_run / "final.safetensors"), "--out", str(out))
    summary = json.loads(result.stdout)
    final = json.loads((trained_run / "final.json").read_text())
    # the same model (the random backbone drawn from the config's seed) under the same multi-view protocol
    assert summary["loss"] == pytest.approx(final["val_loss"], rel=1e-5)
    assert summary["top1"] == pytest.approx(final["val_top1"])
    rows = (out / "per_class_accuracy.csv").read_text().splitlines()
    assert rows[0] == "class_index,class_name,videos,top1" and len(rows) == 11
    assert (out / "confusion_matrix.png").stat().st_size > 5000


@pytest.mark.slow
def test_predict_prints_top5_class_names(synthetic_world, trained_run):
    video = synthetic_world / open(synthetic_world / "val.txt").readline().split()[0]
    result = aimfl("predict", str(video), "--checkpoint", str(trained_run / "final.safetensors"))
    lines = result.stdout.strip().splitlines()
    names = (synthetic_world / "classes.txt").read_text().split()
    assert len(lines) == 5
    probs = [float(line.split()[0]) for line in lines]
    assert all(line.split()[1] in names for line in lines)
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


@pytest.mark.slow
def test_missing_pretrained_checkpoint_fails_before_training(synthetic_world, tmp_path):
    out = tmp_path / "never"
    result = aimfl("train", "synthetic", f"data.root={synthetic_world}", "model.backbone.checkpoint=/nowhere/vit.pth",
                   f"output_dir={out}", check=False)
    assert result.returncode == 2
    assert "/nowhere/vit.pth" in result.stderr and "aimfl pretrain-image" in result.stderr
    assert not out.exists()


def test_view_averaging_with_a_constant_view():
    """One random view and one constant view: the result is the mean of their softmaxes."""
    head = torch.nn.Linear(3, 4)
    model = lambda clips: head(clips.mean(dim=(1, 3, 4)))  # noqa: E731
    random_view = torch.randn(1, 2, 3, 8, 8)
    constant_view = torch.zeros(1, 2, 3, 8, 8)
    views = torch.stack([random_view, constant_view], dim=1)  # (B=1, V=2, T, C, H, W)
    expected = (model(random_view).softmax(-1) + model(constant_view).softmax(-1)) / 2
    for cap in (1, 2):
        torch.testing.assert_close(average_view_probabilities(model, views, cap), expected)


def test_parameter_groups_and_schedule(tiny_cfg):
    cfg = tiny_cfg("tiny_clip", "schedule.backbone_lr_mult=0.1", "schedule.lr=1e-3", "schedule.epochs=10",
                   "schedule.warmup_epochs=2")
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg.schedule)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            assert group["weight_decay"] == (0.0 if p.ndim == 1 or "temporal" in name else 0.05), name
            assert group["lr_scale"] == (1.0 if name.startswith("head.") else 0.1), name
    scheduler = build_scheduler(optimizer, cfg.schedule, updates_per_epoch=5)
    head = next(g for g in optimizer.param_groups if g["lr_scale"] == 1.0)
    lrs = []
    for step in range(51):
        scheduler.step_update(step)
        lrs.append(head["lr"])
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(1e-3)  # linear warmup over 2 epochs x 5 updates
    assert lrs[5] == pytest.approx(5e-4) and lrs[50] == pytest.approx(0.0, abs=1e-9)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine decay after warmup
    adapter = next(g for g in optimizer.param_groups if g["lr_scale"] == 0.1)
    assert adapter["lr"] == pytest.approx(0.0)


def test_mixup_and_cutmix_mix_whole_clips(tiny_cfg):
    cfg = tiny_cfg("tiny_clip", "schedule.mixup=0.8", "schedule.cutmix=1.0", "schedule.label_smoothing=0.1")
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg.schedule)
    trainer = Trainer(model, optimizer, build_scheduler(optimizer, cfg.schedule, 1), torch.device("cpu"), "fp32",
                      mixup=build_mixup(cfg.schedule, cfg.data.num_classes))
    torch.manual_seed(0)
    video = torch.randn(4, cfg.data.num_frames, 3, 32, 32)
    for _ in range(4):
        clips = video.clone()
        loss = trainer.loss(clips, torch.tensor([0, 1, 2, 3]))
        assert torch.isfinite(loss)
        changed = (clips != video).any(dim=2)  # (B, T, H, W): which pixels mixing touched
        assert torch.equal(changed, changed[:, :1].expand_as(changed))  # the same pixels in every frame
        assert changed.any()



def test_mixup_takes_a_non_contiguous_clip_and_an_even_batch(tiny_cfg):
    """A loader may hand over (B, T, C, H, W) as a permuted view; mixing pairs clips, so an odd batch is refused."""
    from aim_core.config import ConfigError
    from aim_core.engine.step import check_mixup_batch

    cfg = tiny_cfg("tiny_clip", "schedule.mixup=0.8")
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg.schedule)
    trainer = Trainer(model, optimizer, build_scheduler(optimizer, cfg.schedule, 1), torch.device("cpu"), "fp32",
                      mixup=build_mixup(cfg.schedule, cfg.data.num_classes))
    permuted = torch.randn(4, 3, cfg.data.num_frames, 32, 32).transpose(1, 2)
    assert torch.isfinite(trainer.loss(permuted, torch.tensor([0, 1, 2, 3])))
    check_mixup_batch(cfg.schedule, 4)
    with pytest.raises(ConfigError, match="even"):
        check_mixup_batch(cfg.schedule, 3)

def test_training_loader_workers_see_each_new_epoch(tiny_cfg, synthetic_world):
    """Augmentation is seeded by (seed, epoch, index); persistent worker processes must get every new epoch."""
    from aim_core.data.video import build_dataset
    from aim_core.engine.loaders import make_loader

    cfg = tiny_cfg(TINY, *tiny_overrides(synthetic_world, "unused"))
    dataset = build_dataset(cfg, "train")
    loader, sampler = make_loader(dataset, 6, train=True, rank=0, world=1, seed=0, workers=2)
    seen = []
    assert loader.persistent_workers
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        seen.append({int(i): v for batch in loader for i, v in zip(batch["index"], batch["video"])})
    common = seen[0].keys() & seen[1].keys()
    assert common and all(not torch.equal(seen[0][i], seen[1][i]) for i in common)


def test_pretrain_image_saves_timm_weights_the_synthetic_config_loads(tiny_cfg, tmp_path):
    from aimfl.pretrain_image import pretrain_image_model

    out = tmp_path / "vit.pth"
    steps = ["image_pretrain.steps=20", "image_pretrain.warmup_steps=5", "image_pretrain.batch_size=32",
             "image_pretrain.train_images=300", "image_pretrain.val_images=100"]
    card = pretrain_image_model(tiny_cfg("synthetic", *steps), str(out), progress=False)
    assert card["loss_history"][-1]["loss"] < card["loss_history"][0]["loss"]
    saved = torch.load(out)
    assert not any(k.startswith("head.") for k in saved)  # the pre-training heads are not part of the backbone

    model = build_model(tiny_cfg("synthetic", f"model.backbone.checkpoint={out}").model)
    ours = dict(model.named_parameters())
    torch.testing.assert_close(ours["blocks.3.attn.qkv.weight"], saved["blocks.3.attn.qkv.weight"], rtol=0, atol=0)
    torch.testing.assert_close(ours["stem.vit.patch_embed.proj.weight"], saved["patch_embed.proj.weight"], rtol=0,
                               atol=0)


@pytest.mark.slow  # inductor runs the C++ compiler
@pytest.mark.parametrize("mode", ["model", "blocks"])
def test_a_compiled_model_trains_like_the_eager_one_and_keeps_its_names(tiny_cfg, mode):
    deterministic = ("model.head_dropout=0", "model.drop_path_rate=0")
    cfg = tiny_cfg("tiny_timm_vit", *deterministic)
    torch.manual_seed(0)
    eager = build_model(cfg.model)
    compiled = build_model(cfg.model)
    compiled.load_state_dict(eager.state_dict())
    names = [name for name, _ in compiled.named_parameters()]
    video = torch.randn(2, cfg.data.num_frames, 3, cfg.data.input_size, cfg.data.input_size)
    labels = torch.tensor([0, 1])
    losses = {}
    for name, model, compile_mode in (("eager", eager, "none"), ("compiled", compiled, mode)):
        run_cfg = tiny_cfg("tiny_timm_vit", f"model.compile={compile_mode}", *deterministic)
        trainer = build_trainer(model, run_cfg, torch.device("cpu"), updates_per_epoch=4)
        losses[name] = [trainer.step(video, labels).item() for _ in range(2)]
    assert [name for name, _ in compiled.named_parameters()] == names
    compiled_part = compiled if mode == "model" else compiled.blocks[0]
    assert compiled_part._compiled_call_impl is not None and eager._compiled_call_impl is None
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4, abs=1e-5)
