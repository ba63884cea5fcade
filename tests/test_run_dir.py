"""Output folders: an earlier run is never silently overwritten, two runs never share a folder, and the temporary
files of an interrupted save are gone at the next start."""

import json

import pytest
from helpers import TINY, tiny_overrides

from aim_core.engine.run_dir import RunDirError, open_run_dir
from aimfl import cli


def test_a_folder_with_an_earlier_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "final.json").write_text("{}")
    (tmp_path / "my_notes.txt").write_text("not a run file")
    with pytest.raises(RunDirError, match="holds an earlier run \\(final.json, checkpoints\\)"):
        open_run_dir(str(tmp_path))
    open_run_dir(str(tmp_path), resume=True).close()
    assert (tmp_path / "final.json").exists()
    open_run_dir(str(tmp_path), overwrite=True).close()
    assert not (tmp_path / "final.json").exists() and not (tmp_path / "checkpoints").exists()
    assert (tmp_path / "my_notes.txt").read_text() == "not a run file"  # what a run did not write stays


def test_a_second_run_into_a_locked_folder_fails_naming_the_holder(tmp_path):
    import os

    first = open_run_dir(str(tmp_path))
    with pytest.raises(RunDirError, match=f"in use by another run \\(PID {os.getpid()}\\)"):
        open_run_dir(str(tmp_path), resume=True)
    first.close()
    open_run_dir(str(tmp_path), resume=True).close()  # the lock goes with its holder


def test_temporaries_of_an_interrupted_save_are_removed_at_the_next_start(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / "checkpoints" / "last.pt.tmp-12345", tmp_path / "best.safetensors.tmp-999"]
    for path in stale:
        path.write_bytes(b"x" * 1000)
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"kept")
    open_run_dir(str(tmp_path), resume=True)
    assert not any(path.exists() for path in stale) and (tmp_path / "checkpoints" / "last.pt").exists()


def test_train_refuses_an_existing_run_and_overwrite_replaces_it_without_mixing_metrics(synthetic_world, tmp_path,
                                                                                       capsys):
    out = tmp_path / "run"
    one_epoch = tiny_overrides(synthetic_world, out, "schedule.epochs=1", "schedule.warmup_epochs=0")
    args = ["train", TINY, *one_epoch]
    assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "holds an earlier run" in err and str(out) in err and len(err.strip().splitlines()) == 1
    assert cli.main([*args, "overwrite=true"]) == 0
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_a_missing_training_list_fails_before_anything_is_written(synthetic_world, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli.main(["train", TINY, *tiny_overrides(synthetic_world, out),
                     f"data.train_list={tmp_path}/nowhere.txt"]) == 2
    assert "nowhere.txt does not exist" in capsys.readouterr().err
    assert not out.exists()
