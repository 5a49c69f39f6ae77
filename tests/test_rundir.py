"""The run directory's readers and writers (inat_zoo.rundir): strict reads, atomic writes, the test-metrics rule."""

from __future__ import annotations

import pytest

from inat_zoo.errors import UsageError
from inat_zoo.rundir import (
    HISTORY_FILE,
    complete_checkpoints,
    is_run_dir,
    published_test_accuracy,
    read_history,
    read_metrics,
    read_recipe,
    write_checkpoint_state,
    write_history,
    write_metrics,
    write_recipe,
)


def test_written_files_read_back(tmp_path):
    write_recipe(tmp_path, "model:\n  name: inat_cnn\n")
    write_history(tmp_path, [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.6}])
    assert is_run_dir(tmp_path)
    write_metrics(tmp_path, {"test": {"accuracy": 0.7}})
    assert read_recipe(tmp_path) == {"model": {"name": "inat_cnn"}}
    assert [r["epoch"] for r in read_history(tmp_path)] == [1, 2]
    assert read_metrics(tmp_path) == {"test": {"accuracy": 0.7}}
    assert read_metrics(tmp_path, "eval") is None


def test_readers_name_the_malformed_file(tmp_path):
    (tmp_path / HISTORY_FILE).write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(UsageError, match=r"history.jsonl:2: not a JSON line"):
        read_history(tmp_path)
    with pytest.raises(UsageError, match="run recipe .* does not exist"):
        read_recipe(tmp_path)
    (tmp_path / "metrics.json").write_text("{")
    with pytest.raises(UsageError, match="cannot read .*metrics.json"):
        read_metrics(tmp_path)


def test_only_committed_checkpoints_count(tmp_path):
    for update in (10, 2):
        write_checkpoint_state(tmp_path / "checkpoints" / f"checkpoint_{update}", {})
    (tmp_path / "checkpoints" / "checkpoint_30").mkdir()  # no state file: not committed
    write_checkpoint_state(tmp_path / "checkpoints" / ".checkpoint_40.partial", {})
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint_2", "checkpoint_10"]


def test_published_test_accuracy_prefers_the_trainer_then_evaluate_on_test():
    assert published_test_accuracy({"test": {"accuracy": 0.7}}, {"split": "test", "accuracy": 0.6}) == 0.7
    assert published_test_accuracy({}, {"split": "test", "accuracy": 0.6}) == 0.6
    assert published_test_accuracy({}, {"split": "validation", "accuracy": 0.6}) is None
    assert published_test_accuracy(None) is None
