"""The model a trial starts from: the embedded tiny Qwen2 (built, pre-trained, cached) or any HF model dir / hub id.

The embedded model is pre-trained supervised on the task's own train split only until its held-out greedy
accuracy first reaches a target, so RL starts from a base that is competent but far from solved (RL from a
near-random tiny model is fragile; from a solved one there is nothing to gain). Everything is seeded and
single-threaded-deterministic, and the result is cached under a key of every input, so every trial of a
sweep (and every later sweep) loads the very same base weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from rollout.errors import first_line
from rollout.hf_engine import HFEngine
from rollout.tasks.base import TaskExample, is_multi_turn
from rollout.tasks.registry import build_task, task_fingerprint
from workers.cache import exclusive
from workers.config import EmbeddedModelConfig, ModelConfig, TrialConfig, cache_root
from workers.evaluate import greedy_accuracy
from workers.gguf_model import ensure_gguf_model, is_gguf_source
from workers.tokenizer import build_tokenizer, save_tokenizer

if TYPE_CHECKING:  # transformers' modeling code is imported where a model is built or loaded: the sweep driver
    # only resolves the (cached) model dir and checks the task, and starts ~1.4 s sooner without it
    from transformers import PreTrainedModel, Qwen2ForCausalLM

log = logging.getLogger(__name__)

EMBEDDED_FORMAT_VERSION = 1
"""Bump when the builder or pre-training recipe changes, so stale caches are not reused."""


def build_untrained_model(cfg: EmbeddedModelConfig, vocab_size: int, eos_id: int, pad_id: int) -> Qwen2ForCausalLM:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(cfg.seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=eos_id,
        torch_dtype="float32",
    )
    return Qwen2ForCausalLM(config)


def supervised_batch(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels) with the loss on the target tokens + EOS only."""
    rows, targets = [], []
    for prompt, target in pairs:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt_ids + target_ids)
        targets.append([-100] * len(prompt_ids) + target_ids)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for row, (ids, lab) in enumerate(zip(rows, targets)):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(lab)] = torch.tensor(lab)
    return input_ids, attention_mask, labels


def pretrain(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_pairs: Sequence[tuple[str, str]],
    accuracy_fn: Callable[[PreTrainedModel], float],
    cfg: EmbeddedModelConfig,
) -> dict:
    """Supervised next-token training until `accuracy_fn(model)` reaches the target or max steps run out."""
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.01)
    warmup = min(100, max(1, cfg.pretrain_max_steps // 10))
    history: list[dict] = []
    accuracy = accuracy_fn(model)
    step = 0
    start = time.perf_counter()
    while step < cfg.pretrain_max_steps and accuracy < cfg.pretrain_target_accuracy:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = cfg.pretrain_lr * min(1.0, (step + 1) / warmup)
        index = torch.randint(len(train_pairs), (cfg.pretrain_batch_size,), generator=generator)
        input_ids, attention_mask, labels = supervised_batch(tokenizer, [train_pairs[i] for i in index.tolist()])
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % cfg.pretrain_check_every == 0 or step == cfg.pretrain_max_steps:
            accuracy = accuracy_fn(model)
            history.append({"step": step, "loss": loss.item(), "accuracy": accuracy})
            log.info("pre-train step %d loss %.4f eval accuracy %.3f", step, loss.item(), accuracy)
    model.eval()
    return {
        "steps": step,
        "accuracy": accuracy,
        "seconds": time.perf_counter() - start,
        "history": history,
        "reached_target": accuracy >= cfg.pretrain_target_accuracy,
    }


def embedded_cache_key(cfg: EmbeddedModelConfig, task_fingerprint: str) -> str:
    payload = json.dumps(
        {"model": cfg.model_dump(), "task": task_fingerprint, "version": EMBEDDED_FORMAT_VERSION, "torch": torch.__version__},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def ensure_embedded_model(
    cfg: ModelConfig,
    task_fingerprint: str,
    pretrain_pairs: Callable[[], Sequence[tuple[str, str]]],
    accuracy_fn_factory: Callable[[PreTrainedTokenizerBase], Callable[[PreTrainedModel], float]],
) -> Path:
    """Return the cached model directory, building and pre-training it first if needed (process-safe)."""
    root = cache_root(cfg)
    target = root / f"embedded-{embedded_cache_key(cfg.embedded, task_fingerprint)}"
    with exclusive(root / (target.name + ".lock")):
        if (target / "pretrain.json").exists():
            return target
        log.info("building the embedded model in %s (pre-training, cached afterwards)", target)
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # deterministic across machines with different core counts
        try:
            tokenizer = build_tokenizer()
            model = build_untrained_model(cfg.embedded, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
            summary = pretrain(model, tokenizer, pretrain_pairs(), accuracy_fn_factory(tokenizer), cfg.embedded)
        finally:
            torch.set_num_threads(previous_threads)
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(str(staging))
        save_tokenizer(tokenizer, staging)
        (staging / "pretrain.json").write_text(json.dumps(summary, indent=2))
        staging.rename(target)
        log.info("embedded model ready: %d steps, eval accuracy %.3f", summary["steps"], summary["accuracy"])
        return target


def check_pretrained_source(source: str) -> Path | str:
    """A local HF model directory, or a hub id whose config can be fetched; else a one-line error saying what
    was looked for and where (instead of a traceback from deep inside transformers / huggingface_hub)."""
    from transformers import AutoConfig

    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"model.source={source!r}: {path} exists but is not an HF model directory (no config.json in it)")
        return path
    if source.startswith(("/", ".", "~")) or source.count("/") > 1:
        raise ValueError(f"model.source={source!r}: no such directory (looked for {path.resolve()})")
    try:
        AutoConfig.from_pretrained(source)
    except Exception as error:  # OSError offline, hub HTTP errors online: all mean "cannot be had from here"
        raise ValueError(
            f"model.source={source!r}: no local directory {path.resolve()}, and the hub id cannot be loaded: {first_line(error)}"
        ) from None
    return source


PRETRAIN_EVAL_PROMPTS = 200


def resolve_model_dir(cfg: TrialConfig) -> Path | str:
    """The embedded model's cache dir (built on first use), a GGUF file's converted HF dir (converted on first
    use), or the configured HF dir / hub id."""
    if is_gguf_source(cfg.model.source):
        return ensure_gguf_model(cfg.model.source, cache_root(cfg.model))
    if cfg.model.source != "embedded":
        return check_pretrained_source(cfg.model.source)
    task = build_task(cfg.task, build_tokenizer())

    def pairs() -> list[tuple[str, str]]:
        return task.pretrain_pairs() if is_multi_turn(task) else examples_to_pairs(task.train_examples())

    def accuracy_factory(tokenizer: PreTrainedTokenizerBase) -> Callable[[PreTrainedModel], float]:
        if is_multi_turn(task):
            seeds = task.eval_seeds[:PRETRAIN_EVAL_PROMPTS]
            return lambda model: task.eval_success(HFEngine(model, tokenizer), cfg.rollout, task.cfg.eval_decoding, seeds)
        examples = list(task.eval_examples())[:PRETRAIN_EVAL_PROMPTS]
        return lambda model: greedy_accuracy(HFEngine(model, tokenizer), task, examples, cfg.rollout.max_new_tokens, cfg.eval.batch_size)

    fingerprint = task_fingerprint(task)
    if is_multi_turn(task):  # the pre-training stop is judged by playing episodes with these sampling settings
        fingerprint += f"|{cfg.rollout.max_new_tokens}|{cfg.rollout.temperature}|{cfg.rollout.top_p}"
    return ensure_embedded_model(cfg.model, fingerprint, pairs, accuracy_factory)


def check_task_loads(cfg: TrialConfig, model_dir: Path | str) -> str:
    """Build the task once with the model's own tokenizer, so bad data (a missing field, an empty split, an
    unreadable file) is a one-line error before any trial starts rather than in every trial. Returns the task
    data's digest (what the trials train and evaluate on, however the config spells it)."""
    return task_fingerprint(build_task(cfg.task, AutoTokenizer.from_pretrained(str(model_dir))))


def model_revision(model_dir: Path | str) -> str:
    """The hub commit a hub model resolved to; for a local directory (the embedded and GGUF caches are named by
    content digest) its path."""
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(str(model_dir)), "_commit_hash", None) or str(model_dir)


def count_parameters(model_dir: Path | str) -> int:
    """The model's parameter count (tied tensors once, as `model.parameters()` counts them), without loading or
    allocating its weights: the model is built on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def load_model_and_tokenizer(path_or_id: str | Path, dtype: str = "float32") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path_or_id))
        model = AutoModelForCausalLM.from_pretrained(str(path_or_id), dtype=torch_dtype)
    except (OSError, ValueError) as error:
        raise ValueError(f"model.source={str(path_or_id)!r} could not be loaded: {first_line(error)}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.eval()
    return model, tokenizer


def examples_to_pairs(examples: Sequence[TaskExample]) -> list[tuple[str, str]]:
    return [(example.prompt, example.answer) for example in examples]

