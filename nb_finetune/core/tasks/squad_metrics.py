"""SQuAD-style scoring and span post-processing, in plain Python and numpy (nothing is downloaded).

Scoring follows the SQuAD v1.1 / v2.0 definitions: answers are normalised (lowercase, punctuation removed, the
articles a / an / the removed, whitespace collapsed), exact match is equality of the normalised strings, F1 is the
bag-of-tokens overlap of the normalised strings, and each question takes the best score over its gold answers. A
question without gold answers (v2 "unanswerable") scores 1 only when the prediction is empty.

Post-processing turns the start / end logits of one window into its best candidate spans: the `n_best` highest
start and end logits over context tokens, every pair with start <= end and at most `max_answer_length` tokens,
scored by start logit + end logit. A question's windows are merged by keeping the best candidates overall.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "normalize_answer",
    "exact_match",
    "f1_score",
    "squad_scores",
    "window_candidates",
    "merge_candidates",
    "Candidate",
]

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)

# (score, start_char, end_char): one candidate answer span in its context
Candidate = tuple[float, int, int]


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation, drop the articles a / an / the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised strings; when either is empty, 1 if both are, else 0."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _golds(answers: Sequence[str]) -> list[str]:
    # as in the v2.0 evaluation: answers that normalise to nothing do not count; none left = unanswerable
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def squad_scores(predictions: Iterable[str], references: Iterable[Sequence[str]]) -> dict[str, float]:
    """Mean exact match and F1 (0-1) of `predictions` against the gold answer lists `references`.

    Example:
        >>> squad_scores(["The Eiffel tower", "Paris", ""], [["Eiffel Tower"], ["in Paris, France"], []])
        {'exact_match': 0.6666666666666666, 'f1': 0.8333333333333334}
    """
    em = f1 = 0.0
    n = 0
    for pred, gold in zip(predictions, references, strict=True):
        golds = _golds(list(gold))
        em += max(exact_match(pred, g) for g in golds)
        f1 += max(f1_score(pred, g) for g in golds)
        n += 1
    if n == 0:
        return {"exact_match": 0.0, "f1": 0.0}
    return {"exact_match": em / n, "f1": f1 / n}


def window_candidates(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: Sequence[tuple[int, int] | None],
    n_best: int,
    max_answer_length: int,
    null_index: int = 0,
) -> tuple[list[Candidate], float]:
    """The best `n_best` spans of one window and its no-answer ("null") score.

    `offsets[i]` is the (start, end) character span of token i in the context, or None for tokens that are not
    context (question, special tokens); tokens past `len(offsets)` are padding. The null score is
    start + end logit of the token at `null_index` (the [CLS] token that training points unanswerable windows at).
    """
    n = len(offsets)
    s, e = np.asarray(start_logits[:n], dtype=np.float64), np.asarray(end_logits[:n], dtype=np.float64)
    null = float(s[null_index] + e[null_index]) if n > null_index else float("-inf")
    ctx = np.fromiter((o is not None for o in offsets), dtype=bool, count=n)
    idx = np.flatnonzero(ctx)
    if not len(idx):
        return [], null
    k = min(n_best, len(idx))
    # stable sorts: equal logits resolve to the earlier token, so results do not depend on the platform
    starts = idx[np.argsort(-s[idx], kind="stable")[:k]]
    ends = idx[np.argsort(-e[idx], kind="stable")[:k]]
    si, ei = np.meshgrid(starts, ends, indexing="ij")
    ok = (ei >= si) & (ei - si + 1 <= max_answer_length)
    if not ok.any():
        return [], null
    si, ei = si[ok], ei[ok]
    scores = s[si] + e[ei]
    order = np.argsort(-scores, kind="stable")[:n_best]
    return [(float(scores[j]), int(offsets[si[j]][0]), int(offsets[ei[j]][1])) for j in order], null


def merge_candidates(kept: list[Candidate], new: list[Candidate], n_best: int) -> list[Candidate]:
    """The best `n_best` of two candidate lists (one question's windows), a span kept once with its best score."""
    best: dict[tuple[int, int], float] = {}
    for score, a, b in (*kept, *new):
        if score > best.get((a, b), float("-inf")):
            best[(a, b)] = score
    ranked = sorted(((sc, a, b) for (a, b), sc in best.items()), key=lambda c: (-c[0], c[1], c[2]))
    return ranked[:n_best]
