"""Prompt moderation: normalisation against evasions, then term matching by category.

Every step is linear in the prompt's length, whatever the prompt: letters spaced apart are
searched for lexicon terms with a trie walk that stops at the longest term's length, and word
n-grams longer than the longest term are never built.
"""

from __future__ import annotations

import importlib.resources
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import product

from fluxserve.safety.terms import MODERATE, TERMS

LEET = str.maketrans(
    {
        "0": "o",
        "1": "i",
        "3": "e",
        "4": "a",
        "5": "s",
        "7": "t",
        "@": "a",
        "$": "s",
        "!": "i",
        "|": "i",
        "+": "t",
        "€": "e",
        "8": "b",
    }
)
# "1", "|" and "!" stand for "l" as often as for "i" ("gir1", "1ingerie"): words holding one are
# also read this way.
LEET_L = str.maketrans({**{chr(k): v for k, v in LEET.items()}, "1": "l", "|": "l", "!": "l"})
AMBIGUOUS_LEET = frozenset("1|!")
# Latin look-alikes that NFKD leaves alone (Cyrillic and Greek letters inside Latin words).
CONFUSABLES = str.maketrans(
    {
        "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i",
        "ј": "j", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "ѕ": "s", "т": "t", "у": "y",
        "х": "x", "ԛ": "q", "ԝ": "w", "ɡ": "g", "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i",
        "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ѵ": "v",
    }
)  # fmt: skip
# Dropped before matching: accents and other marks, invisible format characters (zero-width
# spaces, soft hyphens, joiners) and lone surrogates, which can only come from broken input.
DROPPED_CATEGORIES = frozenset({"Mn", "Me", "Cf", "Cs"})


class _CleanTable(dict[int, "int | str | None"]):
    """``str.translate`` table for non-ASCII text: drops ``DROPPED_CATEGORIES``, maps
    look-alikes to Latin. Filled on first sight of each character (bounded)."""

    def __missing__(self, code: int) -> int | str | None:
        char = chr(code)
        value: int | str | None = code
        if unicodedata.category(char) in DROPPED_CATEGORIES:
            value = None
        elif code in CONFUSABLES:
            value = CONFUSABLES[code]
        if len(self) < 65536:
            self[code] = value
        return value


_CLEAN = _CleanTable()
_NUMBER = (
    r"(?:[1-9]|1[0-7]|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen"
    r"|fourteen|fifteen|sixteen|seventeen)"
)
# No two unbounded repeats may compete for the same characters (that backtracks quadratically
# on long runs of spaces): "y o" and "age : 9" spell the optional separator as an alternation.
AGE = re.compile(
    rf"\b{_NUMBER}[\s_-]*(?:y(?:\s*[/.]\s*|\s*)o\b|yrs?[\s_-]*old\b|years?[\s_-]*old\b"
    r"|years?\s+of\s+age\b)"
    r"|\bage[ds]?(?:\s+of)?(?:\s*[:=]\s*|\s*)(?:[1-9]|1[0-7])\b"
)
"""A stated age under 18 ("12 yo", "twelve-year-old", "aged 9"): counts as a ``minors`` term."""
MIN_HIDDEN = 3
"""Shortest term looked for inside a run of spaced-out letters."""


@dataclass(frozen=True)
class TermMatch:
    """One lexicon term found in a prompt, with its category and severity (0..1)."""

    category: str
    term: str
    severity: float


_REPEATS = re.compile(r"(.)\1+")
_TRIPLES = re.compile(r"(.)\1{2,}")
_NOT_LETTER = re.compile(r"[^a-z]")


@lru_cache(maxsize=4096)
def _variants(word: str) -> frozenset[str]:
    out = {word, _REPEATS.sub(r"\1", word), _TRIPLES.sub(r"\1\1", word)}
    for w in list(out):
        for suffix in ("es", "s", "ing", "ed"):
            if w.endswith(suffix) and len(w) > len(suffix) + 2:
                out.add(w[: -len(suffix)])
    return frozenset(out)


def normalise(text: str) -> str:
    """``text`` case-folded, compatibility-decomposed (fullwidth letters, ligatures), with
    look-alike Cyrillic and Greek letters read as Latin, and with accents, invisible characters
    and lone surrogates removed. Never raises, for any ``str``."""
    text = unicodedata.normalize("NFKD", text).casefold()
    return text if text.isascii() else text.translate(_CLEAN)


@dataclass(frozen=True)
class _Lexicon:
    terms: dict[str, list[tuple[str, float]]]
    trie: dict[str, dict]  # type: ignore[type-arg]  # letter -> subtrie; "" marks a term's end
    longest: int
    starts: frozenset[str]  # what can begin a term: first words and prefixes of terms


@lru_cache(maxsize=1)
def _lexicon() -> _Lexicon:
    terms: dict[str, list[tuple[str, float]]] = {}
    for category, entries in TERMS.items():
        for term, severity in entries.items():
            terms.setdefault(term, []).append((category, severity))
    # better_profanity's maintained word list adds profanity the project list lacks.
    try:
        listing = importlib.resources.files("better_profanity").joinpath("profanity_wordlist.txt")
        for line in listing.read_text().splitlines():
            w = line.strip().lower()
            if w and w.isalpha() and w not in terms:
                terms[w] = [("profanity", MODERATE)]
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    trie: dict[str, dict] = {}  # type: ignore[type-arg]
    for term in terms:
        if " " in term or len(term) < MIN_HIDDEN:
            continue
        node = trie
        for letter in term:
            node = node.setdefault(letter, {})
        node[""] = {}
    starts = {t.split(" ")[0] for t in terms} | {t[:i] for t in terms for i in range(1, len(t))}
    return _Lexicon(terms, trie, max(len(t) for t in terms), frozenset(starts))


def hidden_terms(run: str) -> set[str]:
    """Lexicon terms (of 3 letters or more) inside ``run``, a word made of letters that were
    spaced apart ("a s e x y" -> "asexy" -> {"sexy"}).

    Only the longest term at each position is kept, and a term lying inside a longer one found
    is dropped ("sexy", not also "sex"). Time is at most ``len(run)`` times the longest term's
    length; memory is bounded by the lexicon."""
    lex = _lexicon()
    spans: list[tuple[int, int]] = []
    for start in range(len(run)):
        node, end = lex.trie, 0
        for pos in range(start, min(len(run), start + lex.longest)):
            node = node.get(run[pos])  # type: ignore[assignment]
            if node is None:
                break
            if "" in node:
                end = pos + 1
        if end:
            spans.append((start, end))
    found: set[str] = set()
    reach = 0  # spans come by start, so one inside an earlier one ends at or before ``reach``
    for start, end in spans:
        if end > reach:
            found.add(run[start:end])
            reach = end
    return found


def _readings(chunk: str) -> tuple[str, ...]:
    """The letters of one whitespace-separated chunk, leetspeak undone, in every reading."""
    if chunk.isalpha() and chunk.isascii():  # the common case: a plain word
        return (chunk,)
    first = _NOT_LETTER.sub("", chunk.translate(LEET))
    if AMBIGUOUS_LEET.isdisjoint(chunk):
        return (first,) if first else ()
    second = _NOT_LETTER.sub("", chunk.translate(LEET_L))
    return tuple(dict.fromkeys(w for w in (first, second) if w))


def words(text: str) -> tuple[list[tuple[str, ...]], set[str]]:
    """Normalised words of ``text`` (see :func:`normalise`; leetspeak and letters dotted apart
    undone), each as its possible readings, and the lexicon terms hidden in runs of spaced-out
    single letters ("a s e x y" -> the word "asexy" and the hidden term "sexy")."""
    return _words(normalise(text))


def _words(normalised: str) -> tuple[list[tuple[str, ...]], set[str]]:
    out = [r for r in map(_readings, normalised.split()) if r]
    merged: list[tuple[str, ...]] = []
    hidden: set[str] = set()
    run: list[tuple[str, ...]] = []
    for w in [*out, ()]:
        if w and len(w[0]) == 1:
            run.append(w)
            continue
        if len(run) >= MIN_HIDDEN:
            joined = tuple(dict.fromkeys("".join(r[i] if i < len(r) else r[0] for r in run) for i in (0, 1)))
            merged.append(joined)
            for j in joined:
                hidden |= hidden_terms(j)
        else:
            merged.extend(run)
        run = []
        if w:
            merged.append(w)
    return merged, hidden


def _grams(window: list[tuple[str, ...]], lex: _Lexicon) -> Iterable[str]:
    if len(window) == 1:
        for reading in window[0]:
            yield from _variants(reading)
        return
    for combo in product(*window):
        # Only build joins that could be a term: bounded length, a possible first part.
        if combo[0] in lex.starts and sum(map(len, combo)) <= lex.longest:
            yield " ".join(combo)
            yield "".join(combo)


def match_terms(text: str) -> list[TermMatch]:
    """Every category term found in ``text``. Linear in ``len(text)``; never raises."""
    lex = _lexicon()
    normalised = normalise(text)
    ws, hidden = _words(normalised)
    found: dict[tuple[str, str], TermMatch] = {}
    for g in hidden:
        for category, severity in lex.terms[g]:
            found[(category, g)] = TermMatch(category, g, severity)
    for n in (3, 2, 1):
        for i in range(len(ws) - n + 1):
            for g in _grams(ws[i : i + n], lex):
                for category, severity in lex.terms.get(g, ()):
                    found[(category, g)] = TermMatch(category, g, severity)
    if AGE.search(normalised):
        found[("minors", "age")] = TermMatch("minors", "age under 18", 0.9)
    return list(found.values())
