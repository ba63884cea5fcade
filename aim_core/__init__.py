"""aim_core: the library under aimfl, in layers that import downward only.

`config` (omegaconf configs with strict keys) is at the bottom; `model` (the AIM video model over a
frozen image backbone) and `data` (video lists, sampling, decoding, partitions, the synthetic world)
stand on it side by side; `engine` (the training step, evaluation, checkpoint I/O, loaders) uses both;
`federated` (what the Flower server and client apps share) is on top. Nothing here imports the Flower
apps (`server/`, `client/`) or the `aimfl` commands; `tests/test_layers.py` checks it.
"""
