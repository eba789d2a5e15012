"""Token counting with the embedder's own tokenizer, so chunk budgets match what it sees.

Counts exclude the [CLS]/[SEP] special tokens and ignore the truncation baked into the
shipped tokenizer.json; WordPiece pre-tokenizes on whitespace and punctuation, so counts of
whitespace-joined pieces add up, which lets the chunker count each sentence or row once.

The tokenizer ships inside this package (data/minilm-tokenizer.json, see MINILM_TOKENIZER.md).
`ApproxCounter`, a character-ratio estimate, serves callers that want no tokenizer at all.
Measured on the sample corpus: prose averages 4.4 characters per MiniLM WordPiece token,
prose + code + tables 3.8. The estimate uses 4.0, so prose chunks stay inside the budget
and code-heavy chunks may overshoot it by about 5%.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

# all-MiniLM-L6-v2's tokenizer.json, shipped as package data (the embedder reads it too).
MINILM_TOKENIZER = Path(__file__).resolve().parent / "data" / "minilm-tokenizer.json"
CHARS_PER_TOKEN_ESTIMATE = 4.0


class TokenCounter(Protocol):
    def count(self, text: str) -> int: ...

    def count_many(self, texts: Sequence[str]) -> list[int]: ...


class WordPieceCounter:
    """Exact counts from a Hugging Face tokenizer.json (Rust tokenizers, batch-encoded)."""

    def __init__(self, tokenizer_json: Path) -> None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_json))
        # The file ships with truncation at the model's window and padding; both would
        # make counts lie about long or short texts.
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encs]


class ApproxCounter:
    """An estimate without a tokenizer: ceil(chars / CHARS_PER_TOKEN_ESTIMATE)."""

    def count(self, text: str) -> int:
        return -(-len(text) // int(CHARS_PER_TOKEN_ESTIMATE))

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [self.count(t) for t in texts]


_lock = threading.Lock()
_default: TokenCounter | None = None


def default_counter() -> TokenCounter:
    """The process-wide counter, loaded once on first use."""
    global _default
    with _lock:
        if _default is None:
            _default = WordPieceCounter(MINILM_TOKENIZER)
        return _default


def count_tokens(text: str) -> int:
    return default_counter().count(text)
