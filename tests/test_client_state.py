"""What a federated client keeps between rounds: its top-k residual and its AdamW moments, never sent."""

import torch
from flwr.app import RecordDict

from aim_core.federated.local import ClientStore, optimizer_tensors, restore_optimizer


def test_a_folder_store_gives_the_latest_earlier_round_and_keeps_two(tmp_path):
    store = ClientStore(str(tmp_path), None)
    assert store.load("residual", 1) is None
    for r in (1, 2, 3):
        store.save("residual", r, {"w": torch.full((3,), float(r))})
    assert store.load("residual", 4)["w"][0] == 3  # after round 3, for round 4
    assert store.load("residual", 3)["w"][0] == 2  # a run resumed after round 2 gets round 2's residual
    assert sorted(p.name for p in tmp_path.iterdir()) == ["residual_round00002.safetensors",
                                                         "residual_round00003.safetensors"]


def test_without_a_folder_the_run_context_keeps_it():
    state = RecordDict()
    store = ClientStore(None, state)
    store.save("optimizer", 2, {"0.exp_avg": torch.ones(2)})
    assert store.load("optimizer", 2) is None  # not for the round that wrote it
    assert torch.equal(store.load("optimizer", 3)["0.exp_avg"], torch.ones(2))


def test_adamw_moments_survive_a_round_trip_into_a_new_optimiser():
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(2, 2))]
    first = torch.optim.AdamW(weights, lr=1e-2)
    for _ in range(3):
        first.zero_grad()
        sum(w.square().sum() for w in weights).backward()
        first.step()
    second = torch.optim.AdamW(weights, lr=1e-2)
    restore_optimizer(second, optimizer_tensors(first))
    for a, b in zip(first.state_dict()["state"].values(), second.state_dict()["state"].values()):
        assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
