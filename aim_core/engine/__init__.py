"""Training and evaluation, one engine for every mode: the training step and epoch (`step`), precision and device
(`precision`), loaders (`loaders`), multi-view evaluation and its reports (`evaluation`), checkpoint and adapter
files through one atomic writer (`checkpoint`), and a run's metrics log (`metrics_log`). Centralized training, DDP
and the Flower clients all run these same functions."""
