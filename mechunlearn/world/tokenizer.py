"""A byte-level BPE tokenizer trained on the world's corpus, laid out like Pythia's.

``<|endoftext|>`` is id 0 (bos, eos and unk), ``<|padding|>`` id 1 (pad); ByteLevel pre-tokenizer without a
prefix space and the ByteLevel decoder, so ``decode(encode(text)) == text`` for any text. The tokenizer is
saved as a ``transformers`` directory and loaded back from it: TransformerLens' ``set_tokenizer`` re-loads a
tokenizer from ``init_kwargs["name_or_path"]``, which an in-memory tokenizer lacks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mechunlearn.data import DataError

__all__ = ["EOS_TOKEN", "PAD_TOKEN", "train_bpe", "save_tokenizer", "load_tokenizer"]

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE (deterministic for the same texts and vocab size)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike) -> None:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` into ``directory`` (created if needed)."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(directory))
    # the portable class name: transformers 4.x and 5.x both resolve it
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved by :func:`save_tokenizer` (or any HF tokenizer directory) from disk only."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        raise DataError(
            f"{directory}: no tokenizer.json here; pass the tokenizer/ directory of a saved world "
            "(see mechunlearn.world.build_world(out=...))"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
