"""The form of a question the semantic cache embeds and compares: spelling that changes no answer removed.

"What is the boiling point of water at sea level?" and "what's the boiling point of water at sea
level" ask the same thing, but their embeddings differ (cosine 0.95) by the contraction and the
question mark alone. So before embedding, both the cached question and the new one are brought to
one form: Unicode compatibility forms and curly quotes folded, lower case, English contractions
spelled out ("what's" -> "what is", "don't" -> "do not"), punctuation between words dropped, runs
of whitespace collapsed. Punctuation that is part of a token stays: "c++", "c#", "3.5", "e-mail",
"node.js". The exact cache does not use this form: it keys on the request as sent.
"""

from __future__ import annotations

import re
import unicodedata

# Part of the semantic scope: vectors of another form are never compared with this one's.
NORMAL_FORM = "normal-form-1"
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u201c": '"', "\u201d": '"'})
# Irregular negations first, then the regular suffixes.
_IRREGULAR = {
    "can't": "can not",
    "cannot": "can not",
    "won't": "will not",
    "shan't": "shall not",
    "ain't": "is not",
    "let's": "let us",
    "y'all": "you all",
}
_IRREGULAR_RE = re.compile(r"\b(?:" + "|".join(re.escape(k) for k in _IRREGULAR) + r")\b")
# "'s" is "is" only after words where it cannot be a possessive ("what's", "it's", "there's").
_IS_AFTER = "what|who|where|when|why|how|that|it|there|here|he|she|this|which"
_CONTRACTIONS = [
    (re.compile(r"\b(" + _IS_AFTER + r")'s\b"), r"\1 is"),
    (re.compile(r"(\w)n't\b"), r"\1 not"),
    (re.compile(r"(\w)'re\b"), r"\1 are"),
    (re.compile(r"(\w)'ll\b"), r"\1 will"),
    (re.compile(r"(\w)'ve\b"), r"\1 have"),
    (re.compile(r"\bi'm\b"), "i am"),
    (re.compile(r"(\w)'d\b"), r"\1 would"),
]
# Punctuation that is not inside a token: anything but word characters, apostrophes, + and # at
# a word's end, and ' . - / between word characters.
_LOOSE_PUNCTUATION = re.compile(r"(?<=\w)['.\-/](?=\w)|(?<=\w)(?:\+\+|#)|\w+|(\s+)|(.)")


def normalize_question(text: str) -> str:
    """The comparison form of a question (see the module docstring); "" for text with no words."""
    folded = unicodedata.normalize("NFKC", text).translate(_QUOTES).lower()
    folded = _IRREGULAR_RE.sub(lambda m: _IRREGULAR[m.group(0)], folded)
    for pattern, replacement in _CONTRACTIONS:
        folded = pattern.sub(replacement, folded)
    kept: list[str] = []
    for match in _LOOSE_PUNCTUATION.finditer(folded):
        if match.group(1) is not None or match.group(2) is not None:
            kept.append(" ")  # whitespace and loose punctuation both separate words
        else:
            kept.append(match.group(0))
    return " ".join("".join(kept).split())
