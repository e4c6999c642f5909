"""Step metrics reach MLflow in batches: kept until `flush_every_s` passes, written by `flush` and at a trial's end."""

from mlflow.tracking import MlflowClient

from orchestrator.tracking import SweepTracker

SPEC = {"kind": "layers", "layers": [1], "seed": 0}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _steps(uri: str, run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, "reward_mean"))


def _tracker(tmp_path, monkeypatch, flush_every_s: float, clock: Clock) -> tuple[str, SweepTracker, str]:
    """(URI, tracker, the run id of trial layer01-s0) on a new sqlite store under `tmp_path`."""
    monkeypatch.setenv("LAYERSWEEP_CACHE", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "layersweep", tmp_path, flush_every_s=flush_every_s, clock=clock)
    tracker.start_sweep("s", {"seed": 0})
    return uri, tracker, tracker.trial_run("layer01-s0", SPEC)


def test_steps_are_kept_until_the_interval_passes_then_written_together(tmp_path, monkeypatch):
    clock = Clock()
    uri, tracker, run_id = _tracker(tmp_path, monkeypatch, 5.0, clock)
    for step in (1, 2, 3):
        clock.now += 1.0
        assert tracker.log_step("layer01-s0", SPEC, {"step": step, "reward_mean": 0.1 * step, "loss": float("nan")})
    assert _steps(uri, run_id) == []  # 2 s since the run's first step: kept
    clock.now += 3.0
    assert tracker.log_step("layer01-s0", SPEC, {"step": 4, "reward_mean": 0.4})
    assert _steps(uri, run_id) == [1, 2, 3, 4]  # 5 s: written, all four in one call
    assert not tracker.log_step("layer01-s0", SPEC, {"step": 4, "reward_mean": 0.4})  # a step it has: skipped
    tracker.log_step("layer01-s0", SPEC, {"step": 5, "reward_mean": 0.5})
    tracker.flush("layer01-s0")  # a checkpoint
    assert _steps(uri, run_id) == [1, 2, 3, 4, 5]
    tracker.log_step("layer01-s0", SPEC, {"step": 6, "reward_mean": 0.6})
    tracker.finish_trial("layer01-s0", SPEC, {"score": 0.7, "steps": 6})
    client = MlflowClient(tracking_uri=uri)
    assert _steps(uri, run_id) == [1, 2, 3, 4, 5, 6]
    assert [m.value for m in client.get_metric_history(run_id, "reward_mean")][-1] == 0.6
    assert client.get_metric_history(run_id, "loss") == []  # non-finite values are never logged
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_new_tracker_on_the_same_store_skips_the_steps_written_and_zero_interval_writes_each_step(tmp_path, monkeypatch):
    uri, first, run_id = _tracker(tmp_path, monkeypatch, 60.0, Clock())
    for step in (1, 2, 3):
        first.log_step("layer01-s0", SPEC, {"step": step, "reward_mean": 0.1})
    first.flush()
    first.log_step("layer01-s0", SPEC, {"step": 4, "reward_mean": 0.1})  # never written: the driver "dies" here
    resumed = SweepTracker(uri, "layersweep", tmp_path)  # flush_every_s=0: every step at once
    assert not resumed.log_step("layer01-s0", SPEC, {"step": 3, "reward_mean": 0.1})
    assert resumed.log_step("layer01-s0", SPEC, {"step": 4, "reward_mean": 0.1})
    assert _steps(uri, run_id) == [1, 2, 3, 4]


def test_whole_steps_never_splits_a_step_unless_one_step_is_over_the_limit():
    from mlflow.entities import Metric

    from orchestrator.tracking import whole_steps

    metrics = [Metric(f"k{i}", 1.0, 0, step) for step in (1, 2, 3) for i in range(4)]  # 3 steps of 4 metrics
    assert len(whole_steps(metrics, 12)) == 12
    assert [m.step for m in whole_steps(metrics, 11)] == [1] * 4 + [2] * 4  # step 3 would be cut: left out
    assert [m.step for m in whole_steps(metrics, 4)] == [1] * 4
    assert len(whole_steps(metrics, 3)) == 3  # one step over the limit: cut, as it cannot be written whole


class FailingOnce:
    """The real MLflow client, whose next log_batch fails once (a locked database, a lost server)."""

    def __init__(self, client: MlflowClient) -> None:
        self.client, self.fail_next = client, True

    def log_batch(self, run_id, **batch):
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("tracking server unreachable")
        return self.client.log_batch(run_id, **batch)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_a_failed_write_keeps_the_steps_for_the_next_one(tmp_path, monkeypatch):
    import pytest

    uri, tracker, run_id = _tracker(tmp_path, monkeypatch, 60.0, Clock())
    for step in (1, 2):
        tracker.log_step("layer01-s0", SPEC, {"step": step, "reward_mean": 0.1})
    tracker.client = FailingOnce(tracker.client)
    with pytest.raises(ConnectionError):
        tracker.flush("layer01-s0")
    assert _steps(uri, run_id) == []
    tracker.log_step("layer01-s0", SPEC, {"step": 3, "reward_mean": 0.1})
    tracker.flush()
    assert _steps(uri, run_id) == [1, 2, 3]  # each step once
