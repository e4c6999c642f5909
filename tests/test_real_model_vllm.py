"""vLLM serving the real model (SmolLM2-135M-Instruct, Llama with fused qkv / gate_up shards, tied embeddings):
a layer-only sync makes vLLM's greedy tokens equal HF's on the changed weights."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from rollout.config import VllmConfig  # noqa: E402
from rollout.hf_engine import encode_prompts  # noqa: E402
from workers.base_model import load_model_and_tokenizer  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
QUESTIONS = ["What is 23 + 5? Answer with the number only.", "Name a colour.", "What is 7 + 8?", "Say hello."]


def _hf_greedy_ids(model, tokenizer, prompts, max_new_tokens):
    ids, mask = encode_prompts(tokenizer, prompts)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        rows.append(row[: row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else row)
    return rows


def test_layer_only_sync_gives_vllm_the_hf_greedy_tokens(smollm2_dir):
    perturbed_layer_15_synced_into_vllm(smollm2_dir)


def perturbed_layer_15_synced_into_vllm(smollm2_dir):
    """Perturb layer 15 of the HF model, sync it into a vLLM engine, check both greedy decodings agree before
    and after; returns (model, tokenizer, prompts, layer-15 tensors, greedy ids after)."""
    from rollout.vllm_engine import VllmEngine

    model, tokenizer = load_model_and_tokenizer(smollm2_dir)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in QUESTIONS]
    engine = VllmEngine(smollm2_dir, tokenizer, VllmConfig(kv_cache_gib=0.5, max_model_len=256), seed=0)
    try:
        before = _hf_greedy_ids(model, tokenizer, prompts, 12)
        assert engine.greedy_ids(prompts, 12) == before
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # a large change to layer 15 only, so greedy outputs move
            for name, param in model.named_parameters():
                if name.startswith("model.layers.15."):
                    param.add_(torch.randn(param.shape, generator=generator) * param.abs().mean())
        after = _hf_greedy_ids(model, tokenizer, prompts, 12)
        assert after != before
        layer = [(name, p) for name, p in model.named_parameters() if name.startswith("model.layers.15.")]
        stats = engine.update_weights(layer)
        assert stats["sync_bytes"] == sum(p.numel() * 4 for _, p in layer) == 14_160_384  # one layer, fp32
        assert engine.greedy_ids(prompts, 12) == after
    finally:
        engine.close()
    return model, tokenizer, prompts, layer, after


def test_an_exported_layer_15_loads_in_vllm_with_the_trained_greedy_tokens(smollm2_dir, tmp_path):
    """`layersweep export`'s HF directory is what vLLM serves: its greedy tokens are the trained model's."""
    from safetensors.torch import save_file

    from rollout.vllm_engine import VllmEngine
    from workers.export import export_trial

    model, tokenizer, prompts, layer, after = perturbed_layer_15_synced_into_vllm(smollm2_dir)
    save_file({name: p.detach().contiguous() for name, p in layer}, str(tmp_path / "trained.safetensors"))
    info = export_trial(tmp_path / "trained.safetensors", "layer15-s0", "smollm2", smollm2_dir, "float32",
                        tmp_path / "model", tmp_path / "model-delta")
    assert info.model_bytes == 538_060_032 and 0 < info.delta_bytes - 14_160_384 < 4096  # one layer: 2.6% of the model
    engine = VllmEngine(tmp_path / "model", tokenizer, VllmConfig(kv_cache_gib=0.5, max_model_len=256), seed=0)
    try:
        assert engine.greedy_ids(prompts, 12) == after
    finally:
        engine.close()
