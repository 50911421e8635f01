"""A small named-entity set (PER, LOC in IOB2) made from real sentences, for demos, docs and tests.

What it is, exactly: about 2,900 sentences of the movie-review, NYT-editorial and tweet corpora that come with the
vaderSentiment source distribution (`nb_finetune.examples`, cached by `make assets`), cut into words the CoNLL way
(`split_words`, the splitter `predict` uses too) and tagged by dictionary matching. The tags are "silver": rules,
not a person's annotation, so some are wrong (`Johns Hopkins University` gives a PER `Hopkins`).

- PER: a first name from the stdlib first-name lists followed by one to three capitalised words (middle initials
  allowed): `Steven Spielberg`, `Samuel L. Jackson`. A surname found that way also counts alone (`Spielberg`)
  when it is not the first word of its sentence.
- LOC: a US state, a US state capital, a country or a capital, longest match first: `New York`, `Hong Kong`.
- Not trusted: words that also occur at least twice in lower case in these corpora (`Will`, `Guy`, `Star`,
  `Turkey`) are neither first names nor places, nor surnames (`Green`); a sentence where such a word, or a place
  that is also a first name (`Washington`, `Georgia`), starts a capitalised run (`Guy Ritchie`, `Washington Post`),
  or where a lone word is both a surname and a place (`Jackson`), is left out rather than tagged wrongly.

Sentences with no entity and no capitalised word after the first come in too (`empty`, a fraction of the records).
With `swap`, each entity of a sentence is replaced by another entity of its type found in these corpora (a real
full name or place), so a model cannot just memorise the few famous names; when `n` is more than the tagged
sentences, they come back with other names swapped in. Everything is a function of `seed`.

The word lists are `ner_names.json` beside this file; its `about` field names the npm packages they come from and
their licences (the stdlib lists: Apache-2.0, data PDDL-1.0 / CC0-1.0; countries-list: MIT). This is a demo set
made here, not a public benchmark: its scores say nothing about CoNLL-2003.

Example:
    >>> from nb_finetune.sample_data.ner import ner_records
    >>> recs = ner_records(1000, seed=0)  # doctest: +SKIP
    >>> recs[1]  # doctest: +SKIP
    {'tokens': ['Mary', 'Craven', "'s", 'handsome', ...], 'tags': ['B-PER', 'I-PER', 'O', 'O', ...]}
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

from ..core.tasks.token_classification import split_words

__all__ = ["ner_records", "NAMES_FILE", "CORPORA"]

NAMES_FILE = Path(__file__).with_name("ner_names.json")
CORPORA = ("movie_reviews", "editorials", "tweets")
_ALL_CORPORA = ("movie_reviews", "editorials", "tweets", "product_reviews")  # product reviews: lower-case words
_CAPITALISED = re.compile(r"^(?:[A-Z][a-z]+(?:[-'’][A-Z]?[a-z]+)*|Mc[A-Z][a-z]+|O'[A-Z][a-z]+)$")
_INITIAL = re.compile(r"^[A-Z]\.$")
_FUNCTION = set(
    "The A An And Or But If In On At Of To For With By From As Is It Its This That These Those He She They We You "
    "I His Her Their Our My Your So Not No All Some What Who When Where Why How Than Then There Here Mr Mrs Ms Dr".split()
)
# capitalised words that follow first names but are not surnames
_NOT_SURNAME = set(
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July August "
    "September October November December Christmas Academy Award Awards University College School Institute "
    "Center Centre Hall House Street Avenue Park Square Island City County Church Company Corporation Foundation "
    "Committee Council Party Post Times Journal Capitals Airport Station Theater Theatre Museum Club".split()
)
MAX_WORDS = 60


@lru_cache(maxsize=1)
def _names() -> dict:
    return json.loads(NAMES_FILE.read_text(encoding="utf-8"))


@lru_cache(maxsize=8)
def _corpus_words(corpus: str, cache_dir: str | None, download: bool) -> tuple:
    from .. import examples

    out = {}
    for text in examples.movie_reviews(cache_dir=cache_dir, download=download, corpus=corpus).text:
        words = tuple(w for w, _, _ in split_words(text))
        if 3 <= len(words) <= MAX_WORDS:
            out.setdefault(words, None)  # in order, without duplicates
    return tuple(out)


class _Tagger:
    """Dictionary tagging of word sequences (see the module docstring)."""

    def __init__(self, sentences, common: set[str]):
        names = _names()
        first = set(names["first_names"])
        places = {*names["us_states"], *names["us_state_capitals"], *names["countries"], *names["capitals"]}
        self.places = {tuple(p.split()) for p in places if " " in p or p.lower() not in common}
        self.place_starts = {p[0] for p in self.places}
        self.longest_place = max(len(p) for p in self.places)
        self.first = {n for n in first if n.lower() not in common}
        self.unsure_first = (first - self.first) | {p[0] for p in self.places if len(p) == 1}  # Will, Georgia
        self.common = common
        self.surnames: set[str] = set()
        for words in sentences:  # first pass: surnames of full names, so `Spielberg` alone is a PER later
            for kind, _, b in self.spans(words, alone=False) or ():
                if kind == "PER":
                    self.surnames.add(words[b - 1])

    def _namelike(self, w: str) -> bool:
        return (
            bool(_CAPITALISED.match(w))
            and len(w) > 2
            and w not in _FUNCTION
            and w not in _NOT_SURNAME
            and w.lower() not in self.common
        )

    def _person(self, words, i: int) -> int | None:
        """End of a full name starting at i; None when there is none; -1 when we cannot tell (leave it out)."""
        w = words[i]
        if w not in self.first and w not in self.unsure_first:
            return None
        j = i + 1
        while j < len(words) and j - i <= 3 and (_INITIAL.match(words[j]) or _CAPITALISED.match(words[j])):
            if words[j] in _FUNCTION:
                break
            j += 1
        while j > i + 1 and _INITIAL.match(words[j - 1]):
            j -= 1  # a name does not end on an initial
        if j == i + 1:
            return None  # a first name alone is too often something else
        if w in self.unsure_first or not all(self._namelike(x) or _INITIAL.match(x) for x in words[i + 1 : j]):
            return -1  # `Guy Ritchie`, `Washington Post`, `Tom Green`: capitalised, but is it a person?
        return j

    def spans(self, words, alone: bool = True) -> list[tuple[str, int, int]] | None:
        """(type, start, end) entities of a sentence; None when it has a name we cannot tell the type of.
        `alone`: surnames of full names seen elsewhere count on their own too (`Spielberg`)."""
        out, i = [], 0
        while i < len(words):
            end = self._person(words, i)
            if end == -1:
                return None
            if end:
                out.append(("PER", i, end))
                i = end
                continue
            n = 0
            if words[i] in self.place_starts:
                n = next(
                    (
                        k
                        for k in range(min(self.longest_place, len(words) - i), 0, -1)
                        if words[i : i + k] in self.places
                    ),
                    0,
                )
            lone = alone and i > 0 and words[i] in self.surnames
            if n and lone and n == 1:
                return None  # `Jackson`, `Lincoln`: a place and a surname
            if n:
                out.append(("LOC", i, i + n))
                i += n
                continue
            if lone:
                out.append(("PER", i, i + 1))
            i += 1
        return out


@lru_cache(maxsize=4)
def _tagged(corpora: tuple[str, ...], cache_dir: str | None, download: bool):
    """(tagged sentences [(words, spans)], sentences without entities, entity pools per type)."""
    lower = Counter()
    for c in _ALL_CORPORA:
        for words in _corpus_words(c, cache_dir, download):
            lower.update(w for w in words if w.isalpha() and w.islower())
    common = {w for w, k in lower.items() if k >= 2}
    sentences = [w for c in corpora for w in _corpus_words(c, cache_dir, download)]
    tagger = _Tagger(sentences, common)
    tagged, plain = [], []
    pools: dict[str, dict[tuple, None]] = {"PER": {}, "LOC": {}}
    for words in sentences:
        spans = tagger.spans(words)
        if spans is None:
            continue
        if spans:
            tagged.append((words, tuple(spans)))
            for kind, a, b in spans:
                if b - a > 1 or kind == "LOC":  # full names only: a lone surname is a poor substitute
                    pools[kind].setdefault(words[a:b], None)
        elif not any(_CAPITALISED.match(w) for w in words[1:]):  # no capitalised word we might have missed
            plain.append(words)
    return tuple(tagged), tuple(plain), {k: tuple(v) for k, v in pools.items()}


def _record(words, spans) -> dict[str, list[str]]:
    tags = ["O"] * len(words)
    for kind, a, b in spans:
        tags[a] = f"B-{kind}"
        for k in range(a + 1, b):
            tags[k] = f"I-{kind}"
    return {"tokens": list(words), "tags": tags}


def _swapped(words, spans, pools, rng: random.Random):
    """The sentence with each entity replaced by another of its type from the pools."""
    new_words, new_spans, last = [], [], 0
    for kind, a, b in spans:
        new_words += words[last:a]
        choice = rng.choice(pools[kind]) if pools[kind] else words[a:b]
        if choice == tuple(words[a:b]) and len(pools[kind]) > 1:
            choice = rng.choice(pools[kind])
        new_spans.append((kind, len(new_words), len(new_words) + len(choice)))
        new_words += choice
        last = b
    new_words += words[last:]
    return tuple(new_words), tuple(new_spans)


def ner_records(
    n: int = 2000,
    seed: int = 0,
    *,
    swap: float = 0.5,
    empty: float = 0.15,
    corpora: tuple[str, ...] = CORPORA,
    cache_dir: str | Path | None = None,
    download: bool = True,
) -> list[dict[str, list[str]]]:
    """`n` records {"tokens": [...], "tags": [...]} (IOB2, types PER and LOC), deterministic in `seed`.

    Args:
        n: how many records.
        seed: which sentences, in which order, and which names are swapped in.
        swap: the fraction of tagged sentences whose entities are replaced by other real ones of the same type.
        empty: the fraction of records that have no entity (sentences without any capitalised word after the first).
        corpora: which of the vaderSentiment corpora to take sentences from (see `nb_finetune.examples.CORPORA`).
        cache_dir, download: as in `nb_finetune.examples.movie_reviews`.

    Returns:
        A list of dicts, ready for `data: {train: {{records}}}` (or `pandas.DataFrame(records)`).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 <= swap <= 1 or not 0 <= empty < 1:
        raise ValueError(f"swap must be in [0, 1] and empty in [0, 1), got swap={swap}, empty={empty}")
    tagged, plain, pools = _tagged(tuple(corpora), None if cache_dir is None else str(cache_dir), download)
    rng = random.Random(seed)
    n_empty = min(int(round(n * empty)), len(plain))
    chosen = []
    order = list(range(len(tagged)))
    rng.shuffle(order)
    rounds = 0
    while len(chosen) < n - n_empty:
        for k in order[: n - n_empty - len(chosen)]:
            words, spans = tagged[k]
            if rounds > 0 or rng.random() < swap:  # repeats always get other names
                words, spans = _swapped(words, spans, pools, rng)
            chosen.append(_record(words, spans))
        rounds += 1
    chosen += [_record(w, ()) for w in rng.sample(plain, n_empty)]
    rng.shuffle(chosen)
    return chosen
