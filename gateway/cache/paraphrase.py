"""Does a cached question ask the same thing as a new one? The check after cosine similarity.

Sentence embeddings are blind to exactly the details that change an answer: on Quora's labelled
pairs, most wrong hits above cosine 0.97 differ in a number ("train no. 19707" / "19708"), in
who does what to whom ("What do Croats think of Turks?" / "... Turks think of Croats?"), in a
negation ("... if no repetitions are allowed" / "... if repetitions are allowed"), in the kind of
question ("Can Islam be reformed?" / "How can Islam be reformed?") or in one added word
("... in Marshall County" / "... in Washington County"). So a paraphrase may reuse an answer only
when, besides being close in meaning, both questions

- ask the same kind of question (what / how / why / when / where / who / how much, or a yes-no
  question with the same verb: "can I" is not "should I");
- carry the same numbers and as many negations;
- both address "you", or neither does: "What do you think of X?" asks the one answering;
- use the same content words (stemmed: "parts" = "part"), ignoring function words and fillers
  such as "really" or "actually";
- put the shared content words in the same order.

Each rule is a single reason string, so the stage can record why a candidate was not served.
Measured on held-out QQP pairs in bench/cache_quality.py (curve in bench/CACHE_RESULTS.md).
The rules are for English; other languages pass them only when worded identically.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import Stemmer

# Words that carry no detail an answer depends on: articles, prepositions, auxiliaries, pronouns,
# and fillers. Wh-words, modals and negations are not here: they go into the frame or negation.
FUNCTION_WORDS = frozenset(
    """a an the of to in on for and or at by with from as about into onto than then so if
    is are was were be been being am do does did done i you he she it we they me him her us them
    my your his its our their mine yours myself yourself ourselves themselves this that these those
    there here any some s t ve ll re d m really actually exactly just also even truly basically
    ever very please anyone someone somebody one within inside via upon toward towards thats
    theres lets im ive weve youre youve youll youd hes shes theyre theyve""".split()
)
NEGATIONS = frozenset(
    "not no never without nothing none nobody nowhere neither nor dont doesnt didnt isnt arent "
    "wasnt werent cant cannot couldnt wont wouldnt shouldnt hasnt havent hadnt nt".split()
)
# Apostrophes are dropped before matching, so "what's" arrives as "whats".
WH_FRAMES = {
    "whats": "what",
    "hows": "how",
    "whys": "why",
    "whens": "when",
    "wheres": "where",
    "whos": "who",
    "what": "what",
    "which": "what",
    "how": "how",
    "why": "why",
    "when": "when",
    "where": "where",
    "who": "who",
    "whom": "who",
    "whose": "who",
}
# A question with no wh-word is a yes-no question; its leading verb says which one.
YES_NO_FRAMES = {
    "is": "be",
    "are": "be",
    "was": "be",
    "were": "be",
    "am": "be",
    "do": "do",
    "does": "do",
    "did": "do",
    "can": "can",
    "could": "can",
    "should": "should",
    "shall": "should",
    "ought": "should",
    "will": "will",
    "would": "will",
    "has": "have",
    "have": "have",
    "had": "have",
    "may": "may",
    "might": "may",
    "must": "must",
}
# "What do you think of X?" asks for the one answering's view, "What do people think of X?" does
# not. The asker's own "I" / "we" is not compared: "How to reset a password?" and "How do I reset
# my password?" ask the same (on QQP, requiring it too bought 0.001-0.005 precision for 0.3 points
# of recall). Possessives are left out: "your refund policy" is "the refund policy" in a support
# chat, and counting them changed no precision figure at 0.95 and above.
ADDRESSEE_WORDS = frozenset("you yourself yourselves youre youve youll youd".split())
QUANTITY_WORDS = frozenset({"much", "many", "long", "often", "far", "old", "big"})
MODALS = frozenset(YES_NO_FRAMES) - {"is", "are", "was", "were", "am", "do", "does", "did"}
# Any script's words ("c++" and "c#" are not "c").
_WORD = re.compile(r"\w+(?:\+\+|#)?")
_local = threading.local()  # PyStemmer objects are not thread-safe


def _stemmer() -> Stemmer.Stemmer:
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    return stemmer


@dataclass(frozen=True, slots=True)
class QuestionShape:
    """What of a question must match for another question to share its answer."""

    frame: str
    content: tuple[str, ...]  # stemmed content words, in order
    numbers: tuple[str, ...]  # sorted
    negations: int
    addressee: bool  # mentions you


def question_shape(text: str) -> QuestionShape:
    words = _WORD.findall(text.lower().replace("'", "").replace("\u2019", ""))
    frame = _frame(words)
    numbers = tuple(sorted(w for w in words if any(c.isdigit() for c in w)))
    # How many, not where: "Why isn't X shipped?" and "Why is X not shipped?" ask the same thing.
    negations = sum(w in NEGATIONS for w in words)
    addressee = any(w in ADDRESSEE_WORDS for w in words)
    kept = [
        w
        for w in words
        if w not in FUNCTION_WORDS
        and w not in NEGATIONS
        and w not in WH_FRAMES
        and w not in MODALS
        and not w.isdigit()
    ]
    content = tuple(_stemmer().stemWords(kept))
    return QuestionShape(frame, content, numbers, negations, addressee)


def _frame(words: list[str]) -> str:
    """The question words in order ("what" or "what how" for two questions in one), else the verb."""
    frames: list[str] = []
    for i, word in enumerate(words):
        frame = WH_FRAMES.get(word)
        if frame is not None:
            if frame == "how" and i + 1 < len(words) and words[i + 1] in QUANTITY_WORDS:
                frame = "how " + words[i + 1]
            if frame not in frames:
                frames.append(frame)
    if frames:
        return " ".join(frames)
    # A yes-no question opens with its verb ("Can I ...", "Is it ..."); anything else is a statement.
    verb = YES_NO_FRAMES.get(words[0]) if words else None
    return "yes-no " + verb if verb is not None else "statement"


def mismatch(cached: QuestionShape, new: QuestionShape) -> str | None:
    """Why the two questions may need different answers; None when nothing tells them apart."""
    if cached.frame != new.frame:
        return f"question type differs ({cached.frame} / {new.frame})"
    if cached.numbers != new.numbers:
        return "numbers differ"
    if cached.negations != new.negations:
        return "negation differs"
    if cached.addressee != new.addressee:
        return "addressee differs (you)"
    if cached.content != new.content:
        only_cached = set(cached.content) - set(new.content)
        only_new = set(new.content) - set(cached.content)
        if only_cached or only_new:
            return "words differ: " + ", ".join(sorted(only_cached | only_new)[:4])
        return "word order differs"
    return None
