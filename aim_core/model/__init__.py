"""The AIM video model: bottleneck adapters (`adapter`), fused attention over the frozen weights (`attention`), the
frozen open_clip and timm backbones taken apart (`backbones`), the ViT and Swin video models (`vit`, `swin`, with
what they share in `layers`), `factory.build_model`, the trainable set each module declares (`trainable`), and
parameter and multiply-add counts (`counting`). It knows nothing of videos on disk or of training."""
