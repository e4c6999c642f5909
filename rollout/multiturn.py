"""Multi-turn agentic rollouts against any `RolloutEngine`, and their flattening into per-step training rows.

A group is G trajectories that all reset from the same seed (GiGPO's precondition: same initial state, so
their states can coincide). Each turn, every still-active trajectory gets a prompt (instruction + the last k
observation/action pairs + the current observation), the engine samples ONE completion per prompt, the
environment parses and applies it; a trajectory stops when its episode ends or after `max_turns`. All
active trajectories of all groups share one `engine.generate` call per turn. The same loop, with the
engine's greedy completion as the action, evaluates a policy (`MultiTurnSettings.greedy`).

Each step is one training row: its prompt (the rendered history) and its action tokens, exactly as the
engine sampled them, so the trainer scores what was generated. `flatten_groups` lays the rows out like a
`RolloutBatch` (prompts left-padded, actions right-padded), in the order (group, trajectory, turn) in which
the trainer's advantage estimators return one advantage per step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterator, NamedTuple, Sequence

import torch

from rollout.engine import RolloutBatch, RolloutEngine, SamplingSettings, derived_seed
from rollout.envs.base import TextEnv

logger = logging.getLogger(__name__)

INVALID_SHOWN = "?"
"""How an unparseable action appears in later prompts: keeps prompts short and in-distribution."""


@dataclass(frozen=True)
class PromptFormat:
    """`instruction\\n` + `obs>action\\n` per remembered turn + `obs>`; the completion is the action word."""

    history_window: int = 1
    """k: how many past observation/action pairs each prompt repeats (0 = current observation only)."""

    def render(self, instruction: str, history: Sequence[tuple[str, str]], observation: str) -> str:
        recent = list(history)[-self.history_window :] if self.history_window > 0 else []
        return instruction + "\n" + "".join(f"{obs}>{action}\n" for obs, action in recent) + f"{observation}>"


@dataclass(frozen=True)
class MultiTurnSettings:
    max_turns: int = 10
    """Turns after which an unfinished trajectory stops (its last step then has done=False)."""
    prompt: PromptFormat = PromptFormat()
    max_new_tokens: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    """Sampling seed of the whole rollout; turn t samples with a seed derived from (seed, t)."""
    greedy: bool = False
    """Act with the engine's greedy completion instead of sampling (evaluation). Greedy steps carry no
    token ids or log-probs: they are for scoring a policy, never for training on."""

    @classmethod
    def from_sampling(cls, sampling: SamplingSettings, max_turns: int, prompt: PromptFormat, greedy: bool = False) -> "MultiTurnSettings":
        """Episodes whose every turn samples one action with `sampling`'s decoding (its group size is unused:
        the G trajectories of a group are separate rows of each turn's call)."""
        return cls(max_turns, prompt, sampling.max_new_tokens, sampling.temperature, sampling.top_p, sampling.seed, greedy)

    def turn_sampling(self, turn: int) -> SamplingSettings:
        """One action per prompt at turn `turn`, with a seed derived from (seed, turn)."""
        return SamplingSettings(1, self.max_new_tokens, self.temperature, self.top_p, derived_seed(self.seed, turn))


@dataclass(frozen=True)
class StepRecord:
    """One turn of one trajectory: what the policy saw, what it sampled, what the environment returned."""

    prompt: str
    prompt_token_ids: tuple[int, ...]
    action_text: str
    action_token_ids: tuple[int, ...]
    """Sampled tokens, EOS included when sampled (the engine's completion mask)."""
    action_logp: tuple[float, ...]
    """Sampling log-probability of each action token."""
    state_key: Hashable
    """Environment state the action was taken from (GiGPO anchor state)."""
    action: str | None
    """The parsed action; None when the text was invalid."""
    reward: float
    done: bool


@dataclass
class Trajectory:
    steps: list[StepRecord] = field(default_factory=list)
    success: bool = False

    @property
    def episode_return(self) -> float:
        """R(τ) = Σ_t r_t, undiscounted."""
        return float(sum(step.reward for step in self.steps))

    @property
    def invalid_actions(self) -> int:
        return sum(step.action is None for step in self.steps)


@dataclass
class GroupRollout:
    """G trajectories from one seed."""

    seed: int
    trajectories: list[Trajectory]


class TurnAction(NamedTuple):
    """What the engine produced for one trajectory in one turn; ids and log-probs are empty when greedy."""

    text: str
    prompt_token_ids: tuple[int, ...]
    action_token_ids: tuple[int, ...]
    action_logp: tuple[float, ...]


def _act(engine: RolloutEngine, prompts: list[str], settings: MultiTurnSettings, turn: int) -> list[TurnAction]:
    """One completion per prompt: greedy text only, or sampled with the token ids and log-probs to train on."""
    if settings.greedy:
        return [TurnAction(text, (), (), ()) for text in engine.greedy(prompts, settings.max_new_tokens)]
    batch = engine.generate(prompts, settings.turn_sampling(turn))
    if batch.num_rows != len(prompts):
        raise RuntimeError(f"engine returned {batch.num_rows} rows for {len(prompts)} prompts (group_size=1)")
    actions = []
    for row, text in enumerate(batch.completions_text):
        action_mask = batch.completion_mask_NT[row].bool()
        actions.append(TurnAction(
            text,
            tuple(batch.prompt_ids_NS[row][batch.prompt_mask_NS[row].bool()].tolist()),
            tuple(batch.completion_ids_NT[row][action_mask].tolist()),
            tuple(batch.sample_logp_NT[row][action_mask].tolist()),
        ))
    return actions


def rollout_groups(
    engine: RolloutEngine,
    env_factory: Callable[[], TextEnv],
    seeds: Sequence[int],
    group_size: int,
    settings: MultiTurnSettings,
) -> list[GroupRollout]:
    """Play `group_size` trajectories from each seed; `env_factory()` must return a fresh environment."""
    envs = [[env_factory() for _ in range(group_size)] for _ in seeds]
    observations = [[env.reset(seed) for env in row] for seed, row in zip(seeds, envs)]
    histories: list[list[list[tuple[str, str]]]] = [[[] for _ in row] for row in envs]
    groups = [GroupRollout(seed, [Trajectory() for _ in range(group_size)]) for seed in seeds]
    active = [(g, j) for g in range(len(seeds)) for j in range(group_size)]
    for turn in range(settings.max_turns):
        if not active:
            break
        prompts = [
            settings.prompt.render(envs[g][j].instruction, histories[g][j], observations[g][j]) for g, j in active
        ]
        actions = _act(engine, prompts, settings, turn)
        still_active = []
        for ((g, j), prompt, (text, prompt_ids, action_ids, action_logp)) in zip(active, prompts, actions):
            env = envs[g][j]
            state_key = env.state_key()
            observation, reward, done, info = env.step(text)
            groups[g].trajectories[j].steps.append(
                StepRecord(
                    prompt=prompt,
                    prompt_token_ids=prompt_ids,
                    action_text=text,
                    action_token_ids=action_ids,
                    action_logp=action_logp,
                    state_key=state_key,
                    action=info["action"],
                    reward=reward,
                    done=done,
                )
            )
            histories[g][j].append((observations[g][j], info["action"] or INVALID_SHOWN))
            observations[g][j] = observation
            if done:
                groups[g].trajectories[j].success = bool(info["success"])
            else:
                still_active.append((g, j))
        active = still_active
    logger.debug("rollout of %d groups x %d: %d trajectories unfinished", len(seeds), group_size, len(active))
    return groups


def _rows(groups: Sequence[GroupRollout]) -> Iterator[tuple[int, int, int, StepRecord]]:
    """(group, global trajectory index, turn, step) in row order: group-major, trajectory, then turn."""
    trajectory_index = 0
    for g, group in enumerate(groups):
        for trajectory in group.trajectories:
            for turn, step in enumerate(trajectory.steps):
                yield g, trajectory_index, turn, step
            trajectory_index += 1


@dataclass
class StepRows:
    """One training row per step, N = total steps over all groups."""

    batch: RolloutBatch
    """prompt = the step's rendered prompt (left-padded), completion = its action tokens (right-padded);
    group_index_N is the group (seed) index, so rows of one group are NOT a fixed G per prompt."""
    trajectory_index_N: torch.Tensor
    """(N,) global trajectory index (group g's trajectory j is g * G + j when all groups have G)."""
    turn_index_N: torch.Tensor
    reward_N: torch.Tensor


def _pad(rows: Sequence[Sequence[float]], width: int, fill: float, dtype: torch.dtype, left: bool) -> torch.Tensor:
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for index, row in enumerate(rows):
        if row:
            values = torch.tensor(list(row), dtype=dtype)
            if left:
                out[index, width - len(row) :] = values
            else:
                out[index, : len(row)] = values
    return out


def flatten_groups(groups: Sequence[GroupRollout], pad_token_id: int, completion_width: int | None = None) -> StepRows:
    """Rows in `_rows` order; completion_width pads actions to a fixed T (e.g. max_new_tokens)."""
    rows = list(_rows(groups))
    if not rows:
        raise ValueError("no steps to flatten (max_turns=0 or no groups)")
    steps = [step for *_, step in rows]
    prompts = [step.prompt_token_ids for step in steps]
    actions = [step.action_token_ids for step in steps]
    prompt_width = max(len(p) for p in prompts)
    longest = max(len(a) for a in actions)
    width = longest if completion_width is None else completion_width
    if width < longest:
        raise ValueError(f"completion_width={completion_width} is shorter than an action of {longest} tokens")
    ones = [[1] * len(p) for p in prompts]
    batch = RolloutBatch(
        prompt_ids_NS=_pad(prompts, prompt_width, pad_token_id, torch.long, left=True),
        prompt_mask_NS=_pad(ones, prompt_width, 0, torch.long, left=True),
        completion_ids_NT=_pad(actions, width, pad_token_id, torch.long, left=False),
        completion_mask_NT=_pad([[1] * len(a) for a in actions], width, 0, torch.long, left=False),
        sample_logp_NT=_pad([step.action_logp for step in steps], width, 0.0, torch.float32, left=False),
        group_index_N=torch.tensor([g for g, *_ in rows], dtype=torch.long),
        completions_text=[step.action_text for step in steps],
    )
    return StepRows(
        batch=batch,
        trajectory_index_N=torch.tensor([t for _, t, _, _ in rows], dtype=torch.long),
        turn_index_N=torch.tensor([turn for _, _, turn, _ in rows], dtype=torch.long),
        reward_N=torch.tensor([step.reward for step in steps], dtype=torch.float32),
    )


def rollout_metrics(groups: Sequence[GroupRollout]) -> dict[str, float]:
    """Success rate, mean return / turns, invalid-action rate, and how many steps share an anchor state."""
    trajectories = [t for group in groups for t in group.trajectories]
    steps = sum(len(t.steps) for t in trajectories)
    anchored = 0
    for group in groups:
        keys = [step.state_key for t in group.trajectories for step in t.steps]
        counts: dict[Hashable, int] = {}
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        anchored += sum(counts[key] > 1 for key in keys)
    count = max(len(trajectories), 1)
    return {
        "success_rate": sum(t.success for t in trajectories) / count,
        "return_mean": sum(t.episode_return for t in trajectories) / count,
        "turns_mean": steps / count,
        "invalid_action_rate": sum(t.invalid_actions for t in trajectories) / max(steps, 1),
        "anchored_step_fraction": anchored / max(steps, 1),
    }
