"""Contradiction detection between retrieved chunks of different documents.

Two chunks conflict when a sentence of one and a sentence of the other state the same thing with
a different value: a figure, an amount, a percentage, a date or a duration ("within 14 days of
purchase" vs "within 30 days of purchase"), or a named entity in the same slot ("played at
Raymond James Stadium in Tampa" vs "... in Glendale").

How "the same thing" is decided (lexical and pure, a few ms for a handful of chunks):
- each sentence becomes a sequence of tokens: stemmed content words (stopwords dropped) and typed
  values with a normalised form, so "thirty days" == "30 days" == "one month"-ish and
  "$1.39 billion" == "$1,390 million";
- sentence pairs from different documents whose content words overlap enough are aligned with
  difflib; a value that sits in a replaced slot of the alignment, next to words both sentences
  share, and differs from the value in the same slot of the other sentence, is a conflict;
- conservative on purpose, because a false conflict tells users two sources disagree when they
  do not: a second, non-value word swap in the pair ("Team plan costs $49" vs "Business plan
  costs $99"), values of different kinds or units, values written differently but equal, and
  chunks of the same document never make a conflict.

Pairs sharing a chunk and its value are merged into one ConflictGroup, so three sources saying
14 / 30 / 30 days form one group. `newest()` picks the member whose document is the most recent,
for the policy's prefer_newest_on_conflict.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from gateway.retrieval.types import Chunk

# Checked on RGB en_fact (bench/conflicts_rgb.py): entity 0.25 or value 0.15 found 2 more swaps
# but flagged 6-7 pairs of true passages; entity 0.5 lost 3 swaps for nothing. Entities need more
# shared context than figures because capitalised words are everywhere.
MIN_JACCARD_VALUE = 0.25
MIN_JACCARD_ENTITY = 0.35
MIN_SHARED_WORDS = 3  # content words both sentences must share before they are aligned at all
MIN_ANCHOR = 2  # shared words right next to the value that pin it to the same slot
SHORT_SWAP = 3  # a replaced run this short (tokens per side) is a word swap, not a paraphrase
DURATION_TOLERANCE = 0.1  # "4 weeks" vs "one month" after converting to days


@dataclass(slots=True)
class ConflictGroup:
    """Chunks (indexes into the input) that state different values for one subject."""

    members: list[int]
    subject: str  # what they disagree on, e.g. "refunded in full if you ask within … of purchase"
    values: dict[int, str] = field(default_factory=dict)  # member index -> the value as written


# ---------------------------------------------------------------------------------------------
# Values


class Value(NamedTuple):
    kind: str  # "date" | "money" | "percent" | "qty" | "entity"
    norm: tuple[object, ...]  # normalised form; equal norms mean the same value
    text: str  # as written
    start: int  # character offsets in the sentence
    end: int


_MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "sept": 9, "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip
_MONTH_RE = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sept?(?:ember)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "ninety": 90, "hundred": 100,
}  # fmt: skip
_SCALES = {
    "thousand": 1e3, "k": 1e3, "million": 1e6, "m": 1e6, "mn": 1e6, "billion": 1e9, "bn": 1e9,
    "b": 1e9, "trillion": 1e12, "tn": 1e12,
}  # fmt: skip
_CURRENCIES = {"$": "USD", "us$": "USD", "usd": "USD", "dollars": "USD", "dollar": "USD",
               "€": "EUR", "eur": "EUR", "euros": "EUR", "euro": "EUR",
               "£": "GBP", "gbp": "GBP", "pounds": "GBP"}  # fmt: skip
# Durations are compared in days so "2 weeks" and "14 days" agree.
_DAYS_PER = {"day": 1.0, "week": 7.0, "month": 30.0, "year": 365.0, "hour": 1 / 24, "minute": 1 / 1440}
_UNIT_QUALIFIERS = {"business", "calendar", "working", "full"}

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_NUMWORD = "|".join(_NUMBER_WORDS)
_SCALE = r"(?:thousand|million|billion|trillion|mn|bn|tn|k|m|b)\b"

# Order matters: earlier alternatives win (a date's year must not become a quantity).
_VALUE_RE = re.compile(
    rf"""
    (?P<iso>\b(?P<iy>\d{{4}})-(?P<im>\d{{2}})-(?P<id>\d{{2}})\b)
  | (?P<mdy>\b(?P<m1>{_MONTH_RE})\s+(?P<d1>\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(?P<y1>\d{{4}})\b)?)
  | (?P<dmy>\b(?P<d2>\d{{1,2}})(?:st|nd|rd|th)?\s+(?P<m2>{_MONTH_RE})(?:,?\s+(?P<y2>\d{{4}})\b)?)
  | (?P<my>\b(?P<m3>{_MONTH_RE}),?\s+(?P<y3>\d{{4}})\b)
  | (?P<time>\b\d{{1,2}}:\d{{2}}\b|\b\d+\s*[\u2013-]\s*\d+\b)
  | (?P<money>(?P<cur>us\$|[$€£])\s?(?P<mamt>{_NUM})(?:\s?(?P<mscale>{_SCALE}))?
       |\b(?P<mamt2>{_NUM})(?:\s?(?P<mscale2>{_SCALE}))?\s?(?P<cur2>usd|eur|gbp|dollars?|euros?|pounds)\b)
  | (?P<pct>\b(?P<pamt>{_NUM})\s?(?:%|percent\b|per\scent\b))
  | (?P<qty>\b(?P<qamt>{_NUM}|{_NUMWORD})(?:\s|-)(?P<qual>(?:business|calendar|working|full)\s)?
       (?P<unit>[a-z]{{2,}})\b)
  | (?P<year>\b(?:1[89]|20)\d{{2}}\b)
    """,
    re.I | re.X,
)
# A capitalised run: "Raymond James Stadium", "U.S.", "Tadej Pogačar", "Tampa, Florida".
_CAP = r"(?:[A-Z][\w'\u2019&.-]*|[A-Z]\.)"
_ENTITY_RE = re.compile(rf"{_CAP}(?:\s+(?:of\s+|de\s+|the\s+)?{_CAP})*")
_WORD_RE = re.compile(r"(?u)\b\w\w+\b")
# bm25s's list keeps pronouns, modals and most prepositions; here they would make unrelated
# sentences look alike ("you can ... within") and serve as anchors for nothing.
_STOPWORDS = frozenset(STOPWORDS_EN) | {
    "you", "your", "we", "our", "us", "i", "my", "he", "she", "his", "her", "its", "they", "them",
    "their", "can", "could", "may", "might", "must", "shall", "should", "would", "within", "from",
    "about", "after", "before", "between", "during", "over", "under", "up", "down", "out", "off",
    "than", "also", "only", "just", "all", "any", "each", "some", "more", "most", "other", "which",
    "who", "whom", "what", "when", "where", "how", "has", "have", "had", "do", "does", "did",
    "been", "being", "am", "so", "very", "per", "via", "while", "since", "until", "both",
}  # fmt: skip
# Capitalised only because they open a sentence or a heading; never an entity on their own.
_NOT_ENTITY = _STOPWORDS | {
    "however", "also", "after", "before", "between", "during", "since", "use", "if", "when", "while",
    "otherwise", "refunds", "note", "see", "yes", "no", "monday", "tuesday", "wednesday", "thursday",
    "friday", "saturday", "sunday", "today", "yesterday", "breaking", "news", "home", "official",
}  # fmt: skip
# Single capitalised words that describe rather than name ("Tanzanian novelist", "Zanzibar-born").
_MODIFIER_RE = re.compile(r"\w+(?:ian|ean|ese|ish|-born|-based)", re.I)


def _is_year(text: str) -> bool:
    return re.fullmatch(r"(?:1[89]|20)\d{2}", text) is not None


def _amount(text: str) -> float:
    low = text.lower()
    if low in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[low])
    return float(low.replace(",", ""))


def _date(y: str | None, m: str | None, d: str | None) -> tuple[object, ...] | None:
    """(year, month, day) with None for what the text leaves out; None if no such day exists."""
    year = int(y) if y else None
    month = (int(m) if m.isdigit() else _MONTHS[m.lower().rstrip(".")[:3]]) if m else None
    day = int(d) if d else None
    if day is not None and not 1 <= day <= 31:
        return None
    if year is not None and month is not None and day is not None:
        try:
            dt.date(year, month, day)
        except ValueError:
            return None
    return (year, month, day)


def _unit(word: str, qualifier: str | None) -> str | None:
    """Singular unit name, or None when the word after a number is not a unit ("3 of", "2 and")."""
    low = word.lower()
    if low in _STOPWORDS or low in _MONTHS or word[0].isupper():
        return None  # a capitalised word starts a name: "2010 Winter Olympics" is a year
    stem = _stem_one(low)
    return f"{qualifier.strip().lower()} {stem}" if qualifier else stem


def extract_values(sentence: str) -> list[Value]:
    """Typed values in a sentence, in order; entity spans never overlap a number or date."""
    values: list[Value] = []
    taken: list[tuple[int, int]] = []
    for m in _VALUE_RE.finditer(sentence):
        g = m.group
        start, end = m.span()
        norm: tuple[object, ...] | None = None
        kind = ""
        if g("iso"):
            kind, norm = "date", _date(g("iy"), g("im"), g("id"))
        elif g("mdy"):
            kind, norm = "date", _date(g("y1"), g("m1"), g("d1"))
        elif g("dmy"):
            kind, norm = "date", _date(g("y2"), g("m2"), g("d2"))
        elif g("my"):
            kind, norm = "date", _date(g("y3"), g("m3"), None)
        elif g("time"):
            taken.append((start, end))  # clock times and scores: kept away from the other patterns
            continue
        elif g("money"):
            cur = (g("cur") or g("cur2")).lower()
            amount = _amount(g("mamt") or g("mamt2"))
            scale = (g("mscale") or g("mscale2") or "").lower()
            kind, norm = "money", (_CURRENCIES.get(cur, cur), round(amount * _SCALES.get(scale, 1.0), 2))
        elif g("pct"):
            kind, norm = "percent", (_amount(g("pamt")),)
        elif g("qty"):
            unit = _unit(g("unit"), g("qual"))
            amount_text = g("qamt")
            if unit is None:
                # "2021 will", "30 and 90 days": a bare year is still a date, other bare numbers
                # carry too little meaning to compare.
                if _is_year(amount_text):
                    kind, norm = "date", (int(amount_text), None, None)
                    end = m.start("qamt") + len(amount_text)
                else:
                    continue
            elif _is_year(amount_text) and not g("unit").lower().endswith("s"):
                # "a 2017 third-person shooter": a year used as an adjective, not 2017 "thirds".
                kind, norm = "date", (int(amount_text), None, None)
                end = m.start("qamt") + len(amount_text)
            else:
                amount = _amount(amount_text)
                if unit in _DAYS_PER:
                    kind, norm = "qty", ("duration", amount * _DAYS_PER[unit], unit)
                else:
                    kind, norm = "qty", (unit, amount)
        elif g("year"):
            kind, norm = "date", (int(m.group()), None, None)
        if norm is None:
            continue
        values.append(Value(kind, norm, sentence[start:end], start, end))
        taken.append((start, end))
    for m in _ENTITY_RE.finditer(sentence):
        start, end = m.span()
        if any(s < end and start < e for s, e in taken):
            continue
        text = m.group().rstrip(".'\u2019-") if not re.fullmatch(r"(?:[A-Z]\.)+", m.group()) else m.group()
        words = text.split()
        while words and words[0].lower().strip(".") in _NOT_ENTITY:
            start += sentence[start:].index(words[0]) + len(words[0])
            words.pop(0)
        if not words or (len(words) == 1 and _MODIFIER_RE.fullmatch(words[0])):
            continue
        text = " ".join(words)
        start = sentence.index(words[0], start)
        # "Facebook's" is Facebook: the possessive must not make a second, different entity.
        key = tuple(re.sub(r"['\u2019]s$", "", w.lower()).strip(".,") for w in words)
        values.append(Value("entity", key, text, start, start + len(text)))
    values.sort(key=lambda v: v.start)
    return _join_places(sentence, values)


def _join_places(sentence: str, values: list[Value]) -> list[Value]:
    """'Tampa, Florida' is one place; a longer comma run ('France, Germany, Spain') is a list."""
    out: list[Value] = []
    i = 0
    while i < len(values):
        v = values[i]
        nxt = values[i + 1] if i + 1 < len(values) else None
        after = values[i + 2] if i + 2 < len(values) else None
        if (
            v.kind == "entity" and nxt is not None and nxt.kind == "entity"
            and re.fullmatch(r",\s*", sentence[v.end : nxt.start])
            and not (after is not None and after.kind == "entity"
                     and re.fullmatch(r",\s*", sentence[nxt.end : after.start]))
        ):  # fmt: skip
            out.append(Value("entity", v.norm + nxt.norm, sentence[v.start : nxt.end], v.start, nxt.end))
            i += 2
            continue
        out.append(v)
        i += 1
    return out


def _acronym(words: tuple[object, ...]) -> str:
    return "".join(str(w)[0] for w in words if str(w) not in _STOPWORDS)


def _abbreviates(short: str, long: str) -> bool:
    """An upper-case code whose letters run, in order, through the other name ("AUT", "Austria")."""
    letters = short.replace(".", "").lower()
    if not (short.isupper() and 2 <= len(letters) <= 4 and long.startswith(letters[0])):
        return False
    rest = iter(long)
    return all(ch in rest for ch in letters)


def compatible(a: Value, b: Value) -> bool:
    """Could both values be true at once (same value written differently, or one less precise)?"""
    if a.kind != b.kind:
        return True  # different kinds of value are not comparable: never a conflict
    if a.norm == b.norm:
        return True
    if a.kind == "date":
        return all(x is None or y is None or x == y for x, y in zip(a.norm, b.norm, strict=True))
    if a.kind == "money":
        if a.norm[0] != b.norm[0]:
            return True  # another currency: not comparable without rates
        x, y = float(a.norm[1]), float(b.norm[1])  # type: ignore[arg-type]
        return abs(x - y) <= 0.005 * max(abs(x), abs(y))
    if a.kind == "qty":
        if a.norm[0] == "duration" and b.norm[0] == "duration":
            x, y = float(a.norm[1]), float(b.norm[1])  # type: ignore[arg-type]
            if a.norm[2] == b.norm[2]:
                return x == y
            return abs(x - y) <= DURATION_TOLERANCE * max(x, y)  # months are not exactly 30 days
        return a.norm[0] != b.norm[0]  # other units: comparable only when the unit is the same
    if a.kind == "entity":
        wa = {str(w) for w in a.norm} - _STOPWORDS
        wb = {str(w) for w in b.norm} - _STOPWORDS
        if wa <= wb or wb <= wa:
            return True  # "Raducanu" vs "Emma Raducanu"; "Andy Murray" vs "Jamie Murray" is not
        ja = "".join(str(w).replace(".", "") for w in a.norm)
        jb = "".join(str(w).replace(".", "") for w in b.norm)
        if ja.startswith(jb) or jb.startswith(ja):
            return True  # "NobelPrize" vs "Nobel Prize", "J.F." vs "J. F. Lawton"
        if ja == _acronym(b.norm) or jb == _acronym(a.norm):
            return True  # "U.S." vs "United States"
        return _abbreviates(a.text, jb) or _abbreviates(b.text, ja)  # "AUT" vs "Austria"
    return False


# ---------------------------------------------------------------------------------------------
# Sentences


_local = threading.local()  # PyStemmer objects are not thread-safe


def _stemmer() -> Stemmer.Stemmer:
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = Stemmer.Stemmer("english")
        _local.stemmer = stemmer
    return stemmer


def _stem_one(word: str) -> str:
    return str(_stemmer().stemWord(word))


_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "inc", "ltd", "co", "vs", "etc", "e.g", "i.e", "no", "jr",
                  "sr", "u.s", "u.k", "approx"} | set(_MONTHS)  # fmt: skip
# Also cut at line breaks, at " · " and " ; " (search snippets and spec sheets list facts that way).
_BOUNDARY_RE = re.compile(
    r"(?:[.!?…]|\.\.\.)[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\s*\n+\s*|\s+(?:\.\.\.|·|;)\s+"
)


def split_sentences(text: str) -> list[str]:
    """Sentences and lines; no cut after "Feb." or an initial ("Niels B. Christiansen")."""
    out: list[str] = []
    start = 0
    for m in _BOUNDARY_RE.finditer(text):
        before = text[start : m.start() + 1].rstrip(".")
        last = before.rsplit(None, 1)[-1].lower() if before.strip() else ""
        if (
            m.group().startswith(".")
            and "\n" not in m.group()
            and (last in _ABBREVIATIONS or re.fullmatch(r"[a-z]", last))
        ):
            continue
        out.append(text[start : m.start() + 1].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


@dataclass(slots=True)
class _Sentence:
    chunk: int
    text: str
    tokens: list[tuple[object, ...]]  # ("w", stem) or ("v", kind, norm) — compared by difflib
    values: dict[int, Value]  # token position -> value
    words: frozenset[str]  # content stems, for the cheap overlap pre-filter
    spans: list[tuple[int, int]]  # character span of each token
    raw: frozenset[str]  # every word lower-cased, to see whether a name occurs in the other sentence


def _sentence(chunk: int, text: str) -> _Sentence | None:
    values = extract_values(text)
    if not values:
        return None
    tokens: list[tuple[object, ...]] = []
    spans: list[tuple[int, int]] = []
    by_pos: dict[int, Value] = {}
    raw: list[tuple[str, int, int]] = []
    vi = 0
    pos = 0
    while pos <= len(text):
        if vi < len(values) and values[vi].start <= pos:
            v = values[vi]
            by_pos[len(tokens)] = v
            tokens.append(("v", v.kind, v.norm))
            spans.append((v.start, v.end))
            pos = max(pos, v.end)
            vi += 1
            continue
        limit = values[vi].start if vi < len(values) else len(text)
        for m in _WORD_RE.finditer(text, pos, limit):
            w = m.group().lower()
            if w not in _STOPWORDS and not w.isdigit():
                raw.append((w, m.start(), m.end()))
                tokens.append(("w", ""))  # placeholder, stemmed below in one call
                spans.append(m.span())
        if vi >= len(values):
            break
        pos = limit
    stems = _stemmer().stemWords([w for w, _, _ in raw]) if raw else []
    it = iter(stems)
    tokens = [("w", next(it)) if t[0] == "w" else t for t in tokens]
    words = {str(t[1]) for t in tokens if t[0] == "w"}
    for v in by_pos.values():
        if v.kind == "entity":  # a shared name ("Raymond James Stadium") is shared context too
            words.update(f"e:{w}" for w in v.norm)
    raw_words = frozenset(w.lower() for w in re.findall(r"\w+", text))
    return _Sentence(chunk, text, tokens, by_pos, frozenset(words), spans, raw_words)


def _body(chunk: Chunk) -> str:
    # The chunker repeats the heading breadcrumb as the first line; headings of two versions
    # differ in exactly one word ("Annual plans" vs "Monthly plans"), which is not a conflict.
    text = chunk.text
    if chunk.section and text.startswith(chunk.section):
        text = text[len(chunk.section) :]
    return text


# ---------------------------------------------------------------------------------------------
# Pairwise comparison


class _Hit(NamedTuple):
    a: Value
    b: Value
    subject: str


def _entity_words(v: Value) -> set[str]:
    return {w for part in v.norm for w in re.findall(r"\w+", str(part))} - _STOPWORDS


def _names_differ(x: Value, y: Value, sa: _Sentence, sb: _Sentence) -> bool:
    """A swapped name: the words that differ do not occur anywhere in the other sentence.

    Catches what the alignment sees as different only because of case ("Nobel Prize in
    Literature" vs "Nobel prize in literature") or because the other sentence names it elsewhere.
    """
    wx, wy = _entity_words(x), _entity_words(y)
    only_x, only_y = wx - wy, wy - wx
    return bool(only_x) and bool(only_y) and not only_x & sb.raw and not only_y & sa.raw


def _names_a_thing(v: Value, s: _Sentence) -> bool:
    """A bare year glued to a name ("2019 NBA Draft", "Super Bowl 2021") tells which thing it is."""
    if v.kind != "date" or v.norm[1] is not None:
        return False
    return bool(re.match(r"\s+[A-Z]", s.text[v.end :]) or re.search(r"[A-Z]\w*\s+$", s.text[: v.start]))


def _clashes(x: Value, y: Value, sa: _Sentence, sb: _Sentence) -> bool:
    if x.kind != y.kind or compatible(x, y) or _names_a_thing(x, sa) or _names_a_thing(y, sb):
        return False
    return x.kind != "entity" or _names_differ(x, y, sa, sb)


def _compare(sa: _Sentence, sb: _Sentence) -> list[_Hit]:
    shared = sa.words & sb.words
    if len(shared) < MIN_SHARED_WORDS and not (len(shared) >= 2 and sa.words == sb.words):
        # Two words in common is enough only when nothing else differs ("Support replies within
        # 4 hours" vs "... 24 hours"); otherwise "The game was released on ..." would match
        # sentences about two different games.
        return []
    jaccard = len(shared) / len(sa.words | sb.words)
    if jaccard < MIN_JACCARD_VALUE:
        return []
    ops = difflib.SequenceMatcher(None, sa.tokens, sb.tokens, autojunk=False).get_opcodes()
    if not any(tag == "equal" for tag, *_ in ops):
        return []
    candidates: list[tuple[int, int, int]] = []  # (token in a, token in b, opcode index)
    vetoed = False
    for n, (tag, i1, i2, j1, j2) in enumerate(ops):
        if tag != "replace":
            continue
        left = _anchor(sa, ops[n - 1]) if n > 0 else 0
        right = _anchor(sa, ops[n + 1]) if n + 1 < len(ops) else 0
        if i2 - i1 <= SHORT_SWAP and j2 - j1 <= SHORT_SWAP:
            va = [i for i in range(i1, i2) if i in sa.values]
            vb = [j for j in range(j1, j2) if j in sb.values]
            pairs = [(i, j) for i in va for j in vb if sa.values[i].kind == sb.values[j].kind]
            clash = [(i, j) for i, j in pairs if _clashes(sa.values[i], sb.values[j], sa, sb)]
            has_words = any(sa.tokens[i][0] == "w" for i in range(i1, i2)) and any(
                sb.tokens[j][0] == "w" for j in range(j1, j2)
            )
            if clash and not has_words and left + right >= MIN_ANCHOR:
                candidates.extend((i, j, n) for i, j in clash[:1])
            elif has_words or (va and vb and not pairs):
                # Another word swapped next to the figures ("annual" vs "monthly"): the sentences
                # may be about different things, so the pair says nothing reliable.
                vetoed = True
        else:
            # A long divergence (paraphrase): only a value right at the edge of the shared
            # context on both sides is in the same slot.
            for edge_a, edge_b, anchor in ((i1, j1, left), (i2 - 1, j2 - 1, right)):
                if anchor >= MIN_ANCHOR and edge_a in sa.values and edge_b in sb.values:
                    if _clashes(sa.values[edge_a], sb.values[edge_b], sa, sb):
                        candidates.append((edge_a, edge_b, n))
    if vetoed or not candidates:
        return []
    kinds = {sa.values[i].kind for i, _, _ in candidates}
    distinct = {(sa.values[i].norm, sb.values[j].norm) for i, j, _ in candidates}
    if "entity" in kinds and len(distinct) > 1:
        return []  # a name differing alongside a figure most likely names a different subject
    if "entity" in kinds and jaccard < MIN_JACCARD_ENTITY:
        return []
    return [_Hit(sa.values[i], sb.values[j], _subject(sa, ops, n, i)) for i, j, n in candidates]


def _anchor(s: _Sentence, op: tuple[str, int, int, int, int]) -> int:
    """How many words an equal run of the alignment shares ("Raymond James Stadium" counts 3)."""
    if op[0] != "equal":
        return 0
    words = 0
    for i in range(op[1], op[2]):
        v = s.values.get(i)
        words += len(v.norm) if v is not None and v.kind == "entity" else 1
    return words


def _subject(s: _Sentence, ops: list[tuple[str, int, int, int, int]], n: int, pos: int) -> str:
    """The shared words around the value, as written in the first sentence: "within … of purchase"."""
    left = ops[n - 1] if n > 0 and ops[n - 1][0] == "equal" else None
    right = ops[n + 1] if n + 1 < len(ops) and ops[n + 1][0] == "equal" else None
    start, end = s.spans[pos]
    lo = s.spans[max(left[1], left[2] - 3)][0] if left else start
    hi = s.spans[min(right[2], right[1] + 3) - 1][1] if right else end
    text = f"{s.text[lo:start]}…{s.text[end:hi]}"
    return re.sub(r"\s+", " ", text).strip(" ,;:")


# ---------------------------------------------------------------------------------------------
# Public API


def find_conflicts(chunks: Sequence[Chunk]) -> list[ConflictGroup]:
    """Groups of chunks from different documents that state different values for the same thing.

    Groups come in order of their best-ranked member; members and values use indexes into
    `chunks`. Code chunks are skipped: numbers in code are identifiers, not facts.
    """
    sentences: list[_Sentence] = []
    for index, chunk in enumerate(chunks):
        if chunk.kind == "code":
            continue
        for text in split_sentences(_body(chunk)):
            s = _sentence(index, text)
            if s is not None:
                sentences.append(s)

    # Union-find over (chunk, kind, value) nodes: two pairs that share a chunk *and* its value
    # (A=14 vs B=30, A=14 vs C=30) describe one disagreement.
    parent: dict[tuple[object, ...], tuple[object, ...]] = {}
    written: dict[tuple[object, ...], str] = {}
    subject_of: dict[tuple[object, ...], str] = {}

    def find(x: tuple[object, ...]) -> tuple[object, ...]:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a_pos, sa in enumerate(sentences):
        for sb in sentences[a_pos + 1 :]:
            if sa.chunk == sb.chunk or chunks[sa.chunk].doc_id == chunks[sb.chunk].doc_id:
                continue
            for hit in _compare(sa, sb):
                na = (sa.chunk, hit.a.kind, _node_key(hit.a))
                nb = (sb.chunk, hit.b.kind, _node_key(hit.b))
                written.setdefault(na, hit.a.text)
                written.setdefault(nb, hit.b.text)
                ra, rb = find(na), find(nb)
                if ra != rb:
                    merged_subject = subject_of.get(ra) or subject_of.get(rb) or hit.subject
                    parent[rb] = ra
                    subject_of[ra] = merged_subject

    components: dict[tuple[object, ...], list[tuple[object, ...]]] = {}
    for node in parent:
        components.setdefault(find(node), []).append(node)
    groups: list[ConflictGroup] = []
    for root, nodes in components.items():
        values: dict[int, str] = {}
        for node in sorted(nodes, key=lambda nd: int(nd[0])):  # type: ignore[call-overload]
            values.setdefault(int(node[0]), written[node])  # type: ignore[call-overload]
        members = sorted(values)
        if len({chunks[i].doc_id for i in members}) < 2:
            continue
        groups.append(ConflictGroup(members=members, subject=subject_of.get(root, ""), values=values))
    groups.sort(key=lambda g: g.members[0])
    return groups


def _node_key(v: Value) -> tuple[object, ...]:
    # Durations in different units but the same length are the same node ("2 weeks" / "14 days").
    if v.kind == "qty" and v.norm[0] == "duration":
        return ("duration", round(float(v.norm[1]), 3))  # type: ignore[arg-type]
    return v.norm


def _version_key(text: str) -> tuple[int, ...] | None:
    parts = re.findall(r"\d+", text)
    return tuple(int(p) for p in parts) if parts else None


def newest(chunks: Sequence[Chunk], group: ConflictGroup) -> int:
    """The member whose document is the most recent: latest ISO doc_date, else highest version.

    Dates beat versions when members mix them (a date is unambiguous); members without either
    lose, and ties go to the better-ranked (earlier) member. Returns an index into `chunks`.
    """
    from gateway.retrieval.formats.dates import to_iso_date

    def key(i: int) -> tuple[int, tuple[int, ...]]:
        raw = chunks[i].doc_date or ""
        iso = to_iso_date(raw) if re.match(r"\s*\d{4}-\d{1,2}-\d{1,2}", raw) else None
        if iso:
            return (2, tuple(int(p) for p in iso.split("-")))
        version = _version_key(raw)
        if version:
            return (1, version)
        return (0, ())

    best = group.members[0]
    for i in group.members[1:]:
        if key(i) > key(best):
            best = i
    return best
