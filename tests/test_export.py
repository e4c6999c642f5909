"""From a trial to usable models: the HF export, the layer delta and apply-delta, and `layersweep train`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from orchestrator.cli import main
from orchestrator.config import load_sweep_config
from workers.spec import TrialSpec

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny-test.yaml"


def model_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


@pytest.fixture()
def trained_subset(tiny_config_path, tmp_path):
    """A finished in-process trial training layers 0 and 2 together, with its greedy outputs on eval prompts."""
    from workers.runner import TrialRunner

    cfg = load_sweep_config(tiny_config_path).trial_config()
    runner = TrialRunner(cfg, TrialSpec("subset", (0, 2)), tmp_path / "trial")
    try:
        while not runner.done:
            runner.advance()
            runner.save(tmp_path / "trial" / "checkpoint")
        runner.finish()
        prompts = [e.prompt for e in runner.trial.task.eval_examples()[:16]]
        greedy = runner.trial.engine.greedy(prompts, cfg.rollout.max_new_tokens)
        trained = {name: p.detach().clone() for name, p in runner.trial.trainable.items()}
        yield cfg, runner.trial.model_dir, tmp_path / "trial", prompts, greedy, trained
    finally:
        runner.close()


def test_export_loads_with_hf_and_greedy_matches_the_trainer(trained_subset, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rollout.hf_engine import HFEngine
    from workers.export import export_trial

    cfg, base_dir, trial_dir, prompts, greedy, trained = trained_subset
    names = sorted(p.name for p in (trial_dir / "checkpoint").iterdir())  # one save per step: only the newest pair is left
    assert len(names) == 2 and names[1] == "trial_state.json" and names[0].startswith("trial_state-") and names[0].endswith(".safetensors")
    info = export_trial(trial_dir / "trained.safetensors", "set00+02-s0", "embedded", base_dir, "float32",
                        tmp_path / "model", tmp_path / "model-delta")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    tokenizer.padding_side = "left"
    assert HFEngine(model.eval(), tokenizer).greedy(prompts, cfg.rollout.max_new_tokens) == greedy
    base, exported = model_tensors(Path(base_dir)), model_tensors(tmp_path / "model")
    changed = sorted(name for name in base if not torch.equal(base[name], exported[name]))
    assert changed and changed == sorted(trained) and all(n.startswith(("model.layers.0.", "model.layers.2.")) for n in changed)
    assert all(torch.equal(exported[name], trained[name]) for name in trained)
    assert info.tensors == sorted(trained)
    trained_bytes = sum(t.numel() * t.element_size() for t in trained.values())
    assert 0 < info.delta_bytes - trained_bytes < 4096  # the trained tensors plus a safetensors header, nothing else
    assert info.model_bytes == sum(p.numel() * p.element_size() for p in model.parameters())


def test_apply_delta_rebuilds_bit_for_bit_and_refuses_another_base(trained_subset, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    cfg, base_dir, trial_dir, *_ = trained_subset
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "trials" / "set00+02-s0").mkdir(parents=True)
    (sweep_dir / "trials" / "set00+02-s0" / "trained.safetensors").write_bytes((trial_dir / "trained.safetensors").read_bytes())
    (sweep_dir / "config.yaml").write_text(TINY.read_text())  # the same config: its base model is the cached one
    (sweep_dir / "plan.json").write_text(json.dumps({"num_layers": 3, "trials": []}))
    assert main(["export", str(sweep_dir), "set00+02-s0", "--out", str(tmp_path / "model")]) == 0
    assert "layer delta:" in capsys.readouterr().out
    assert main(["apply-delta", str(tmp_path / "model-delta"), "--base", str(base_dir), "--out", str(tmp_path / "rebuilt")]) == 0
    exported, rebuilt = model_tensors(tmp_path / "model"), model_tensors(tmp_path / "rebuilt")
    assert exported.keys() == rebuilt.keys() and all(torch.equal(exported[k], rebuilt[k]) for k in exported)

    other = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        other.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3  # a different base, in a layer the delta does not touch
    other.save_pretrained(tmp_path / "other-base")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(base_dir) / name).exists():
            (tmp_path / "other-base" / name).write_bytes((Path(base_dir) / name).read_bytes())
    capsys.readouterr()
    code = main(["apply-delta", str(tmp_path / "model-delta"), "--base", str(tmp_path / "other-base"), "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "are not the base this delta was trained from (embedded" in err and "refusing to apply" in err
    assert not (tmp_path / "bad").exists()


def test_export_of_an_untrained_trial_is_a_one_line_error(tmp_path, capsys, tiny_config_path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "config.yaml").write_text(Path(tiny_config_path).read_text())
    (sweep_dir / "plan.json").write_text(json.dumps({"num_layers": 3, "trials": []}))
    assert main(["export", str(sweep_dir), "base-s0", "--out", str(tmp_path / "m")]) == 2
    assert "trial base-s0 has not finished training" in capsys.readouterr().err


def test_export_refuses_a_base_that_is_not_the_one_the_trial_started_from(trained_subset, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.export import export_trial

    cfg, base_dir, trial_dir, *_ = trained_subset
    other = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        other.model.layers[2].mlp.up_proj.weight[0, 0] += 1e-3  # a trained layer's starting values differ
    other.save_pretrained(tmp_path / "other-base")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp_path / "other-base")
    with pytest.raises(ValueError, match=r"are not the ones it started from .*; refusing to export onto another base model$"):
        export_trial(trial_dir / "trained.safetensors", "set00+02-s0", "embedded", tmp_path / "other-base", "float32",
                     tmp_path / "model", tmp_path / "model-delta")
    assert not (tmp_path / "model").exists()
