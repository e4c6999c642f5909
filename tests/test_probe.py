"""The zero-training probe on a real tiny model: its lookahead equals a real single-layer AdamW step, its
correlation with measured contributions, the CLI, and a probe-then-train sweep on real local Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from orchestrator.config import load_sweep_config
from orchestrator.probe import correlations, probe_table, top_layers
from test_aggregate import table as results_table
from workers.probe import ProbeResult

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny-test.yaml"


@pytest.fixture()
def tiny(tmp_path):
    from workers.base_model import load_model_and_tokenizer, resolve_model_dir
    from workers.probe import probe_rollouts

    cfg = load_sweep_config(TINY, {"model.cache_dir": str(tmp_path / "cache"), "budget.prompts_per_step": 8,
                                   "optim.warmup_steps": 1}).trial_config()
    model_dir = resolve_model_dir(cfg)
    model, tokenizer = load_model_and_tokenizer(model_dir)
    return cfg, model_dir, model, probe_rollouts(cfg, model, tokenizer, model_dir, batches=2)


def test_lookahead_is_the_held_out_gain_of_a_real_single_layer_adamw_step(tiny):
    """The probe's lookahead for layer 1, recomputed the way a trial trains: only layer 1 trainable, the trial's
    frozen-prefix scorer, policy_update with torch's AdamW on the gradient batch."""
    from workers.base_model import load_model_and_tokenizer
    from workers.policy import PolicyScorer
    from workers.probe import first_step_lr, measure_signals, surrogate_loss
    from workers.spec import TrialSpec
    from workers.trainable import select_trainable
    from workers.update import policy_update

    cfg, model_dir, model, rollouts = tiny
    before_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    signals = measure_signals(model, cfg, rollouts, [0, 1, 2])
    assert all(torch.equal(p, before_weights[n]) for n, p in model.named_parameters())  # the probe restores every weight
    assert len(signals["lookahead"]) == 3 and all(v > 0 for v in signals["grad_norm"])

    trained, _ = load_model_and_tokenizer(model_dir)
    selection = select_trainable(trained, TrialSpec("layers", (1,)))
    params = [p for n, p in trained.named_parameters() if n in selection.parameter_names]
    evaluator = PolicyScorer(trained, selection.layout, None, cfg.rollout.temperature)
    with torch.no_grad():
        held_out_before = [surrogate_loss(evaluator, batch, cfg) for batch in rollouts.held_out]
    optimizer = torch.optim.AdamW(params, lr=first_step_lr(cfg), weight_decay=0.0)
    scorer = PolicyScorer(trained, selection.layout, selection.lowest_layer, cfg.rollout.temperature)
    policy_update(scorer, optimizer, params, rollouts.gradient[0], cfg.algorithm, cfg.rollout.max_new_tokens, cfg.optim.max_grad_norm)
    with torch.no_grad():
        held_out_after = [surrogate_loss(evaluator, batch, cfg, old)[0] for batch, (_, old) in zip(rollouts.held_out, held_out_before)]
    gain = sum(loss for loss, _ in held_out_before) - sum(held_out_after)
    assert gain != 0.0
    assert signals["lookahead"][1] == pytest.approx(gain, rel=1e-3, abs=1e-7)


def test_a_probe_whose_rollouts_carry_no_advantage_says_so_in_one_line(tmp_path, monkeypatch):
    """A constant reward gives every group equal rewards: nothing to rank by, and the probe must not pretend."""
    from workers.base_model import load_model_and_tokenizer, resolve_model_dir
    from workers.probe import NoProbeSignalError, probe_rollouts

    (tmp_path / "constant_reward.py").write_text("def one(prompts, completions, **meta):\n    return [1.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_sweep_config(TINY, {"model.cache_dir": str(tmp_path / "cache"), "task.reward": "constant_reward:one"}).trial_config()
    model_dir = resolve_model_dir(cfg)
    model, tokenizer = load_model_and_tokenizer(model_dir)
    with pytest.raises(NoProbeSignalError, match=r"^probe: all 1 gradient batches have zero advantage"):
        probe_rollouts(cfg, model, tokenizer, model_dir, batches=2)


def _probe(values: dict[str, list[float]], layers: list[int]) -> pd.DataFrame:
    return probe_table(ProbeResult(layers, values))


def test_correlations_rank_each_signal_against_measured_contributions():
    """Base 0.5, full 0.9: contributions 0.25, 1.0, 0.75, 0.5 for layers 0-3 (layer 1 best). A signal in the
    same order has rho +1, one in reverse order -1; hand-computed for the third: ranks (4,1,3,2) vs (4,1,2,3) ->
    rho = 1 - 6 * 2 / (4 * 15) = 0.8."""
    measured = results_table({0: 0.5}, {0: 0.9}, {0: {0: 0.6}, 1: {0: 0.9}, 2: {0: 0.8}, 3: {0: 0.7}}, num_layers=4, eval_size=10_000)
    signals = {"lookahead": [1.0, 4.0, 3.0, 2.0], "relative_gradient": [4.0, 1.0, 2.0, 3.0],
               "grad_norm": [1.0, 4.0, 2.0, 3.0], "block_influence": [0.1, 0.1, 0.1, 0.2]}
    rho = correlations(_probe(signals, [0, 1, 2, 3]), measured, "sweep").set_index("signal")
    assert rho.loc["lookahead", "spearman_rho"] == pytest.approx(1.0)
    assert rho.loc["relative_gradient", "spearman_rho"] == pytest.approx(-1.0)
    assert rho.loc["grad_norm", "spearman_rho"] == pytest.approx(0.8)
    assert rho["measured_top1"].eq(1).all() and rho.loc["lookahead", "probe_top1"] == 1
    assert rho.loc["relative_gradient", "probe_top1"] == 0 and rho["measured_basis"].eq("contribution").all()
    with pytest.raises(ValueError, match="only 2 probed layers have a measured value"):
        correlations(_probe({k: v[:2] for k, v in signals.items()}, [0, 1]), measured, "sweep")


def test_top_layers_takes_the_largest_signal_lower_layer_first_on_ties():
    table = _probe({"lookahead": [0.1, 0.3, 0.3, 0.2], "relative_gradient": [0.0] * 4, "grad_norm": [0.0] * 4,
                    "block_influence": [0.0] * 4}, [4, 5, 6, 7])
    assert top_layers(table, "lookahead", 2) == [5, 6]
    assert top_layers(table, "lookahead", 3) == [5, 6, 7]
    assert table["rank_lookahead"].tolist() == [4, 1, 2, 3]


@pytest.mark.slow
def test_a_sweep_that_starts_its_own_ray_probes_while_ray_starts(tmp_path):
    """Locally on CPUs the probe runs in the driver process, beside Ray's start, and chooses as the Ray task would."""
    from orchestrator.driver import run_sweep
    from orchestrator.startup import in_driver_probe_threads, probe_runs_in_driver, usable_cpus

    overrides = {"output_dir": str(tmp_path / "runs"), "model.cache_dir": str(tmp_path / "cache"), "budget.prompts_per_step": 8,
                 "budget.steps": 1, "probe": {"top_m": 1, "batches": 2}}
    cfg = load_sweep_config(TINY, overrides)
    assert probe_runs_in_driver(cfg, None)
    assert not probe_runs_in_driver(cfg, "ray://head:10001")  # a cluster's task gets a trial's resources
    assert not probe_runs_in_driver(load_sweep_config(TINY, {**overrides, "resources.gpus_per_trial": 1}), None)
    import ray

    try:
        table = run_sweep(cfg, emit=lambda line: None, include_dashboard=False)
    finally:
        ray.shutdown()
    sweep_dir = tmp_path / "runs" / "tiny-test"
    info = json.loads((sweep_dir / "probe.json").read_text())
    assert info["ran_in"] == "driver process" and info["batches"] == 2
    assert info["threads"] == (cfg.num_threads or usable_cpus())  # pinned, else every CPU: no trial runs yet
    unpinned = load_sweep_config(TINY, {**overrides, "num_threads": None})
    assert in_driver_probe_threads(unpinned) == usable_cpus() >= 1
    chosen = top_layers(pd.read_csv(sweep_dir / "probe.csv"), "lookahead", 1)
    assert sorted(table.loc[table["kind"] == "layers", "layer"]) == chosen
    assert set(table["status"]) == {"done"}


@pytest.mark.slow
def test_probe_then_train_sweep_and_probe_command(tmp_path, capsys):
    """A sweep with `probe: {top_m: 2}` probes the 3 layers on a Ray worker, trains only the probe's top 2, says so
    in its report; `layersweep probe --against` refuses a sweep with fewer than 3 measured layers."""
    import ray

    from orchestrator.cli import main
    from orchestrator.driver import run_sweep

    overrides = {"output_dir": str(tmp_path / "runs"), "model.cache_dir": str(tmp_path / "cache"), "budget.prompts_per_step": 8,
                 "probe": {"top_m": 2, "batches": 2}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        table = run_sweep(load_sweep_config(TINY, overrides), emit=lambda line: None, include_dashboard=False)
    finally:
        ray.shutdown()
    sweep_dir = tmp_path / "runs" / "tiny-test"
    probed = pd.read_csv(sweep_dir / "probe.csv")
    chosen = top_layers(probed, "lookahead", 2)
    assert sorted(probed["layer"]) == [0, 1, 2]
    assert sorted(table.loc[table["kind"] == "layers", "layer"]) == chosen
    assert set(table["status"]) == {"done"}
    assert f"the top 2 of 3 candidate layers by lookahead, {chosen}" in (sweep_dir / "ranking.md").read_text()
    info = json.loads((sweep_dir / "probe.json").read_text())
    assert info["ran_in"] == "Ray task" and info["threads"] == 1  # Ray was up before the sweep: a trial's CPUs

    config = sweep_dir / "config.yaml"
    assert main(["probe", str(config), "--batches", "2", "--against", str(sweep_dir), "--out", str(tmp_path / "p")]) == 2
    assert "only 2 probed layers have a measured value" in capsys.readouterr().err
    assert main(["probe", str(config), "--batches", "1"]) == 2
    assert "--batches 1: at least 2 are needed" in capsys.readouterr().err


def test_the_driver_probes_only_what_samples_with_hf(tmp_path):
    """The in-driver probe is for HF `generate`: a model that `engine: auto` would sample with vLLM is probed in a
    Ray task; the parameter count deciding it is the loaded model's, counted without loading weights."""
    from orchestrator.startup import probe_samples_with_hf
    from rollout.factory import VLLM_CPU_MIN_PARAMETERS, vllm_available
    from workers.base_model import build_untrained_model, count_parameters
    from transformers import Qwen2Config

    from workers.config import EmbeddedModelConfig

    small = build_untrained_model(EmbeddedModelConfig(num_layers=2, hidden_size=32, intermediate_size=64, num_heads=2,
                                                      num_kv_heads=1), 320, 0, 1)
    small.save_pretrained(tmp_path / "small")
    assert count_parameters(tmp_path / "small") == sum(p.numel() for p in small.parameters())
    large = Qwen2Config(vocab_size=32000, hidden_size=1024, intermediate_size=8192, num_hidden_layers=12,
                        num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=True)
    large.save_pretrained(tmp_path / "large")  # the config alone: nothing is loaded to count
    assert count_parameters(tmp_path / "large") >= VLLM_CPU_MIN_PARAMETERS
    auto = load_sweep_config(TINY, {"rollout.engine": "auto"})
    assert probe_samples_with_hf(auto, str(tmp_path / "small"))
    assert probe_samples_with_hf(auto, str(tmp_path / "large")) is not vllm_available()
    assert probe_samples_with_hf(load_sweep_config(TINY, {"rollout.engine": "hf"}), str(tmp_path / "large"))
