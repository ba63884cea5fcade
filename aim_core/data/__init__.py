"""Videos on disk, from list to tensor: the list formats and their errors (`annotations`), the paper's dense and
uniform frame sampling and test views (`sampling`), clip-consistent augmentation (`transforms`), the decord
datasets that decode only the sampled frames and count unreadable videos (`video`), federated splits of a list
(`partition`), and the synthetic world the tests and the demo train on (`synthetic`). It knows nothing of models."""
