"""Long texts as pieces the model can say: sentences, split further at clauses, then at words.

A KaniTTS model is trained on clips of at most ~12 s and degrades past its training length, so
a long text is said piece by piece. Splitting at a full stop keeps the prosody of a sentence;
a sentence longer than the limit is split at its last clause mark (, ; : and dashes) that fits,
and a clause without one at the last space that fits.
"""

from __future__ import annotations

import re

# A sentence ends at . ! ? or … (and a closing quote or bracket) before white space.
_SENTENCE_END = re.compile(r"(?<=[.!?…][\"')\]»”’])\s+|(?<=[.!?…])\s+")
_CLAUSE_MARK = re.compile(r"[,;:]\s|\s[-–—]\s")


def split_text(text: str, max_chars: int) -> list[str]:
    """The pieces of ``text`` in order, each at most ``max_chars`` characters (a longer word stays whole)."""
    text = " ".join(text.split())
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        pieces.extend(_fit(sentence.strip(), max_chars))
    return [p for p in pieces if p]


def _fit(sentence: str, max_chars: int) -> list[str]:
    out: list[str] = []
    rest = sentence
    while len(rest) > max_chars:
        window = rest[: max_chars + 1]
        cuts = [m.end() for m in _CLAUSE_MARK.finditer(window) if m.end() <= max_chars + 1]
        if cuts:
            cut = cuts[-1]
        else:
            space = window.rfind(" ")
            cut = space if space > 0 else (rest.find(" ", max_chars) if " " in rest[max_chars:] else len(rest))
        out.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        out.append(rest)
    return out
