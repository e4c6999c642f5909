"""Dataset rows -> TaskExamples: load through `datasets`, map fields, render prompts.

One loader for every dataset task, so math and code tasks differ only in their reward. Sources:
- a hub id (`openai/gsm8k` + subset `main`), loaded with `datasets.load_dataset(path, subset, split=...)`;
- a local file (.jsonl / .json / .parquet / .arrow / .csv): the file is the requested split;
- a local directory: a `save_to_disk` dataset, or data files whose names give the splits
  (`train.jsonl`, `test.parquet`, ...), as `datasets` infers them.
Every failure is a one-line ValueError naming the config key and its value, because a sweep fails at
config time and the user should not have to read a `datasets` traceback to find the typo.

Prompts: `prompt_template` (default `{prompt}`) is filled first: `{prompt}` is the prompt field and
`{name}` any other column (lists of strings joined by newlines); other braces such as `\\boxed{}` stay.
Then, when `use_chat_template` is set and the tokenizer has a chat template, the text becomes the user
message of `apply_chat_template(..., add_generation_prompt=True)`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Literal, Mapping

from rollout.config import DatasetConfig
from rollout.errors import first_line
from rollout.tasks.base import TaskExample

logger = logging.getLogger(__name__)

BUILDER_BY_SUFFIX = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or Path(path).suffix in BUILDER_BY_SUFFIX


def _select_split(splits: Mapping[str, Any], split: str, key: str, path: str) -> Any:
    if split not in splits:
        raise ValueError(f"task.dataset.{key}={split!r} not in splits {sorted(splits)} of task.dataset.path={path!r}")
    return splits[split]


def load_split(path: str, subset: str | None, split: str, split_key: str = "train_split") -> Any:
    """One split as a `datasets.Dataset`; `split_key` names the config key in error messages."""
    import datasets  # heavy import, only needed by dataset tasks

    datasets.disable_progress_bars()  # "Generating train split" bars go to stderr, where errors must stand alone
    local = Path(path).expanduser()
    if local.is_file():
        with open(local, "rb") as handle:
            empty = not handle.read(4096).strip()
        if empty:  # datasets fails on an empty file with a bare StopIteration
            raise ValueError(f"task.dataset {split_key}={split!r} of {path!r}: the split has no rows (the file is empty)")
        builder = BUILDER_BY_SUFFIX.get(local.suffix)
        if builder is None:
            raise ValueError(f"task.dataset.path={path!r}: unsupported file type {local.suffix!r} "
                             f"(expected one of {sorted(BUILDER_BY_SUFFIX)})")  # fmt: skip
        try:
            return datasets.load_dataset(builder, data_files={split: str(local)}, split=split)
        except Exception as exc:
            raise ValueError(f"task.dataset.path={path!r}: unreadable {builder} file ({first_line(exc, with_type=True)})") from exc
    if local.is_dir():
        try:
            if (local / "dataset_dict.json").exists() or (local / "state.json").exists():
                loaded = datasets.load_from_disk(str(local))
                if isinstance(loaded, datasets.Dataset):
                    return loaded  # a single saved split, like a single file
            else:
                loaded = datasets.load_dataset(str(local))
        except Exception as exc:
            raise ValueError(f"task.dataset.path={path!r}: unreadable dataset directory ({first_line(exc, with_type=True)})") from exc
        return _select_split(loaded, split, split_key, path)
    if _looks_local(path):
        raise ValueError(f"task.dataset.path={path!r}: no such file or directory")
    try:
        loaded = datasets.load_dataset(path, subset)
    except Exception as exc:
        raise ValueError(f"task.dataset.path={path!r} (subset={subset!r}): could not load ({first_line(exc, with_type=True)})") from exc
    return _select_split(loaded, split, split_key, path)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def fill_template(template: str, prompt: str, row: Mapping[str, Any]) -> str:
    """Replace `{prompt}` and `{column}` placeholders; leave every other brace (LaTeX) untouched."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "prompt":
            return prompt
        return _as_text(row[name]) if name in row else match.group(0)

    return _PLACEHOLDER.sub(replace, template)


def render_prompt(text: str, tokenizer: Any | None, use_chat_template: bool, system_prompt: str | None = None) -> str:
    """The user message in the tokenizer's chat template (generation prompt appended), else as is.
    `system_prompt` None leaves the system turn to the template's own default."""
    if use_chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
        messages.append({"role": "user", "content": text})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text


def _check_columns(columns: list[str], cfg: DatasetConfig) -> None:
    wanted = [("prompt_field", cfg.prompt_field), ("answer_field", cfg.answer_field)]
    wanted += [("meta_fields", name) for name in cfg.meta_fields]
    for key, name in wanted:
        if name not in columns:
            raise ValueError(f"task.dataset.{key}={name!r} not in columns {columns}")


def _check_rows(rows: Any, cfg: DatasetConfig, where: str) -> None:
    """Every row has a prompt and an answer (a jsonl row missing a key loads as None): a bad row found here
    costs a line, found by the reward minutes into every trial it costs the sweep."""
    if len(rows) == 0:
        raise ValueError(f"task.dataset {where}: the split has no rows")
    required = (("prompt_field", cfg.prompt_field), ("answer_field", cfg.answer_field))
    bad: list[tuple[int, str, str]] = []
    for index, row in enumerate(rows):
        for key, name in required:
            value = row.get(name)
            if value is None or (isinstance(value, str) and not value.strip()):
                bad.append((index, key, name))
                break
    if bad:
        index, key, name = bad[0]
        more = f" ({len(bad)} of {len(rows)} rows lack a prompt or an answer)" if len(bad) > 1 else ""
        raise ValueError(f"task.dataset {where}: row {index} has no {name!r} (task.dataset.{key}){more}")


def rows_to_examples(rows: Any, cfg: DatasetConfig, tokenizer: Any | None = None, where: str = "rows") -> list[TaskExample]:
    """Map columns to TaskExamples; `rows` is a `datasets.Dataset` or a list of dicts."""
    columns = list(rows.column_names) if hasattr(rows, "column_names") else sorted({k for r in rows for k in r})
    _check_columns(columns, cfg)
    _check_rows(rows, cfg, where)
    examples = []
    for row in rows:
        prompt = _as_text(row[cfg.prompt_field])
        text = fill_template(cfg.prompt_template, prompt, row)
        meta = {name: row[name] for name in cfg.meta_fields}
        examples.append(TaskExample(render_prompt(text, tokenizer, cfg.use_chat_template),
                                    _as_text(row[cfg.answer_field]), meta))  # fmt: skip
    return examples


def load_examples(
    cfg: DatasetConfig, which: Literal["train", "eval"], tokenizer: Any | None = None
) -> list[TaskExample]:
    """Train or eval examples of a dataset task, truncated to `max_train` / `max_eval`."""
    if which == "train":
        path, subset, split, key, limit = cfg.path, cfg.subset, cfg.train_split, "train_split", cfg.max_train
    else:
        path = cfg.eval_path or cfg.path
        subset = cfg.eval_subset if cfg.eval_path else cfg.subset
        split, key, limit = cfg.eval_split, "eval_split", cfg.max_eval
        if Path(path).expanduser().is_file() and path == cfg.path:
            logger.warning("task.dataset.path=%r is a single file: train and eval examples are the same rows", path)
    rows = load_split(path, subset, split, key)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    return rows_to_examples(rows, cfg, tokenizer, where=f"{key}={split!r} of {path!r}")
