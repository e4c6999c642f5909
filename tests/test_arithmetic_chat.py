"""The arithmetic task in chat style: questions through a chat template, free-form replies judged by their
last number; and the compact style's examples left exactly as they were."""

import hashlib
import json

import pytest
from pydantic import ValidationError

from rollout.config import ArithmeticConfig
from rollout.tasks.arithmetic import ArithmeticTask, generate_examples, last_number, operand_pairs
from rollout.tasks.base import TaskExample

CHAT = dict(style="chat", reverse_answer=False, min_digits=2, max_digits=2, second_min_digits=1, second_max_digits=1)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("23 + 5 = 28", 28.0),
        ("The answer is 28.", 28.0),
        ("To add 23 and 5, we first", 5.0),
        ("1,234 apples", 1234.0),
        ("It is 12.5 or so", 12.5),
        ("no digits at all", None),
        ("", None),
    ],
)
def test_last_number(reply, expected):
    assert last_number(reply) == expected


def test_chat_reward_on_hand_written_replies():
    task = ArithmeticTask(ArithmeticConfig(**CHAT, num_train=4, num_eval=2), format_reward=0.5)
    replies = [
        "Sure! 23 + 5 equals 28.",  # right number in prose: 1 + format bonus
        "23 + 5 = 27",  # wrong number: format bonus only
        "To solve this problem, we need to",  # no number: nothing
        "First 23, then 5, so 28",  # several numbers, the last is right
        "28, wait, no: 29",  # several numbers, the last is wrong
        "28",  # the number only
    ]
    rewards = task.reward(["q"] * len(replies), replies, answer=["28"] * len(replies))
    assert rewards == [1.5, 0.5, 0.0, 1.5, 0.5, 1.5]
    assert [task.is_correct(r, TaskExample("q", "28")) for r in replies] == [True, False, False, True, False, True]


def test_chat_prompts_use_the_chat_template_and_the_system_prompt():
    from workers.tokenizer import build_tokenizer

    chat_tokenizer = build_tokenizer()
    chat_tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    cfg = ArithmeticConfig(**CHAT, num_train=3, num_eval=2, system_prompt="Be brief.")
    train, evaluation = generate_examples(cfg, chat_tokenizer)
    a, b = operand_pairs(cfg)[0]
    assert train[0] == TaskExample(f"<system>Be brief.<user>What is {a} + {b}?<assistant>", str(a + b))
    assert 10 <= a <= 99 and 0 <= b <= 9
    default_system = generate_examples(cfg.model_copy(update={"system_prompt": None}), chat_tokenizer)[0][0]
    assert default_system.prompt == f"<user>What is {a} + {b}?<assistant>"
    # a tokenizer without a chat template gets the bare question
    assert generate_examples(cfg, build_tokenizer())[0][0].prompt == f"What is {a} + {b}?"


def test_operand_ranges_and_capacity():
    pairs = operand_pairs(ArithmeticConfig(**CHAT, num_train=800, num_eval=100))
    assert len(set(pairs)) == 900  # every 2-digit + 1-digit problem, each once
    assert {a for a, _ in pairs} == set(range(10, 100)) and {b for _, b in pairs} == set(range(10))
    with pytest.raises(ValueError, match="num_train\\+num_eval=901 exceeds the 900 distinct problems"):
        operand_pairs(ArithmeticConfig(**CHAT, num_train=801, num_eval=100))


def test_chat_config_errors_name_the_field():
    with pytest.raises(ValidationError, match="set reverse_answer: false"):
        ArithmeticConfig(style="chat")
    with pytest.raises(ValidationError, match="must contain both"):
        ArithmeticConfig(**CHAT, question="What is {a}?")
    with pytest.raises(ValidationError, match=r"only \{a\} and \{b\} may appear in braces \(KeyError\('c'\)\)"):
        ArithmeticConfig(**CHAT, question="What is {a} + {b} + {c}?")
    with pytest.raises(ValidationError, match="min digits 3 exceed its max digits 1"):
        ArithmeticConfig(**{**CHAT, "second_min_digits": 3})


def test_compact_examples_are_unchanged():
    """The default sweep's data: a digest of the examples as generated before the chat style existed."""
    digests = []
    for cfg in (ArithmeticConfig(), ArithmeticConfig(min_digits=1, max_digits=2, num_train=500, num_eval=32)):
        train, evaluation = generate_examples(cfg)
        payload = json.dumps([(e.prompt, e.answer) for e in train + evaluation]).encode()
        digests.append(hashlib.sha1(payload).hexdigest())
    assert digests == ["9e7212d7a020f84c4958091123aa7faec6279156", "f5c39ee55842cea4c3e0742b1d12222d780b7e74"]


def test_examples_are_drawn_once_per_config():
    """Equal configs share one cached draw (a sweep's driver builds the task four times before its first trial);
    any field that changes the data gives its own."""
    cfg = ArithmeticConfig(min_digits=1, max_digits=2, num_train=500, num_eval=32)
    first = generate_examples(cfg)
    assert generate_examples(ArithmeticConfig(min_digits=1, max_digits=2, num_train=500, num_eval=32)) is first
    reseeded = generate_examples(cfg.model_copy(update={"seed": 7}))
    assert reseeded is not first and [e.prompt for e in reseeded[0]] != [e.prompt for e in first[0]]
    assert generate_examples(cfg.model_copy(update={"reverse_answer": False}))[0][0].answer == first[0][0].answer[::-1]
