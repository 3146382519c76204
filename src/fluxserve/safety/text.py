"""Prompt moderation: normalisation against evasions, then term matching by category."""

from __future__ import annotations

import importlib.resources
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

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
INVISIBLE = re.compile("[\u00ad\u200b\u200c\u200d\u2060\ufeff]")
AGE = re.compile(r"\b(?:[1-9]|1[0-7])\s*(?:yo|y\s*o|years?\s*old|year-old)\b")


@dataclass(frozen=True)
class TermMatch:
    category: str
    term: str
    severity: float


def _collapse(word: str) -> str:
    return re.sub(r"(.)\1+", r"\1", word)


def _variants(word: str) -> set[str]:
    out = {word, _collapse(word), re.sub(r"(.)\1{2,}", r"\1\1", word)}
    for w in list(out):
        for suffix in ("es", "s", "ing", "ed"):
            if w.endswith(suffix) and len(w) > len(suffix) + 2:
                out.add(w[: -len(suffix)])
    return out


def words(text: str) -> tuple[list[str], set[str]]:
    """Normalised words of ``text`` (accents, case, invisible characters, leetspeak and
    letters dotted apart undone), and extra candidates: the words hidden in runs of spaced-out
    single letters ("a s e x y" -> "asexy", "sexy", ...)."""
    text = INVISIBLE.sub("", unicodedata.normalize("NFKD", text))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    out: list[str] = []
    for chunk in text.split():
        squashed = re.sub(r"[^a-z]", "", chunk.translate(LEET))
        if squashed:
            out.append(squashed)
    merged: list[str] = []
    extra: set[str] = set()
    run: list[str] = []
    for w in out + [""]:
        if len(w) == 1:
            run.append(w)
            continue
        if len(run) >= 3:
            joined = "".join(run)
            merged.append(joined)
            extra.update(joined[i:j] for i in range(len(joined)) for j in range(i + 3, len(joined) + 1))
        else:
            merged.extend(run)
        run = []
        if w:
            merged.append(w)
    return merged, extra


@lru_cache(maxsize=1)
def _lexicon() -> dict[str, list[tuple[str, float]]]:
    lex: dict[str, list[tuple[str, float]]] = {}
    for category, terms in TERMS.items():
        for term, severity in terms.items():
            lex.setdefault(term, []).append((category, severity))
    # better_profanity's maintained word list adds profanity the project list lacks.
    try:
        listing = importlib.resources.files("better_profanity").joinpath("profanity_wordlist.txt")
        for line in listing.read_text().splitlines():
            w = line.strip().lower()
            if w and w.isalpha() and w not in lex:
                lex[w] = [("profanity", MODERATE)]
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    return lex


def match_terms(text: str) -> list[TermMatch]:
    """Every category term found in ``text``."""
    lex = _lexicon()
    ws, extra = words(text)
    found: dict[tuple[str, str], TermMatch] = {}
    # Inside a spaced-out run keep the longest words only ("s e x y" is "sexy", not "sex").
    hits = sorted((g for g in extra if g in lex), key=len, reverse=True)
    kept: list[str] = []
    for g in hits:
        if not any(g in longer for longer in kept):
            kept.append(g)
    for g in kept:
        for category, severity in lex[g]:
            found[(category, g)] = TermMatch(category, g, severity)
    for n in (3, 2, 1):
        for i in range(len(ws) - n + 1):
            grams = [" ".join(ws[i : i + n])] if n > 1 else sorted(_variants(ws[i]))
            if n > 1:
                grams.append("".join(ws[i : i + n]))
            for g in grams:
                for category, severity in lex.get(g, ()):
                    found[(category, g)] = TermMatch(category, g, severity)
    lowered = unicodedata.normalize("NFKD", text).lower()
    if AGE.search(lowered):
        found[("minors", "age")] = TermMatch("minors", "age under 18", 0.9)
    return list(found.values())
