"""Reward plugins: `package.module:function` loading, one-line errors naming task.reward, use by a task."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rollout.config import DatasetConfig, TaskConfig
from rollout.tasks.base import reward_meta
from rollout.tasks.registry import build_task
from rollout.tasks.plugin import call_reward_plugin, load_reward_plugin

PLUGIN_SOURCE = '''
def length_reward(prompts, completions, **meta):
    return [float(len(c)) for c in completions]

def answer_only(prompts, completions, answer):
    return [float(c == a) for c, a in zip(completions, answer)]

class Scorer:
    @staticmethod
    def score(prompts, completions, **meta):
        return [0.5] * len(completions)

def raises(prompts, completions, **meta):
    raise RuntimeError("plugin bug")

def too_short(prompts, completions, **meta):
    return [1.0]

def one_argument(completions):
    return [0.0] * len(completions)

NOT_CALLABLE = 3
'''


@pytest.fixture()
def plugin_module(tmp_path, monkeypatch):
    name = f"layersweep_test_plugin_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    (tmp_path / "layersweep_broken_plugin.py").write_text("import no_such_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_loads_functions_and_nested_attributes(plugin_module):
    assert load_reward_plugin(f"{plugin_module}:length_reward")([""], ["abc"], answer=["x"]) == [3.0]
    assert load_reward_plugin(f"{plugin_module}:answer_only")([""], ["x"], answer=["x"]) == [1.0]
    assert load_reward_plugin(f"{plugin_module}:Scorer.score")([""], ["a", "b"], answer=["", ""]) == [0.5, 0.5]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_colon_here", "expected 'package.module:function'"),
        (":function", "expected 'package.module:function'"),
        ("layersweep_no_such_pkg.rewards:f", "cannot import 'layersweep_no_such_pkg.rewards' (ModuleNotFoundError"),
        ("layersweep_broken_plugin:f", "cannot import 'layersweep_broken_plugin' (ModuleNotFoundError"),
        ("{mod}:missing", "has no attribute 'missing'"),
        ("{mod}:NOT_CALLABLE", "'NOT_CALLABLE' is a int, not a function"),
        ("{mod}:one_argument", "cannot take (prompts, completions, **meta)"),
    ],
)
def test_errors_are_one_line_value_errors_naming_task_reward(plugin_module, spec, message):
    spec = spec.format(mod=plugin_module)
    with pytest.raises(ValueError) as info:
        load_reward_plugin(spec)
    text = str(info.value)
    assert text.startswith(f"task.reward={spec!r}: ")
    assert message in text
    assert "\n" not in text


def test_a_math_task_uses_the_plugin_instead_of_its_reward(plugin_module):
    path = str(Path(__file__).parent / "fixtures" / "gsm8k_sample.jsonl")
    cfg = TaskConfig(kind="math", dataset=DatasetConfig(path=path, max_train=2, max_eval=2),
                     reward=f"{plugin_module}:length_reward")  # fmt: skip
    task = build_task(cfg, None)
    examples = task.train_examples()
    assert task.reward([e.prompt for e in examples], ["ab", "abcd"], **reward_meta(examples)) == [2.0, 4.0]
    assert task.is_correct("#### 18", examples[0])  # evaluation still uses the built-in check


def test_a_bad_plugin_fails_when_the_task_is_built(plugin_module):
    path = str(Path(__file__).parent / "fixtures" / "gsm8k_sample.jsonl")
    cfg = TaskConfig(kind="math", dataset=DatasetConfig(path=path), reward=f"{plugin_module}:missing")
    with pytest.raises(ValueError, match="task.reward="):
        build_task(cfg, None)


def test_plugin_exceptions_score_zero_and_wrong_lengths_raise(plugin_module, caplog):
    spec = f"{plugin_module}:raises"
    assert call_reward_plugin(load_reward_plugin(spec), spec, ["", ""], ["a", "b"], {"answer": ["", ""]}) == [0.0, 0.0]
    assert "plugin bug" in caplog.text
    spec = f"{plugin_module}:too_short"
    with pytest.raises(ValueError, match="returned 1 rewards for 2 completions"):
        call_reward_plugin(load_reward_plugin(spec), spec, ["", ""], ["a", "b"], {"answer": ["", ""]})


def test_the_plugin_replaces_the_arithmetic_reward_too(plugin_module):
    from rollout.config import ArithmeticConfig

    cfg = TaskConfig(arithmetic=ArithmeticConfig(num_train=4, num_eval=2), reward=f"{plugin_module}:length_reward")
    task = build_task(cfg, None)
    examples = list(task.train_examples())[:2]
    assert task.reward([e.prompt for e in examples], ["a", "abc"], **reward_meta(examples)) == [1.0, 3.0]
    assert task.name == "arithmetic"


def test_raising_calls_are_counted_and_end_the_trial_past_the_share(plugin_module):
    from rollout.config import ArithmeticConfig
    from rollout.tasks.plugin import PluginRewardTask, RewardPluginError

    base = build_task(TaskConfig(arithmetic=ArithmeticConfig(num_train=4, num_eval=2)), None)
    task = PluginRewardTask(base, f"{plugin_module}:raises", failure_share=0.5, grace_steps=2)
    assert task.reward(["p", "q"], ["c", "d"], answer=["1", "2"]) == [0.0, 0.0]  # scored 0, not raised
    assert (task.failures.calls, task.failures.failed) == (1, 1)
    task.check_failures()  # one call: still within the grace of 2
    task.reward(["p"], ["c"], answer=["1"])
    with pytest.raises(RewardPluginError, match=r"raised on 2 of 2 calls \(limit task.reward_failure_share=0.5\); "
                                                r"first error: RuntimeError: plugin bug$"):
        task.check_failures()
    flaky = PluginRewardTask(base, f"{plugin_module}:length_reward", failure_share=0.5, grace_steps=1)
    for error in (None, RuntimeError("once"), None, None):
        flaky.failures.record(error)
    flaky.check_failures()  # 1 of 4 calls raised: below the share, the trial goes on
    flaky.failures.record(RuntimeError("twice"))
    flaky.failures.record(RuntimeError("thrice"))
    flaky.check_failures()  # 3 of 6: exactly the share, not more
    flaky.failures.record(RuntimeError("four times"))
    with pytest.raises(RewardPluginError, match="raised on 4 of 7 calls .* first error: RuntimeError: once$"):
        flaky.check_failures()
