"""The AIM model: zero-init equivalence, the trainable set, temporal mixing, variants."""

import pytest
import torch

from aim_core.model.adapter import Adapter
from aim_core.model.backbones import build_open_clip_visual, build_timm_model
from aim_core.model.factory import build_model
from aim_core.model.trainable import trainable_names

TINY = ["tiny_clip", "tiny_timm_vit", "tiny_swin"]


def randomize_added_weights(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> None:
    """Gives the zero-initialised adapters and temporal parameters random values, as after training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "adapter" in name or "temporal" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def reference_frame_features(cfg, frames: torch.Tensor) -> torch.Tensor:
    """The frozen image model's own per-frame features, computed by its own library."""
    backbone = cfg.model.backbone
    if backbone.family == "open_clip":
        visual = build_open_clip_visual(backbone, cfg.model.image_size).eval()
        visual.proj = None  # features before CLIP's projection: ln_post([class])
        return visual(frames)
    model = build_timm_model(backbone, img_size=cfg.model.image_size, drop_path_rate=0.0).eval()
    features = model.forward_features(frames)
    if backbone.family == "timm_swin":
        return features.mean(dim=(1, 2))
    return features[:, 0]


@pytest.mark.parametrize("name", TINY)
def test_untrained_aim_equals_frozen_image_model_per_frame(tiny_cfg, name):
    cfg = tiny_cfg(name)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    video = torch.randn(2, cfg.data.num_frames, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    frames = video
    if cfg.model.tubelet_size > 1:  # Swin time steps are tubelet means (the inflated Conv3d)
        frames = video.view(2, -1, cfg.model.tubelet_size, 3, 32, 32).mean(dim=2)
    torch.manual_seed(0)  # the same seed gives the reference the same backbone weights
    ref = reference_frame_features(cfg, frames.flatten(0, 1))
    ours = model.frame_features(video).flatten(0, 1)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_adapted_model_differs_from_frozen_model(tiny_cfg, name):
    """Guards the test above: non-zero adapters must change the per-frame features."""
    cfg = tiny_cfg(name)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    video = torch.randn(2, cfg.data.num_frames, 3, 32, 32)
    before = model.frame_features(video)
    randomize_added_weights(model)
    assert not torch.allclose(model.frame_features(video), before, atol=1e-3)


@pytest.mark.parametrize("name", TINY)
def test_only_the_trainable_set_learns(tiny_cfg, name):
    cfg = tiny_cfg(name)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    randomize_added_weights(model)
    trainable = set(trainable_names(model))
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if n not in trainable}
    trainable_before = {n: p.detach().clone() for n, p in model.named_parameters() if n in trainable}

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # deliberately handed every parameter
    video = torch.randn(2, cfg.data.num_frames, 3, 32, 32)
    loss = torch.nn.functional.cross_entropy(model(video), torch.tensor([0, 1]))
    loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in trainable), n
    optimizer.step()

    for n, p in model.named_parameters():
        if n in trainable:
            assert not torch.equal(p, trainable_before[n]), f"{n} did not train"
        else:
            assert torch.equal(p, frozen_before[n]), f"frozen {n} changed"


def test_trainable_set_is_adapters_temporal_norm_and_head(tiny_cfg):
    model = build_model(tiny_cfg("tiny_clip").model)
    names = set(trainable_names(model))
    expected = {"temporal_embedding.weight", "norm.weight", "norm.bias", "head.fc.weight", "head.fc.bias"}
    for i in range(2):
        for adapter in ("t_adapter", "s_adapter", "mlp_adapter"):
            for layer in ("fc1", "fc2"):
                expected |= {f"blocks.{i}.{adapter}.{layer}.weight", f"blocks.{i}.{adapter}.{layer}.bias"}
    assert names == expected
    for n, p in model.named_parameters():
        assert p.requires_grad == (n in names), n


def test_swin_temporal_bias_is_trainable(tiny_cfg):
    model = build_model(tiny_cfg("tiny_swin").model)
    names = trainable_names(model)
    assert any(n.endswith("temporal_bias.table") for n in names)
    assert "norm.weight" in names and "head.fc.weight" in names


@pytest.mark.parametrize("name", TINY)
def test_temporal_adaptation_mixes_frames(tiny_cfg, name):
    def change_in_later_frames(variant):
        cfg = tiny_cfg(name, f"model.variant={variant}")
        torch.manual_seed(0)
        model = build_model(cfg.model).eval()
        randomize_added_weights(model)
        video = torch.randn(1, cfg.data.num_frames, 3, 32, 32)
        edited = video.clone()
        edited[:, 0] = torch.randn_like(edited[:, 0])
        a, b = model.frame_features(video), model.frame_features(edited)
        assert not torch.allclose(a[:, 0], b[:, 0])  # the edited step itself changes in any case
        return (a[:, 1:] - b[:, 1:]).abs().max().item()

    assert change_in_later_frames("aim") > 1e-5
    assert change_in_later_frames("spatial") == 0.0


def test_class_token_attends_over_time(tiny_cfg):
    """The [class] token takes part in temporal attention: with only the class token
    differing between frames, frame 1's class feature depends on frame 0's."""
    cfg = tiny_cfg("tiny_clip")
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    randomize_added_weights(model)
    block = model.blocks[0]
    x = torch.randn(1, 1, 17, 64).expand(1, 4, 17, 64).clone()
    y = x.clone()
    y[0, 0, 0] += 1.0  # only frame 0's class token changes
    out_x, out_y = block(x.flatten(0, 1), 4), block(y.flatten(0, 1), 4)
    assert not torch.allclose(out_x[1, 0], out_y[1, 0])
    torch.testing.assert_close(out_x[1, 1:], out_y[1, 1:])  # other positions attend only to themselves over time


def test_variants_build_the_papers_ablations(tiny_cfg):
    def adapters(model):
        return [n for n, m in model.named_modules() if isinstance(m, Adapter)]

    space_only = build_model(tiny_cfg("tiny_clip", "model.variant=space_only").model)
    assert adapters(space_only) == [] and space_only.temporal_embedding is None
    assert set(trainable_names(space_only)) == {"norm.weight", "norm.bias", "head.fc.weight", "head.fc.bias"}

    spatial = build_model(tiny_cfg("tiny_clip", "model.variant=spatial").model)
    assert adapters(spatial) == ["blocks.0.s_adapter", "blocks.1.s_adapter"]

    temporal = build_model(tiny_cfg("tiny_clip", "model.variant=temporal").model)
    assert {a.split(".")[-1] for a in adapters(temporal)} == {"t_adapter", "s_adapter"}

    full = build_model(tiny_cfg("tiny_clip", "model.variant=full_finetune").model)
    assert all(p.requires_grad for p in full.parameters())
    assert adapters(full) == adapters(build_model(tiny_cfg("tiny_clip").model))

    with pytest.raises(ValueError, match="model.variant"):
        build_model(tiny_cfg("tiny_clip", "model.variant=nonsense").model)


def test_adapter_positions_and_ratio(tiny_cfg):
    def adapted_blocks(*overrides):
        model = build_model(tiny_cfg("tiny_timm_vit", "model.backbone.overrides.depth=6", *overrides).model)
        return [i for i, b in enumerate(model.blocks) if b.s_adapter is not None]

    assert adapted_blocks() == list(range(6))
    assert adapted_blocks("model.adapter_positions=bottom", "model.adapter_layer_count=2") == [0, 1]
    assert adapted_blocks("model.adapter_positions=top", "model.adapter_layer_count=2") == [4, 5]
    assert adapted_blocks("model.adapter_positions=alternate") == [0, 2, 4]
    with pytest.raises(ValueError, match="adapter_layer_count"):
        adapted_blocks("model.adapter_positions=top")

    model = build_model(tiny_cfg("tiny_timm_vit", "model.adapter_ratio=0.5").model)
    assert model.blocks[0].s_adapter.fc1.out_features == 32


def test_ssv2_variant_adds_a_skip_adapter_before_temporal_attention(tiny_cfg):
    model = build_model(tiny_cfg("tiny_clip", "model.temporal_adapter_in=true").model)
    block = model.blocks[0]
    assert block.t_adapter_in.skip_connect and not block.t_adapter.skip_connect
    assert block.s_adapter.skip_connect and not block.mlp_adapter.skip_connect


def test_adapter_init():
    adapter = Adapter(64, 0.25, skip_connect=False)
    assert adapter.fc1.out_features == 16
    assert torch.count_nonzero(adapter.fc2.weight) == 0 and torch.count_nonzero(adapter.fc2.bias) == 0
    assert 0.01 < adapter.fc1.weight.std().item() < 0.03
    x = torch.randn(3, 64)
    assert torch.equal(adapter(x), torch.zeros_like(x))
    assert torch.equal(Adapter(64, 0.25, skip_connect=True)(x), x)


@pytest.mark.parametrize("name", ["tiny_clip", "tiny_swin"])
def test_activation_checkpointing_gives_the_same_gradients(tiny_cfg, name):
    grads = []
    for flag in ("false", "true"):
        cfg = tiny_cfg(name, f"model.grad_checkpointing={flag}", "model.head_dropout=0", "model.drop_path_rate=0")
        torch.manual_seed(0)
        model = build_model(cfg.model).train()
        randomize_added_weights(model)
        video = torch.randn(2, cfg.data.num_frames, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        model(video).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4)


def test_bf16_autocast_forward_backward(tiny_cfg):
    cfg = tiny_cfg("tiny_clip")
    model = build_model(cfg.model).train()
    video = torch.randn(2, cfg.data.num_frames, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(video)
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("tokens", [8, 32])
def test_short_sequence_attention_matches_sdpa_in_both_passes(tokens):
    """The CPU path for short sequences replaces SDPA with hand-written backward: outputs and all three gradients
    must agree with SDPA's, or the temporal adapters would learn from a wrong gradient."""
    from aim_core.model.attention import ShortSequenceAttention

    torch.manual_seed(0)
    q, k, v = (torch.randn(5, 3, tokens, 16, requires_grad=True) for _ in range(3))
    upstream = torch.randn(5, 3, tokens, 16)
    ours = ShortSequenceAttention.apply(q, k, v, 0.3)
    grads = torch.autograd.grad((ours * upstream).sum(), (q, k, v))
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
    expected = torch.autograd.grad((reference * upstream).sum(), (q, k, v))
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
