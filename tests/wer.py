"""Word error rate and concatenated minimum-permutation WER (cpWER, as in the CHiME-6 and meeteval scoring) for
transcripts of built conversations: the reference is who said which words, the hypothesis a result's turns."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping

_WORD = re.compile(r"[a-z0-9']+")
#: spelled-out digits, so that "2" and "two" count as the same word
_DIGITS = dict(enumerate("zero one two three four five six seven eight nine".split()))


def words(text: str) -> list[str]:
    """Lowercase words without punctuation (the usual normalisation before scoring)."""
    out = []
    for w in _WORD.findall(text.lower().replace("-", " ")):
        out.append(_DIGITS[int(w)] if w.isdigit() and len(w) == 1 else w)
    return out


def edits(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def wer(ref: str, hyp: str) -> float:
    r = words(ref)
    return edits(r, words(hyp)) / max(len(r), 1)


def cpwer(ref: Mapping[str, Iterable[str]], hyp: Mapping[str, Iterable[str]]) -> float:
    """Each speaker's words concatenated; the speaker mapping that gives the fewest errors; unmatched speakers
    count all their words as errors. ``ref``/``hyp``: speaker -> utterances in time order."""
    r = {s: words(" ".join(u)) for s, u in ref.items()}
    h = {s: words(" ".join(u)) for s, u in hyp.items()}
    total = sum(len(w) for w in r.values()) or 1
    refs, hyps = list(r), list(h)
    n = max(len(refs), len(hyps))
    refs += [None] * (n - len(refs))  # type: ignore[list-item]
    hyps += [None] * (n - len(hyps))  # type: ignore[list-item]
    best = min(
        sum(edits(r.get(a, []), h.get(b, [])) for a, b in zip(refs, perm, strict=True))
        for perm in itertools.permutations(hyps)
    )
    return best / total
