"""The embedded model's offline tokenizer: byte-level BPE with one token per digit.

Byte-level (not character-level) because a character-level vocabulary under a Qwen2 config silently loses
spaces in transformers 5.x and in vLLM; single-digit tokens because multi-digit merges make arithmetic
needlessly hard for a tiny model. Saved as a HF tokenizer directory, so `AutoTokenizer.from_pretrained`
and vLLM load it like any hub tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
_TRAINING_TEXT = [
    "0123456789+-*/=()., ",
    "left right up down move pick open key door goal wall floor hole start",
    "You are at . Goal is at . Action: Answer: The answer is #### \\boxed{}",
]


def build_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """Deterministic: the same vocab_size always yields the same vocabulary."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TRAINING_TEXT * 50, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    tokenizer.save_pretrained(str(directory))
