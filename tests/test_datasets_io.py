"""Dataset loading (local jsonl / parquet / directories / save_to_disk), field mapping, prompt rendering, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rollout.config import DatasetConfig
from rollout.tasks.datasets_io import fill_template, load_examples, render_prompt

FIXTURES = Path(__file__).parent / "fixtures"
GSM8K = FIXTURES / "gsm8k_sample.jsonl"
MATH500 = FIXTURES / "math500_sample.jsonl"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tokenizer(chat_template: str | None) -> PreTrainedTokenizerFast:
    """An offline word-level tokenizer; only its chat template matters here."""
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "<eos>": 1, "hello": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<eos>")
    tokenizer.chat_template = chat_template
    return tokenizer


def test_local_jsonl_with_field_mapping():
    cfg = DatasetConfig(path=str(GSM8K), max_train=7)
    examples = load_examples(cfg, "train")
    rows = _rows(GSM8K)
    assert len(examples) == 7
    assert examples[3].prompt == rows[3]["question"] and examples[3].answer == rows[3]["answer"]
    assert dict(examples[0].meta) == {}


def test_local_parquet_with_field_mapping_and_meta(tmp_path):
    path = tmp_path / "math.parquet"
    datasets.Dataset.from_list(_rows(MATH500)).to_parquet(str(path))
    cfg = DatasetConfig(path=str(path), prompt_field="problem", answer_field="answer", meta_fields=["level", "subject"])
    examples = load_examples(cfg, "eval")  # a single file is whatever split is asked for
    assert len(examples) == len(_rows(MATH500))
    assert examples[2].prompt == "Simplify $\\frac{84}{144}$." and examples[2].answer == "\\frac{7}{12}"
    assert examples[2].meta == {"level": 2, "subject": "Prealgebra"}


def test_directory_splits_and_missing_split(tmp_path):
    shutil.copy(GSM8K, tmp_path / "train.jsonl")
    shutil.copy(GSM8K, tmp_path / "test.jsonl")
    cfg = DatasetConfig(path=str(tmp_path), max_eval=3)
    assert len(load_examples(cfg, "train")) == 30 and len(load_examples(cfg, "eval")) == 3
    missing = cfg.model_copy(update={"eval_split": "validation"})
    with pytest.raises(ValueError, match=r"task\.dataset\.eval_split='validation' not in splits \['test', 'train'\]"):
        load_examples(missing, "eval")


def test_save_to_disk_dataset_dict(tmp_path):
    rows = _rows(MATH500)
    splits = {"train": datasets.Dataset.from_list(rows[:20]), "test": datasets.Dataset.from_list(rows[20:])}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    cfg = DatasetConfig(path=str(tmp_path / "saved"), prompt_field="problem", answer_field="solution")
    assert len(load_examples(cfg, "train")) == 20 and len(load_examples(cfg, "eval")) == len(rows) - 20


def test_eval_path_points_at_another_dataset():
    cfg = DatasetConfig(path=str(GSM8K), eval_path=str(MATH500), prompt_field="question", answer_field="answer")
    with pytest.raises(ValueError, match=r"task\.dataset\.prompt_field='question' not in columns \["):
        load_examples(cfg, "eval")  # MATH-500 calls it `problem`
    assert len(load_examples(cfg, "train")) == 30


def test_missing_column_names_the_field_and_the_columns():
    cfg = DatasetConfig(path=str(MATH500))  # default prompt_field 'question'
    with pytest.raises(ValueError) as info:
        load_examples(cfg, "train")
    message = str(info.value)
    assert message.startswith("task.dataset.prompt_field='question' not in columns [")
    assert "'problem'" in message and "\n" not in message
    bad_meta = DatasetConfig(path=str(GSM8K), meta_fields=["test_list"])
    with pytest.raises(ValueError, match=r"task\.dataset\.meta_fields='test_list' not in columns"):
        load_examples(bad_meta, "train")


def test_unreadable_paths(tmp_path):
    with pytest.raises(ValueError, match=r"task\.dataset\.path='/nonexistent/data.jsonl': no such file"):
        load_examples(DatasetConfig(path="/nonexistent/data.jsonl"), "train")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"this is not parquet")
    with pytest.raises(ValueError, match=r"task\.dataset\.path=.*broken\.parquet': unreadable parquet file"):
        load_examples(DatasetConfig(path=str(broken)), "train")
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(ValueError, match=r"unsupported file type '\.xlsx'"):
        load_examples(DatasetConfig(path=str(odd)), "train")


def test_template_fills_prompt_and_columns_but_keeps_latex_braces():
    row = {"text": "Add two numbers.", "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]}
    template = "{prompt}\nYour code should pass:\n{test_list}\nPut the answer in \\boxed{} ({unknown})."
    text = fill_template(template, row["text"], row)
    assert text == ("Add two numbers.\nYour code should pass:\nassert add(1, 2) == 3\nassert add(0, 0) == 0\n"
                    "Put the answer in \\boxed{} ({unknown}).")  # fmt: skip


def test_chat_template_rendering():
    tokenizer = _tokenizer(CHAT_TEMPLATE)
    cfg = DatasetConfig(path=str(GSM8K), prompt_template="{prompt}\nAnswer after '####'.", max_train=2)
    examples = load_examples(cfg, "train", tokenizer)
    question = _rows(GSM8K)[0]["question"]
    assert examples[0].prompt == f"<|user|>\n{question}\nAnswer after '####'.<|end|>\n<|assistant|>\n"
    off = cfg.model_copy(update={"use_chat_template": False})
    assert load_examples(off, "train", tokenizer)[0].prompt == f"{question}\nAnswer after '####'."


def test_without_a_chat_template_the_prompt_template_is_the_prompt():
    tokenizer = _tokenizer(None)
    assert render_prompt("Q: 1+1?\nA:", tokenizer, use_chat_template=True) == "Q: 1+1?\nA:"
    cfg = DatasetConfig(path=str(GSM8K), prompt_template="Question: {prompt}\nAnswer:", max_train=1)
    question = _rows(GSM8K)[0]["question"]
    assert load_examples(cfg, "train", tokenizer)[0].prompt == f"Question: {question}\nAnswer:"
