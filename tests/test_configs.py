"""Every shipped preset loads, validates and, where it needs no hub access, builds its task."""

from pathlib import Path

import pytest

from orchestrator.config import load_sweep_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_the_presets_are_found():
    assert {"default.yaml", "tiny-frozenlake-gigpo.yaml", "tiny-sokoban-gigpo.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_preset_loads_and_its_environment_builds(path):
    cfg = load_sweep_config(str(path), {})
    assert cfg.name == path.stem
    if cfg.task.kind == "agentic":
        from rollout.tasks.agentic import AgenticTask

        task = AgenticTask(cfg.task.agentic)
        env = task.env_factory()()
        assert env.reset(task.eval_seeds[0]) and env.state_key() is not None
