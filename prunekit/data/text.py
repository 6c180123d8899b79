"""Plain-text corpora for language-model evaluation, and tokenisation for perplexity.

Files live under ``<data root>/text/``; their sha256 prefixes are checked on every read (they are small).
"""
from __future__ import annotations

import hashlib
from typing import Optional

import torch

from ..errors import ConfigError, DataNotFoundError
from ..paths import data_file

SHA256_PREFIX = {
    "text/wikitext2_test.txt": "d790b833ef8cf03a",
    "text/wikitext2_valid.txt": "f0737ed31fc13290",
    "text/tinyshakespeare.txt": "86c4e6aa9db7c042",
}
WIKITEXT2_URL = "https://huggingface.co/datasets/Salesforce/wikitext (config wikitext-2-raw-v1)"
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def read_text(relative: str) -> str:
    """Read a text file under the data root as UTF-8 after checking its sha256 prefix."""
    path = data_file(relative, what="text corpus")
    raw = path.read_bytes()
    expected = SHA256_PREFIX.get(relative)
    if expected and not hashlib.sha256(raw).hexdigest().startswith(expected):
        raise DataNotFoundError(f"prunekit.data.text: {path} is not the expected file (sha256 prefix {expected})")
    return raw.decode("utf-8")


def wikitext2(split: str = "test") -> str:
    """WikiText-2 (raw, tokenised with spaces around punctuation) as one string.

    Args:
        split: ``"test"`` (1.26 MB) or ``"valid"`` (1.12 MB; ``"validation"`` is accepted too).
    """
    split = "valid" if split == "validation" else split
    if split not in ("test", "valid"):
        raise ConfigError(f"prunekit.data.text: wikitext2 split must be 'test' or 'valid', got '{split}' "
                          f"(the training split is not stored locally; source: {WIKITEXT2_URL})")
    return read_text(f"text/wikitext2_{split}.txt")


def tinyshakespeare(split: str = "all") -> str:
    """Tiny Shakespeare (1.1 MB). ``"train"`` is the first 90% of characters, ``"test"``/``"valid"`` the rest."""
    text = read_text("text/tinyshakespeare.txt")
    cut = int(0.9 * len(text))
    if split == "all":
        return text
    if split == "train":
        return text[:cut]
    if split in ("test", "valid", "validation"):
        return text[cut:]
    raise ConfigError(f"prunekit.data.text: tinyshakespeare split must be 'all', 'train', 'test' or 'valid', "
                      f"got '{split}'")


def _encode(text: str, tokenizer) -> list:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_for_perplexity(text: str, tokenizer, max_tokens: Optional[int] = None) -> torch.Tensor:
    """Token ids of `text` without special tokens, optionally only the first `max_tokens`.

    With `max_tokens`, growing prefixes of the text are tokenised (starting at 8 characters per token) until they
    give at least ``max_tokens + 64`` tokens, so the kept tokens never touch the cut and equal the first
    `max_tokens` ids of the whole text's encoding.

    Args:
        text: the corpus.
        tokenizer: a Hugging Face tokenizer (callable returning ``{"input_ids": [...]}``).
        max_tokens: keep only this many ids; None keeps all.

    Returns:
        ``[T]`` int64 token ids.
    """
    if max_tokens is None:
        ids = _encode(text, tokenizer)
    else:
        chars = max(64, 8 * max_tokens)
        while True:
            ids = _encode(text[:chars], tokenizer)
            if len(ids) >= max_tokens + 64 or chars >= len(text):
                break
            chars *= 2
        ids = ids[:max_tokens]
    return torch.tensor(ids, dtype=torch.long)
