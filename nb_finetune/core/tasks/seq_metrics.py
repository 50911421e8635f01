"""Entity spans from tag sequences and entity-level precision / recall / F1, as conlleval (and seqeval's default
mode) count them.

Tags are `O`, or a prefix and a type: `B-PER`, `I-LOC`, `E-ORG`, `S-MISC` (IOB1, IOB2, IOBES; BILOU's `L-` / `U-`
read as `E-` / `S-`). Spans come out of the same transition rules whatever the scheme, so IOB1 (`I-` starts an
entity, `B-` only splits two adjacent ones of a type) and sloppy IOB2 (an `I-` after `O`) are read the way
conlleval reads them. A tag without a prefix (`PER`, or a POS tag `NN`) is an entity of one token, as
conlleval's raw mode counts it; a tag set of bare `B` / `I` / `O` is untyped chunks (type `_`).

An entity is right only when its type, first and last token all match.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["TagSet", "detect_scheme", "entities", "entity_scores"]

_PREFIXES = {"B": "B", "I": "I", "E": "E", "S": "S", "L": "E", "U": "S"}
OUTSIDE = "O"


def _split(tag: str, bare_prefixes: bool) -> tuple[str, str]:
    """(prefix in B/I/E/S/O, type) of one tag."""
    tag = str(tag)
    if tag == OUTSIDE or tag == "":
        return "O", ""
    if bare_prefixes and tag in _PREFIXES:
        return _PREFIXES[tag], "_"
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in _PREFIXES:
        return _PREFIXES[tag[0]], tag[2:]
    return "S", tag  # no prefix: one token, one entity (conlleval's raw mode)


class TagSet:
    """Tag names in id order, parsed once: what the metric and `predict` turn id sequences into spans with."""

    def __init__(self, names: Sequence[str]):
        self.names = [str(n) for n in names]
        bare = all(n in _PREFIXES or n == OUTSIDE for n in self.names)
        parsed = [_split(n, bare) for n in self.names]
        self.prefix = [p for p, _ in parsed]
        self.types: list[str] = []  # entity types in first-seen order of the tag list
        for p, t in parsed:
            if p != "O" and t not in self.types:
                self.types.append(t)
        self.type_id = [self.types.index(t) if p != "O" else -1 for p, t in parsed]

    def spans(self, ids: Sequence[int]) -> list[tuple[int, int, int]]:
        """Entities of one sequence of tag ids: (type id, first position, end position exclusive)."""
        out = []
        prev_p, prev_t, begin = "O", -1, 0
        for i in range(len(ids) + 1):
            if i < len(ids):
                p, t = self.prefix[ids[i]], self.type_id[ids[i]]
            else:
                p, t = "O", -1  # a sentinel closes the last entity
            if _ends(prev_p, prev_t, p, t):
                out.append((prev_t, begin, i))
            if _starts(prev_p, prev_t, p, t):
                begin = i
            prev_p, prev_t = p, t
        return out


def _ends(prev_p: str, prev_t: int, p: str, t: int) -> bool:
    if prev_p == "O":
        return False
    return prev_p in "ES" or p in "BSO" or prev_t != t


def _starts(prev_p: str, prev_t: int, p: str, t: int) -> bool:
    if p == "O":
        return False
    return p in "BS" or prev_p in "ESO" or prev_t != t


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities of one tag sequence: (type, first token, end token exclusive).

    Example:
        >>> entities(["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG"])
        [('PER', 0, 2), ('LOC', 3, 4), ('LOC', 4, 5), ('ORG', 5, 6)]
    """
    names = sorted(set(tags) | {OUTSIDE})
    ts = TagSet(names)
    index = {n: i for i, n in enumerate(names)}
    return [(ts.types[t], a, b) for t, a, b in ts.spans([index[x] for x in tags])]


def detect_scheme(sequences) -> str:
    """IOBES, BILOU, IOB2, IOB1 or plain: how the tag sequences are written (for describe(); spans do not need it).

    IOB1 is told from IOB2 by an `I-` that starts an entity (after `O`, another type or the sequence start)."""
    seen: set[str] = set()
    starts_with_i = False
    for seq in sequences:
        prev = "O"
        for tag in seq:
            tag = str(tag)
            if tag != OUTSIDE and len(tag) > 2 and tag[1] in "-_" and tag[0] in _PREFIXES:
                seen.add(tag[0])
                if tag[0] == "I" and (prev == OUTSIDE or prev[2:] != tag[2:]):
                    starts_with_i = True
            elif tag != OUTSIDE:
                seen.add("plain")
            prev = tag
    if not seen or seen == {"plain"}:
        return "plain"
    if seen & {"L", "U"}:
        return "BILOU"
    if seen & {"E", "S"}:
        return "IOBES"
    return "IOB1" if starts_with_i else "IOB2"


class EntityCounts:
    """Running counts per entity type (true positives, predicted, gold) and token accuracy."""

    def __init__(self, tagset: TagSet):
        self.tagset = tagset
        k = len(tagset.types)
        self.tp = np.zeros(k, dtype=np.int64)
        self.pred = np.zeros(k, dtype=np.int64)
        self.gold = np.zeros(k, dtype=np.int64)
        self.correct_tokens = 0
        self.tokens = 0

    def add(self, pred_ids: Sequence[int], gold_ids: Sequence[int]) -> None:
        pred_ids, gold_ids = list(map(int, pred_ids)), list(map(int, gold_ids))
        self.tokens += len(gold_ids)
        self.correct_tokens += sum(p == g for p, g in zip(pred_ids, gold_ids))
        p_spans = set(self.tagset.spans(pred_ids))
        g_spans = set(self.tagset.spans(gold_ids))
        for t, _, _ in p_spans:
            self.pred[t] += 1
        for t, _, _ in g_spans:
            self.gold[t] += 1
        for t, _, _ in p_spans & g_spans:
            self.tp[t] += 1

    def scores(self) -> dict[str, float]:
        tp, pred, gold = int(self.tp.sum()), int(self.pred.sum()), int(self.gold.sum())
        out = _prf(tp, pred, gold)
        out["accuracy"] = self.correct_tokens / self.tokens if self.tokens else 0.0
        for i, name in enumerate(self.tagset.types):
            out[f"{name}_f1"] = _prf(int(self.tp[i]), int(self.pred[i]), int(self.gold[i]))["f1"]
        return out


def _prf(tp: int, pred: int, gold: int) -> dict[str, float]:
    p = tp / pred if pred else 0.0
    r = tp / gold if gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision / recall / F1 over entities, token accuracy and F1 per type, for tag-string sequences.

    Example:
        >>> s = entity_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "O", "O", "B-LOC"]])
        >>> round(s["f1"], 3), s["PER_f1"], s["LOC_f1"], s["accuracy"]
        (0.5, 0.0, 1.0, 0.75)
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sequences but {len(pred)} predicted")
    names = sorted({str(t) for seq in (*gold, *pred) for t in seq} | {OUTSIDE})
    index = {n: i for i, n in enumerate(names)}
    counts = EntityCounts(TagSet(names))
    for g, p in zip(gold, pred):
        if len(g) != len(p):
            raise ValueError(f"a gold sequence of {len(g)} tags has a prediction of {len(p)}")
        counts.add([index[str(t)] for t in p], [index[str(t)] for t in g])
    return counts.scores()
