"""Config sections owned by the rollout side: how to sample, and which task to sample for."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rollout.basics import Section
from rollout.engine import SamplingSettings


class VllmConfig(Section):
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    """Fraction of one GPU's memory this engine may take; small so several trials pack on one GPU."""
    kv_cache_gib: float = Field(1.0, gt=0)
    """CPU only: KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE)."""
    enable_sleep_mode: bool = False
    """GPU only: put the engine to sleep during the policy update to free its memory."""
    max_model_len: int = Field(512, gt=0)
    """Longest prompt + completion the engine must hold."""


class SamplingConfig(Section):
    engine: Literal["hf", "vllm", "auto"] = "auto"
    """Rollout engine: HF generate, vLLM, or `auto`: the faster one for the model (rollout.factory: vLLM on a GPU
    and for models of >= 300 M parameters on a CPU, HF generate below that on a CPU or when vLLM is not installed)."""
    group_size: int = Field(8, ge=2)
    """G: completions per prompt; group-relative advantages need at least 2."""
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(6, ge=1)
    """Longest completion; also Dr. GRPO's constant loss normaliser per sequence."""
    vllm: VllmConfig = VllmConfig()

    def sampling_settings(self, seed: int | None, group_size: int | None = None) -> SamplingSettings:
        """The engine call's settings: these decoding parameters with G = `group_size` (default `group_size`)."""
        return SamplingSettings(group_size or self.group_size, self.max_new_tokens, self.temperature, self.top_p, seed)


class ArithmeticConfig(Section):
    min_digits: int = Field(2, ge=1, le=9)
    max_digits: int = Field(3, ge=1, le=9)
    """Operands have between min_digits and max_digits digits, written zero-padded to max_digits."""
    num_train: int = Field(20000, ge=1)
    num_eval: int = Field(400, ge=1)
    reverse_answer: bool = True
    """Write the sum least-significant digit first (`045+123=861`): each output digit then depends only on
    digits already seen plus a carry, which a tiny model learns in a few hundred steps instead of thousands."""
    seed: int = 1234
    """Data seed; independent from the trial seed so every trial of a sweep sees the same data."""
    second_min_digits: int | None = Field(None, ge=1, le=9)
    second_max_digits: int | None = Field(None, ge=1, le=9)
    """Digit range of the second operand; None = the first operand's (min_digits / max_digits)."""
    style: Literal["compact", "chat"] = "compact"
    """`compact`: `045+123=` answered by exactly the sum's digits (the embedded model's format, exact match).
    `chat`: the question `What is 45 + 123?` as the user message of the tokenizer's chat template, and a
    free-form reply judged by the last number it states (operands unpadded, the sum written normally)."""
    question: str = "What is {a} + {b}?"
    """Chat style: the user message; `{a}` and `{b}` are the operands."""
    system_prompt: str | None = None
    """Chat style: the system message; None = whatever the chat template adds by default."""

    @model_validator(mode="after")
    def _digits_ordered(self) -> "ArithmeticConfig":
        if self.min_digits > self.max_digits:
            raise ValueError(f"min_digits={self.min_digits} is larger than max_digits={self.max_digits}")
        if self.second_digits[0] > self.second_digits[1]:
            raise ValueError(f"the second operand's min digits {self.second_digits[0]} exceed its max digits {self.second_digits[1]}")
        if self.style == "chat" and self.reverse_answer:
            raise ValueError("style='chat' asks for the sum written normally; set reverse_answer: false")
        if "{a}" not in self.question or "{b}" not in self.question:
            raise ValueError(f"question={self.question!r} must contain both {{a}} and {{b}}")
        try:
            self.question.format(a=1, b=2)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"question={self.question!r}: only {{a}} and {{b}} may appear in braces ({error!r})") from None
        return self


    @property
    def second_digits(self) -> tuple[int, int]:
        """(min, max) digits of the second operand."""
        return self.second_min_digits or self.min_digits, self.second_max_digits or self.max_digits


class DatasetConfig(Section):
    """A dataset loaded through `datasets`: a hub name or a local jsonl / json / parquet / arrow path."""

    path: str
    """Hub id (e.g. `openai/gsm8k`) or a local file / directory."""
    subset: str | None = None
    """Hub configuration name (e.g. `main` for gsm8k)."""
    train_split: str = "train"
    eval_split: str = "test"
    prompt_field: str = "question"
    answer_field: str = "answer"
    meta_fields: list[str] = []
    """Extra columns handed to the reward as keyword lists (e.g. `test_list` for MBPP)."""
    prompt_template: str = "{prompt}"
    """`{prompt}` is replaced by the prompt field and `{column}` by that column; other braces stay. With a
    chat template the filled text becomes the user message, without one it is the whole prompt."""
    use_chat_template: bool = True
    max_train: int | None = None
    max_eval: int | None = None
    eval_path: str | None = None
    """Evaluate on another dataset (e.g. train on MATH, evaluate on MATH-500); None = `path`."""
    eval_subset: str | None = None
    """Hub configuration of `eval_path`."""


class CodeConfig(Section):
    """How the code task runs candidate programs (see rollout.sandbox)."""

    timeout_s: float = Field(5.0, gt=0)
    """Wall-clock limit per program, tests included."""
    memory_mb: int = Field(1024, ge=64)
    """Address-space limit per process."""
    partial_credit: bool = False
    """Reward = fraction of separate tests passed (MBPP asserts) instead of 1 only when all pass."""
    max_workers: int | None = Field(None, ge=1)
    """Programs run at once; None = the CPUs this process may use."""


class AgenticConfig(Section):
    """A multi-turn text environment: G trajectories per group start from one seed; one action per turn."""

    env: str = "frozenlake"
    """Registered environment name (see rollout.envs.registry): frozenlake | keydoor | sokoban."""
    options: dict[str, Any] = {}
    """Keyword options of the environment (e.g. size, is_slippery for frozenlake; height, width for keydoor)."""
    max_turns: int = Field(8, ge=1)
    history_window: int = Field(1, ge=0)
    """Past observation/action pairs repeated in each prompt."""
    num_train_seeds: int = Field(5000, ge=1)
    num_eval_seeds: int = Field(200, ge=1)
    demo_episodes: int = Field(3000, ge=1)
    """Noisy-oracle episodes the embedded model is pre-trained on."""
    demo_noise: float = Field(0.3, ge=0, le=1)
    """Probability that a demonstrated action is random instead of the oracle's."""
    eval_decoding: Literal["greedy", "sample"] = "greedy"
    """How held-out episodes choose actions for the trial's `score` (and the pre-training target): the greedy
    completion, or sampling at the rollout temperature, i.e. the very policy RL optimises. A model imitating
    noisy demonstrations already has the oracle action as its argmax almost everywhere, so RL mostly raises
    its sampled success; both rates are always reported (`success_greedy`, `success_sampled`)."""
    eval_episodes_per_seed: int = Field(1, ge=1)
    """Sampled episodes played from each eval seed; more lowers the noise of the sampled success rate."""


class TaskConfig(Section):
    kind: Literal["arithmetic", "math", "code", "agentic"] = "arithmetic"
    """Which task family; selects the dataset builder and the default reward."""
    arithmetic: ArithmeticConfig = ArithmeticConfig()
    dataset: DatasetConfig | None = None
    """Required for `math` and `code`."""
    reward: str | None = None
    """Optional plugin `package.module:function` with signature (prompts, completions, **meta) -> list[float]."""
    reward_failure_share: float = Field(0.5, ge=0, le=1)
    """A `task.reward` call that raises scores its batch 0 and counts in the per-step `reward_errors` metric; once
    more than this share of a trial's calls raised (judged once `reward_failure_grace_steps` calls have run in
    the trial's process), the trial fails with the plugin's own first error message."""
    reward_failure_grace_steps: int = Field(3, ge=1)
    """Calls (one per step) before `reward_failure_share` is judged; a resumed trial starts a new count."""
    format_reward: float = Field(0.0, ge=0)
    """Weight of a bonus for a well-formed completion, added to the 0/1 correctness reward."""
    code: CodeConfig = CodeConfig()
    """Sandbox settings of the `code` task."""
    agentic: AgenticConfig = AgenticConfig()
    """Environment and episode settings of the `agentic` task."""

    @model_validator(mode="after")
    def _dataset_for_dataset_tasks(self) -> "TaskConfig":
        if self.kind in ("math", "code") and self.dataset is None:
            raise ValueError(f"task.kind={self.kind!r} needs a task.dataset section")
        return self
