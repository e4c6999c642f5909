"""Bad input fed through the CLI as a user would: a non-zero exit, at most two lines on stderr, no traceback,
the field named, and nothing already written lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.config import ResourcesConfig
from orchestrator.resources import check_trial_fits

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "tiny-test.yaml")
PLUGINS = '''
def raises(prompts, completions, **meta):
    raise RuntimeError("reward server unreachable")

def constant(prompts, completions, **meta):
    return [1.0] * len(completions)
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One embedded-model cache for the module (the tiny model pre-trains once), a plugin module on the path,
    no progress bars (they go to stderr)."""
    root = tmp_path_factory.mktemp("bad-input")
    (root / "plugins").mkdir()
    (root / "plugins" / "bad_rewards.py").write_text(PLUGINS)
    return {**os.environ, "LAYERSWEEP_CACHE": str(root / "cache"), "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1", "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join([str(root / "plugins"), str(REPO), os.environ.get("PYTHONPATH", "")])}


def cli(env: dict, *args: str) -> tuple[int, list[str]]:
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, [line for line in result.stderr.splitlines() if line.strip()]


def one_error(lines: list[str]) -> str:
    """The error line; at most one other line (Ray's 'Started a local Ray instance') may precede it."""
    assert 1 <= len(lines) <= 2, lines
    assert lines[-1].startswith("layersweep: error: "), lines
    return lines[-1]


def test_an_empty_config_file_is_refused_but_an_explicit_mapping_means_defaults(env, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here yet\n")
    code, lines = cli(env, "trial", str(empty), "--base")
    assert code == 2 and "the config file is empty; write {} in it to run every default" in one_error(lines)
    from orchestrator.config import load_sweep_config

    explicit = tmp_path / "defaults.yaml"
    explicit.write_text("{}\n")
    assert load_sweep_config(explicit).budget.steps == 100


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("/nonexistent/model-dir", "model.source='/nonexistent/model-dir': no such directory"),
        ("someorg/no-such-model", "model.source='someorg/no-such-model': no local directory"),
        (".", "exists but is not an HF model directory (no config.json in it)"),
    ],
)
def test_a_model_source_that_cannot_be_found_is_one_line(env, tmp_path, source, expected):
    code, lines = cli(env, "trial", TINY, "--base", "--set", f"model.source={source}", "--out", str(tmp_path / "t"))
    assert code == 2 and expected in one_error(lines)


def test_a_sweep_over_an_earlier_one_with_a_bad_model_leaves_it_untouched(env, tmp_path):
    sweep_dir = tmp_path / "runs" / "tiny-test"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "config.yaml").write_text("earlier: sweep\n")
    (sweep_dir / "results.parquet").write_bytes(b"earlier results")
    code, lines = cli(env, "run", TINY, "--set", "model.source=/nonexistent/model-dir", "--set", f"output_dir={tmp_path / 'runs'}")
    assert code == 2 and "model.source='/nonexistent/model-dir'" in one_error(lines)
    assert (sweep_dir / "config.yaml").read_text() == "earlier: sweep\n"
    assert (sweep_dir / "results.parquet").read_bytes() == b"earlier results"


@pytest.mark.slow
def test_more_gpus_than_the_cluster_has_fails_before_any_trial(env, tmp_path):
    code, lines = cli(env, "run", TINY, "--set", "resources.gpus_per_trial=0.5", "--set", f"output_dir={tmp_path / 'runs'}")
    error = one_error(lines)
    assert code == 2 and "resources.gpus_per_trial=0.5: no node of the Ray cluster has 0.5 GPUs (largest node: 0" in error
    assert not (tmp_path / "runs").exists()  # nothing planned, nothing written
    code, lines = cli(env, "run", TINY, "--set", "resources.gpus_per_trial=1.5", "--set", f"output_dir={tmp_path / 'runs'}")
    assert code == 2 and "gpus_per_trial=1.5: Ray accepts fractions only below 1; counts above 1 must be whole numbers" in one_error(lines)


def test_trial_fit_against_node_resources():
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0}}, {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    check_trial_fits(ResourcesConfig(cpus_per_trial=8), nodes)
    check_trial_fits(ResourcesConfig(cpus_per_trial=4, gpus_per_trial=0.25), nodes)
    with pytest.raises(ValueError, match=r"resources.cpus_per_trial=16: no node .* has 16 CPUs \(largest node: 8, cluster total: 12\)"):
        check_trial_fits(ResourcesConfig(cpus_per_trial=16), nodes)  # the dead 64-CPU node does not count
    with pytest.raises(ValueError, match=r"resources.gpus_per_trial=2: no node .* has 2 GPUs \(largest node: 1"):
        check_trial_fits(ResourcesConfig(gpus_per_trial=2), nodes)
    with pytest.raises(ValueError, match="no single node has both cpus_per_trial=8 CPUs and gpus_per_trial=1 GPUs"):
        check_trial_fits(ResourcesConfig(cpus_per_trial=8, gpus_per_trial=1), nodes)


def _dataset(tmp_path: Path, rows: list[dict]) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return str(path)


def test_dataset_rows_without_an_answer_fail_before_training(env, tmp_path):
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(12)]
    rows[5] = {"question": "What is 5 + 1?"}
    rows[9]["answer"] = None
    data = _dataset(tmp_path, rows)
    code, lines = cli(env, "trial", TINY, "--layer", "0", "--set", "task.kind=math", "--set", f"task.dataset={{path: {data}}}",
                      "--out", str(tmp_path / "t"))
    error = one_error(lines)
    assert code == 2 and "train_split='train'" in error and "row 5 has no 'answer' (task.dataset.answer_field)" in error
    assert "(2 of 12 rows lack a prompt or an answer)" in error
    assert not (tmp_path / "t" / "metrics.jsonl").exists() or not (tmp_path / "t" / "metrics.jsonl").read_text()


def test_an_empty_eval_split_is_named(env, tmp_path):
    train = _dataset(tmp_path, [{"question": "What is 1 + 1?", "answer": "2"}] * 4)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, lines = cli(env, "trial", TINY, "--base", "--set", "task.kind=math",
                      "--set", f"task.dataset={{path: {train}, eval_path: {empty}}}", "--out", str(tmp_path / "t"))
    error = one_error(lines)
    assert code == 2 and f"task.dataset eval_split='test' of '{empty}': the split has no rows" in error


@pytest.mark.slow
def test_a_sweep_checks_every_dataset_row_before_any_trial(env, tmp_path):
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(12)]
    rows[3] = {"answer": "4"}
    data = _dataset(tmp_path, rows)
    code, lines = cli(env, "run", TINY, "--set", "task.kind=math", "--set", f"task.dataset={{path: {data}}}",
                      "--set", f"output_dir={tmp_path / 'runs'}")
    assert code == 2 and "row 3 has no 'question' (task.dataset.prompt_field)" in one_error(lines)
    assert not (tmp_path / "runs").exists()  # no trial started, nothing written


def test_sweep_exit_codes():
    import pandas as pd

    from orchestrator.results import sweep_verdict

    def table(*statuses, errors=None):
        kinds = ["base", "full", "layers", "layers"][: len(statuses)]
        trials = ["base-s0", "full-s0", "layer00-s0", "layer01-s0"][: len(statuses)]
        return pd.DataFrame({"kind": kinds, "trial": trials, "status": list(statuses), "error": errors or [None] * len(statuses)})

    assert sweep_verdict(table("done", "done", "no_learning", "done")) == (0, None)
    assert sweep_verdict(table("done", "done", "done", "failed"), min_finished_layer_share=0.5) == (0, None)
    code, reason = sweep_verdict(table("done", "done", "done", "failed", errors=[None, None, None, "OOM at step 3"]))
    assert code == 1 and reason == "50% of the layer trials finished, below min_finished_layer_share=1 (layer01-s0: OOM at step 3)"
    code, reason = sweep_verdict(table("done", "failed", "done", "done", errors=[None, "NonFiniteLossError: step 2", None, None]))
    assert code == 1 and reason == "1 reference or trained-set trial(s) did not finish (full-s0: NonFiniteLossError: step 2)"
    assert sweep_verdict(table("done", "no_learning", "no_learning"))[0] == 3  # the base alone is not success
    assert sweep_verdict(table("done")) == (0, None)  # a base-only sweep (include_full/layers off) that evaluated


def test_a_reward_plugin_that_always_raises_fails_the_trial_with_its_own_error(env, tmp_path):
    out = tmp_path / "t"
    code, lines = cli(env, "trial", TINY, "--layer", "1", "--set", "task.reward=bad_rewards:raises", "--set", "budget.steps=6",
                      "--out", str(out))
    error = one_error(lines)
    assert code == 2
    assert "task.reward='bad_rewards:raises' raised on 3 of 3 calls (limit task.reward_failure_share=0.5)" in error
    assert "first error: RuntimeError: reward server unreachable" in error
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and [s["reward_errors"] for s in steps] == [1.0, 1.0]  # kept, counted


def test_a_trial_without_learning_signal_exits_non_zero_and_keeps_its_score(env, tmp_path):
    out = tmp_path / "t"
    code, lines = cli(env, "trial", TINY, "--layer", "1", "--set", "task.reward=bad_rewards:constant", "--out", str(out))
    error = one_error(lines)
    assert code == 3 and "trial layer01-s0 did not learn" in error
    score = json.loads((out / "score.json").read_text())
    assert score["learned"] is False and score["steps"] == 2
    assert all(json.loads(line)["nonzero_advantage_rows"] == 0 for line in (out / "metrics.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_a_sweep_whose_training_trials_did_not_learn_ranks_nothing_and_exits_3(env, tmp_path):
    import pandas as pd

    code, lines = cli(env, "run", TINY, "--no-dashboard", "--set", "task.reward=bad_rewards:constant", "--set", "layers=[0]",
                      "--set", f"output_dir={tmp_path / 'runs'}")
    assert code == 3, lines
    sweep_dir = tmp_path / "runs" / "tiny-test"
    table = pd.read_parquet(sweep_dir / "results.parquet").set_index("trial")
    assert table.loc["base-s0", "status"] == "done"
    assert table.loc["full-s0", "status"] == "no_learning" and table.loc["layer00-s0", "status"] == "no_learning"
    assert table["score"].notna().all()  # their scores are kept for the record
    ranking = (sweep_dir / "ranking.md").read_text()
    assert "not ranked, no learning signal (all-zero advantages or unchanged weights): full-s0, layer00-s0" in ranking
    assert "| 1 | 0 |" not in ranking  # layer 0 has no rank


def test_the_command_exits_with_its_status_and_all_its_output_after_skipping_teardown(env):
    """`console_main` ends the process from its last exit handler: the status and every line must survive."""
    helped = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--help"], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=120)
    assert helped.returncode == 0 and "apply-delta" in helped.stdout and helped.stdout.endswith("\n")
    code, lines = cli(env, "no-such-command")
    assert code == 2 and "invalid choice: 'no-such-command'" in lines[-1]
    code, lines = cli(env, "report", str(REPO / "no-such-sweep"))
    assert code == 2 and "no-such-sweep" in one_error(lines)
