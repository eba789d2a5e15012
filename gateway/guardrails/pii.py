"""Structured personal data: regex candidates, then validation that rejects look-alikes.

Candidates are generous and validators strict (Luhn for cards, mod-97 and country length for
IBANs, SSA rules for SSNs, `ipaddress` for IPs, digit counts and date shapes for phones), which is
what keeps precision high on ordinary text full of years, versions, doses and p-values.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import replace

from gateway.guardrails.checksums import IBAN_LENGTHS, iban_valid, luhn_valid
from gateway.guardrails.credentials import find_secrets
from gateway.guardrails.findings import Finding, resolve_overlaps
from gateway.guardrails.quick import has_digit

EMAIL = re.compile(
    r"(?<![\w.+%-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)

# 13-19 digits in groups; the IIN prefix check (first digits) drops most random Luhn-valid runs.
CARD = re.compile(r"(?<![\w+-])\d(?:[ -]?\d){11,18}(?![\d-]|\.\d)")
# Visa, Mastercard, Amex, Diners, JCB (incl. 1800/2131), Discover, UnionPay, Maestro (12-19 digits).
CARD_PREFIX = re.compile(
    r"^(?:4|5[1-5]|2[2-7]|3[47]|3[068]|35|1800|2131|6011|64[4-9]|65|62|50|5[6-8]|6[37]|6304|0604)"
)

IBAN_HEAD = re.compile(r"[A-Z]{2}\d{2} ?$")


def _card_length_ok(digits: str) -> bool:
    """Brand-specific lengths where the brand fixes one; 12-19 for the rest (Maestro, UnionPay...)."""
    n = len(digits)
    if digits[:2] in ("34", "37"):
        return n == 15
    if digits[0] == "4":
        return n in (13, 16, 19)
    if digits[:2] in ("51", "52", "53", "54", "55") or "22" <= digits[:2] <= "27":
        return n == 16
    return 12 <= n <= 19


IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}(?![A-Za-z0-9])")

SSN = re.compile(r"(?<![\w./-])(\d{3})([- ]?)(\d{2})\2(\d{4})(?![\w/-]|\.\d)")
SSN_CONTEXT = re.compile(r"(?i)\b(?:ssn|social security|soc\.? sec\.?|tin|taxpayer)\b")

IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?:/\d{1,2})?(?![\w]|\.\d)"
)
IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3})(?![\w]|:[\w:])"
)
# Version numbers and enzyme (EC) numbers share the dotted-quad shape.
VERSION_BEFORE = re.compile(r"(?i)(?:\bv(?:ersion)?\.?\s*|\bv|\bEC\s*|\brelease\s*)$")

PHONE = re.compile(
    r"(?<![\w/.+-])(?:\+|\b00)?(?:\(\s*\+?\d{1,5}\s*\)|\d)(?:[\s.\-/]{0,2}(?:\(\d{1,5}\)|\d)){5,17}"
    r"(?:\s*(?:x|ext\.?|extension|#)\s*\d{1,6})?(?![\w/]|[.-]\d)"
)
PHONE_CONTEXT = re.compile(
    r"(?i)(?:phone|tel|telephone|mobile|cell|fax|call|ring|text|sms|whatsapp|contact|reach|dial|"
    r"nummer|telefon|handy|téléphone|portable|teléfono|móvil|telefono|cellulare)\b[^\n]{0,24}$"
)
DATE_LIKE = re.compile(r"^(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4})$")
PHONE_SEPARATORS = re.compile(r"[\s.\-/()]+")

STREET_SUFFIXES = (
    "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Square|Sq|Terrace|"
    "Way|Parkway|Pkwy|Circle|Cir|Highway|Hwy|Trail|Trl|Crescent|Close|Row|Walk|Alley|Bypass|Causeway|"
    "Center|Centre|Crossing|Crossroad|Expressway|Extension|Freeway|Gardens|Gateway|Green|Grove|Heights|"
    "Hill|Hills|Junction|Knoll|Landing|Loop|Mall|Manor|Meadow|Meadows|Mews|Mill|Mills|Mission|Motorway|"
    "Mount|Orchard|Oval|Park|Pass|Path|Pike|Pine|Pines|Plaza|Point|Port|Ports|Ridge|Route|Run|Shore|"
    "Shores|Spring|Springs|Station|Stravenue|Stream|Summit|Throughway|Trace|Track|Turnpike|Underpass|"
    "Union|Valley|Via|Viaduct|View|Views|Village|Ville|Vista|Well|Wells|Estate|Estates|Falls|Ferry|"
    "Field|Fields|Flat|Flats|Ford|Forest|Forge|Fork|Fort|Harbor|Haven|Island|Isle|Key|Lake|Lakes|"
    "Light|Lock|Lodge|Neck|Prairie|Radial|Ranch|Rapids|Rest|River|Shoal|Skyway|Square|Squares|Burg|"
    "Burgs|Bluff|Bluffs|Bottom|Branch|Bridge|Brook|Brooks|Camp|Canyon|Cape|Cliff|Cliffs|Club|Common|"
    "Corner|Corners|Course|Courts|Cove|Coves|Creek|Crest|Curve|Dale|Dam|Divide|Drives|Glen|Glens|"
    "Harbors|Hollow|Inlet|Islands|Junctions|Keys|Knolls|Land|Locks|Loaf|Parks|Parkways|Passage|Plain|"
    "Plains|Points|Ramp|Roads|Shoals|Streets|Tunnel|Unions|Vale|Ways|Wall|Lights|Mountain|Mountains|"
    "Gateway|Garden|Fall|Expressway|Extensions|Groves|Harbour|Trafficway"
)
STREET_US = re.compile(
    r"\b\d{1,6}[A-Za-z]?\s+(?:[NSEW]\.?\s+)?(?:[A-Z][\w'.-]*\s+){1,4}(?:" + STREET_SUFFIXES + r")s?\b\.?"
    r"(?:,?\s+(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|#)\s*[\w-]+)?"
)
_HOUSE_NUMBER = r"\d{1,5}\s?[a-zA-Z]?(?:\s?[/-]\s?\d{1,4}[a-z]?)?"
STREET_GERMANIC = re.compile(
    r"\b(?:(?:[A-ZÄÖÜ][\wäöüß]*-)+|[A-ZÄÖÜ][\wäöüß]*)(?:[Ss]traße|[Ss]trasse|[Ss]tr\.|[Ww]eg|[Gg]asse|[Pp]latz|"
    r"[Aa]llee|Ring|[Dd]amm|[Uu]fer|[Cc]haussee|[Pp]fad|[Ss]traat|[Ll]aan|[Pp]lein|[Gg]racht|[Kk]ade|"
    r"[Ss]ingel|[Dd]ijk|[Pp]ad|[Bb]oulevard|[Dd]reef|[Hh]of|[Ss]teeg|[Pp]ark|[Mm]arkt|Wal|[Ee]rf|[Bb]aan|"
    r"[Vv]eld|[Pp]lantsoen|Hove|Lei)\s+(?!(?:19|20)\d\d\b)" + _HOUSE_NUMBER + r"\b"
    r"|\b(?:[A-ZÄÖÜ][\wäöüß-]+\s)(?:Straße|Strasse|Weg|Gasse|Platz|Allee)\s+" + _HOUSE_NUMBER + r"\b"
)
# The words of a street name: capitalised words and the particles between them ("rue de la Paix").
_NAME_WORDS = (
    r"(?:[ \t]+(?:(?:de|del|della|dei|di|du|des|da|do|dos|das|la|le|les|van|der|den|het|y)\b"
    r"|(?:[ldLD]['\u2019])?[A-ZÀ-Ý][\w'\u2019.-]*)){1,6}"
)
# Street types that are not English words: enough on their own before a capitalised name.
_ROMANCE_TYPES = (
    r"rue|allée|impasse|chemin|quai|cours|calle|avenida|paseo|camino|carrera|carretera|rua|travessa|"
    r"viale|piazza|piazzale|corso|vicolo|largo|contrada|rotonda|borgo|strada|stretto|pasaje|rambla|"
    r"cañada|cuesta|callejón|ronda|urbanización|acceso|pasadizo|glorieta|vía|travesía|avinguda|carrer|"
    r"alameda|praça|avenue|boulevard|bd|via|plaza|place|route|passage|square|canale|incrocio"
)
# ...but the ones that are also English words (via, place, route) need a house number next to them.
_AMBIGUOUS = r"(?i:avenue|boulevard|bd|via|plaza|place|route|passage|square|canale|incrocio)"
_NUMBER_AFTER = r",?\s+(?:n\.?\s?|nº\s?|no\.?\s?)?\d{1,5}[a-zA-Z]?(?:/\d{1,4})?\b"
STREET_ROMANCE = re.compile(
    r"\b\d{1,5}(?:\s?(?:bis|ter))?,?\s+(?i:"
    + _ROMANCE_TYPES
    + r")\b"
    + _NAME_WORDS
    + r"|(?<![\w-])(?!"
    + _AMBIGUOUS
    + r"\b)(?i:"
    + _ROMANCE_TYPES
    + r")\b"
    + _NAME_WORDS
    + r"(?:"
    + _NUMBER_AFTER
    + r")?"
    + r"|(?<![\w-])"
    + _AMBIGUOUS
    + r"\b"
    + _NAME_WORDS
    + _NUMBER_AFTER
    # French style: a lower-case type before the name ("boulevard Ramos"); English puts it after.
    + r"|(?<![\w-])(?:avenue|boulevard)"
    + _NAME_WORDS
    + r"|\bC\."
    + _NAME_WORDS
    + _NUMBER_AFTER
)
ROMANCE_TYPE_WORDS = (*_ROMANCE_TYPES.split("|"), "c.")


ROMANCE_WORD_SET = frozenset(ROMANCE_TYPE_WORDS)
# Past this, splitting the text into words costs more than searching each type word (memchr-fast).
ROMANCE_SPLIT_MAX_CHARS = 4096
# Every ASCII character that is not alphanumeric (a word boundary below) becomes a space.
ASCII_BOUNDARIES = str.maketrans({chr(i): " " for i in range(128) if not chr(i).isalnum()})


def _romance_type_words(text: str) -> Iterator[tuple[int, int]]:
    """Where a street-type word stands alone; str.find per word beats a case-insensitive regex 10x.
    In short ASCII text the words present are known first from one split, so the rest are not
    searched."""
    lowered = text.lower()
    words: tuple[str, ...] | list[str] = ROMANCE_TYPE_WORDS
    if len(lowered) <= ROMANCE_SPLIT_MAX_CHARS and lowered.isascii():
        present = ROMANCE_WORD_SET.intersection(lowered.translate(ASCII_BOUNDARIES).split())
        words = [w for w in ROMANCE_TYPE_WORDS if w in present or (w == "c." and w in lowered)]
    for word in words:
        at = lowered.find(word)
        while at >= 0:
            end = at + len(word)
            if (at == 0 or not lowered[at - 1].isalnum()) and (
                end == len(lowered) or not lowered[end].isalnum()
            ):
                yield at, end
            at = lowered.find(word, end)


STREET_SECONDARY_FIRST = re.compile(
    r"\b(?:Flat|Apartment|Apt\.?|Unit|Suite|Studio)\s+\d{1,5}[A-Za-z]?,?\s+(?:[A-Z][\w'.-]*\s+){1,4}"
    r"(?:" + STREET_SUFFIXES + r")s?\b"
)


# Every pattern below except the romance streets' and IPv6 needs a digit: a text without one (most
# prose) skips them after one quick test, instead of each pattern trying every position.


def find_emails(text: str) -> Iterator[Finding]:
    if "@" not in text:
        return
    for m in EMAIL.finditer(text):
        yield Finding("EMAIL", m.start(), m.end(), "email")


def find_cards(text: str) -> Iterator[Finding]:
    if not has_digit(text):
        return
    for m in CARD.finditer(text):
        digits = m.group().replace(" ", "").replace("-", "")
        if IBAN_HEAD.search(text, max(0, m.start() - 5), m.start()):
            continue  # the account digits of an IBAN (valid or not) are not a card
        if _card_length_ok(digits) and CARD_PREFIX.match(digits) and luhn_valid(digits):
            yield Finding("CREDIT_CARD", m.start(), m.end(), "credit_card")


def find_ibans(text: str) -> Iterator[Finding]:
    if not has_digit(text):
        return
    for m in IBAN.finditer(text):
        candidate = m.group()
        # The candidate may swallow a following word ("DE89... BIC"); shrink until the checksum fits.
        compact = candidate.replace(" ", "")
        length = len(candidate)
        expected = IBAN_LENGTHS.get(compact[:2])
        if expected is None:
            continue
        if len(compact) > expected:
            kept, count = 0, 0
            for i, char in enumerate(candidate):
                if char != " ":
                    count += 1
                if count == expected:
                    kept = i + 1
                    break
            length = kept
        if iban_valid(candidate[:length]):
            yield Finding("IBAN", m.start(), m.start() + length, "iban")


def _ssn_valid(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def find_ssns(text: str) -> Iterator[Finding]:
    if not has_digit(text):
        return
    for m in SSN.finditer(text):
        area, separator, group, serial = m.groups()
        if not _ssn_valid(area, group, serial):
            continue
        # Nine bare digits are an SSN only when the text says so; 3-2-4 with dashes stands on its own.
        if separator == " " or not separator:
            if not SSN_CONTEXT.search(text, max(0, m.start() - 40), m.start()):
                continue
        yield Finding("US_SSN", m.start(), m.end(), "us_ssn")


def find_ips(text: str) -> Iterator[Finding]:
    if "." in text and has_digit(text):
        for m in IPV4.finditer(text):
            if VERSION_BEFORE.search(text, max(0, m.start() - 10), m.start()):
                continue
            yield Finding("IP_ADDRESS", m.start(), m.end(), "ipv4")
    if "::" in text or text.count(":") >= 5:
        for m in IPV6.finditer(text):
            candidate = m.group()
            if candidate.endswith(":") and not candidate.endswith("::"):
                candidate = candidate[:-1]  # "…:1d0: 403" - the colon is punctuation
            if sum(c.isalnum() for c in candidate) < 3:
                continue
            try:
                ipaddress.IPv6Address(candidate)
            except ValueError:
                continue
            yield Finding("IP_ADDRESS", m.start(), m.start() + len(candidate), "ipv6")


def _phone_plausible(text: str, start: int, candidate: str) -> bool:
    main = re.split(r"\s*(?:x|ext\.?|extension|#)\s*\d", candidate, maxsplit=1)[0].strip()
    digits = sum(c.isdigit() for c in main)
    international = main.startswith(("+", "00", "(+"))
    if not 7 <= digits <= (16 if main.startswith("00") else 15):
        return False
    if DATE_LIKE.match(main):
        return False
    groups = [g for g in PHONE_SEPARATORS.split(main.lstrip("+")) if g]
    lengths = [len(g) for g in groups]
    if lengths == [3, 2, 4]:
        return False  # SSN shape, which the SSN detector judges
    if max(lengths) < 2 or len(groups) > 7:
        return False
    if len(groups) == 2 and all(len(g) == 4 and g[:2] in ("19", "20") for g in groups):
        return False  # a range of years
    if "." in main and ("/" in main or "-" in main or re.search(r"(?:^|\D)0\.\d", main)):
        return False  # decimals: "0.967/0.947", "198.03-257.45"
    if "." in main and re.search(r"\d\.\d+\s", main + " ") and "(" not in main and main.count(".") == 1:
        return False  # a decimal number followed by another number
    if re.match(r"97[89][\s-]", main) and digits == 13:
        return False  # ISBN-13
    has_context = PHONE_CONTEXT.search(text, max(0, start - 40), start) is not None
    if international or has_context:
        return True
    # Without a prefix or a telling word, require the grouping phones are written in, and a full
    # national number (10+ digits) unless an area code is in parentheses.
    if len(groups) == 1 or (digits < 10 and "(" not in main):
        return False
    if "-" in main and len(groups[0]) == 4 and groups[0][:2] in ("19", "20"):
        return False  # starts with a year: a date or a document number
    if "(" not in main:
        if any(n > 4 for n in lengths[1:]) or (2 in lengths[1:] and len(groups) < 4):
            return False  # 123-45-67890 is no phone layout; 06 12 34 56 78 is
    return lengths[0] <= 5


def find_phones(text: str) -> Iterator[Finding]:
    if not has_digit(text):
        return
    for m in PHONE.finditer(text):
        candidate = m.group().rstrip(" .-/")
        if _phone_plausible(text, m.start(), candidate):
            yield Finding("PHONE", m.start(), m.start() + len(candidate), "phone")


def find_street_addresses(text: str) -> Iterator[Finding]:
    numbered = (
        ("street:us", STREET_US),
        ("street:secondary", STREET_SECONDARY_FIRST),
        ("street:germanic", STREET_GERMANIC),
    )
    for name, pattern in numbered if has_digit(text) else ():
        for m in pattern.finditer(text):
            yield Finding("STREET_ADDRESS", m.start(), m.end(), name, score=0.9)
    # The romance pattern is slow to try at every position; try it only around its street-type words.
    seen: set[tuple[int, int]] = set()
    for hint_start, hint_end in _romance_type_words(text):
        window_start = max(0, hint_start - 12)
        for m in STREET_ROMANCE.finditer(text, window_start, min(len(text), hint_end + 160)):
            if m.start() <= hint_start and (m.start(), m.end()) not in seen:
                seen.add((m.start(), m.end()))
                yield Finding("STREET_ADDRESS", m.start(), m.end(), "street:romance", score=0.9)


Detector = Callable[[str], Iterator[Finding]]
STRUCTURED_DETECTORS: dict[str, Detector] = {
    "EMAIL": find_emails,
    "CREDIT_CARD": find_cards,
    "IBAN": find_ibans,
    "US_SSN": find_ssns,
    "IP_ADDRESS": find_ips,
    "PHONE": find_phones,
    "SECRET": find_secrets,
    "STREET_ADDRESS": find_street_addresses,
}


def scan_structured(text: str, entities: frozenset[str] | set[str]) -> list[Finding]:
    """Every structured finding of the wanted entity types, overlaps resolved by specificity.

    All detectors run (not only the wanted ones) so that, e.g., a card number is not reported as
    a phone number when only PHONE is wanted; unwanted types are dropped after overlap resolution.
    """
    found = [f for step in _scan_steps(text) for f in step]
    return [f for f in resolve_overlaps(found) if f.entity in entities]


async def scan_structured_sliced(text: str, entities: frozenset[str] | set[str]) -> list[Finding]:
    """scan_structured for a long text on the event loop, giving it back after every detector's
    pass over a window (~1 ms each). Not a worker thread: a regex holds the GIL for its whole
    search, and the loop would wait up to the 5 ms switch interval on every wake-up."""
    found: list[Finding] = []
    for step in _scan_steps(text):
        found.extend(step)
        await asyncio.sleep(0)
    return [f for f in resolve_overlaps(found) if f.entity in entities]


# A long text is scanned in windows: one regex search over a megabyte without a match holds the GIL
# for up to 70 ms in one C call. Each window owns the findings that start in its core; the overlap
# lets an entity that starts there finish (up to WINDOW_OVERLAP_CHARS long, more than a PEM key)
# and the margin keeps the context before it (a keyword, a word boundary).
WINDOW_CHARS = 32_768
WINDOW_OVERLAP_CHARS = 8_192
WINDOW_MARGIN_CHARS = 256


def _scan_steps(text: str) -> Iterator[list[Finding]]:
    """The findings of one detector over one window at a time, at offsets in `text`."""
    if len(text) <= WINDOW_CHARS + WINDOW_OVERLAP_CHARS:
        for detector in STRUCTURED_DETECTORS.values():
            yield list(detector(text))
        return
    for core in range(0, len(text), WINDOW_CHARS):
        offset = max(0, core - WINDOW_MARGIN_CHARS)
        window = text[offset : core + WINDOW_CHARS + WINDOW_OVERLAP_CHARS]
        low, high = core - offset, core - offset + WINDOW_CHARS
        for detector in STRUCTURED_DETECTORS.values():
            yield [
                replace(f, start=f.start + offset, end=f.end + offset)
                for f in detector(window)
                if low <= f.start < high
            ]
