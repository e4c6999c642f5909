"""HF `generate` rollout engine: the CPU fallback and the reference the vLLM engine is checked against.

On CPU the engine shares the trainer's module, so a weight "sync" is free: `update_weights` only copies a
tensor whose storage differs from the engine's own parameter.

A group's G rows share one prompt, so the prompt is run once per group, not G times, and its KV cache copied
to the group's rows (what vLLM's prefix caching does): on the default sweep a batch's generate took 54 ms
instead of 83 ms. It samples from the same distribution (the logits differ by float rounding only: 5e-6 at
most on a default batch, whose sampled tokens were all the same).
"""

from __future__ import annotations

import time
from typing import Iterable, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from rollout.engine import RolloutBatch, SamplingSettings


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (ids_PS, mask_PS), as generation expects and as the trainer scores."""
    rows = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            ids[index, width - len(row) :] = torch.tensor(row)
            mask[index, width - len(row) :] = 1
    return ids, mask


def plain_kv_cache(model: PreTrainedModel) -> DynamicCache | None:
    """An empty key/value cache whose rows can be repeated for a group, or None where the model's generation does
    not take one: a configured `cache_implementation` (e.g. Gemma's hybrid cache) refuses it, chunked prefill
    would append the prompt again, and linear-attention layers keep states that repeating keys and values does
    not copy. Its updates are out of place, so a pass that fills it with gradients enabled stays differentiable."""
    generation = getattr(model, "generation_config", None)
    if generation is not None and (getattr(generation, "cache_implementation", None) is not None
                                   or getattr(generation, "prefill_chunk_size", None) is not None):
        return None
    cache = DynamicCache(config=model.config)
    if any(type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers):
        return None
    return cache


@torch.no_grad()
def shared_prompt_cache(model: PreTrainedModel, prompt_ids_PS: torch.Tensor, prompt_mask_PS: torch.Tensor,
                        group_size: int) -> DynamicCache | None:
    """The KV cache of every prompt token but the last, computed once per prompt and repeated for its group's
    rows; `generate` then runs the last prompt token of each row (it needs that token's logits to sample).

    None when there is nothing to share (groups of one; a prompt of a single token, whose row would be prefilled
    as padding only), or when the model's generation takes no plain key/value cache (`plain_kv_cache`)."""
    if group_size < 2 or int(prompt_mask_PS.sum(dim=1).min()) < 2:
        return None
    cache = plain_kv_cache(model)
    if cache is None:
        return None
    position_ids = (prompt_mask_PS.cumsum(dim=1) - 1).clamp(min=0)
    model(input_ids=prompt_ids_PS[:, :-1], attention_mask=prompt_mask_PS[:, :-1], position_ids=position_ids[:, :-1],
          past_key_values=cache, use_cache=True, logits_to_keep=1)  # the cache is what is wanted, not the logits
    cache.batch_repeat_interleave(group_size)
    return cache


def completion_mask(completion_ids_NT: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first EOS; 0 after it.

    Only the EOS position decides: generate pads a row only after its EOS, and a pad token sampled
    mid-completion (an untrained model does that) was generated and attended to like any other token.
    """
    is_eos = completion_ids_NT == eos_token_id
    after_eos = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
    return (~after_eos).long()


class HFEngine:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model = model
        self.tokenizer = tokenizer

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> RolloutBatch:
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        prompt_ids_PS, prompt_mask_PS = encode_prompts(self.tokenizer, prompts)
        group = settings.group_size
        prompt_ids_NS = prompt_ids_PS.repeat_interleave(group, dim=0)
        prompt_mask_NS = prompt_mask_PS.repeat_interleave(group, dim=0)
        was_training = self.model.training
        self.model.eval()
        start = time.perf_counter()
        output = self.model.generate(
            input_ids=prompt_ids_NS,
            attention_mask=prompt_mask_NS,
            past_key_values=shared_prompt_cache(self.model, prompt_ids_PS, prompt_mask_PS, group),
            do_sample=True,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=0,
            max_new_tokens=settings.max_new_tokens,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        seconds = time.perf_counter() - start
        self.model.train(was_training)
        completion_ids_NT = output.sequences[:, prompt_ids_NS.shape[1] :]
        scores_NTV = torch.stack(output.scores, dim=1).float()
        logp_NT = torch.log_softmax(scores_NTV, dim=-1).gather(-1, completion_ids_NT.unsqueeze(-1)).squeeze(-1)
        mask_NT = completion_mask(completion_ids_NT, self.tokenizer.eos_token_id)
        completion_ids_NT = torch.where(mask_NT.bool(), completion_ids_NT, self.tokenizer.pad_token_id)
        texts = self._decode(completion_ids_NT, mask_NT)
        return RolloutBatch(
            prompt_ids_NS=prompt_ids_NS,
            prompt_mask_NS=prompt_mask_NS,
            completion_ids_NT=completion_ids_NT,
            completion_mask_NT=mask_NT,
            sample_logp_NT=torch.where(mask_NT.bool(), logp_NT, 0.0),
            group_index_N=torch.arange(len(prompts)).repeat_interleave(group),
            completions_text=texts,
            stats={"generate_seconds": seconds, "generated_tokens": float(mask_NT.sum())},
        )

    @torch.no_grad()
    def greedy(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts)
        was_training = self.model.training
        self.model.eval()
        sequences = self.model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        self.model.train(was_training)
        completion_ids = sequences[:, prompt_ids.shape[1] :]
        return self._decode(completion_ids, completion_mask(completion_ids, self.tokenizer.eos_token_id))

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
        start = time.perf_counter()
        params = dict(self.model.named_parameters())
        sent = 0
        for name, tensor in named_tensors:
            if name not in params:
                raise KeyError(f"update_weights: the engine's model has no parameter {name!r}")
            target = params[name]
            if target.data_ptr() != tensor.data_ptr():
                target.copy_(tensor)
            sent += tensor.numel() * tensor.element_size()
        return {"sync_bytes": float(sent), "sync_seconds": time.perf_counter() - start}

    def sleep(self) -> None:
        """Nothing to free: the engine generates with the trainer's own model."""

    def close(self) -> None:
        return None

    def _decode(self, completion_ids_NT: torch.Tensor, mask_NT: torch.Tensor) -> list[str]:
        texts = []
        for ids, mask in zip(completion_ids_NT.tolist(), mask_NT.tolist()):
            kept = [token for token, keep in zip(ids, mask) if keep]
            texts.append(self.tokenizer.decode(kept, skip_special_tokens=True))
        return texts
