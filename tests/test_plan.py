"""The sweep plan's trial order (Tune starts trials in this order) and the driver's background start-up work."""

import threading

import pytest

from orchestrator.config import parse_sweep_config
from orchestrator.startup import in_background
from orchestrator.plan import plan_trials


def test_longest_trials_first_and_base_last():
    cfg = parse_sweep_config({"name": "t", "seeds": [0, 1], "layers": [2, 0]})
    names = [spec.name for spec in plan_trials(cfg, num_layers=4)]
    assert names == ["full-s0", "full-s1", "layer00-s0", "layer00-s1", "layer02-s0", "layer02-s1", "base-s0"]
    without = parse_sweep_config({"name": "t", "include_base": False, "include_full": False, "layers": [3]})
    assert [spec.name for spec in plan_trials(without, num_layers=4)] == ["layer03-s0"]


def test_background_work_returns_its_result_from_another_thread():
    seen = {}

    def work() -> int:
        seen["thread"] = threading.current_thread().name
        return 42

    result = in_background(work)
    assert result() == 42 and seen["thread"] != threading.current_thread().name


def test_background_work_error_is_raised_to_the_caller():
    def bad_dataset() -> None:
        raise ValueError("task.dataset.path='missing.jsonl' does not exist")

    with pytest.raises(ValueError, match="missing.jsonl"):
        in_background(bad_dataset)()
