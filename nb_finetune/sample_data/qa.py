"""SQuAD-style question answering records built from real quotations, for demos, docs and tests.

What it is, exactly: `literature_quotes.tsv` (next to this file) holds 216 real quotations with their attribution
(author as written, and the work when the attribution names one), taken from the `literature` fortune file of
Debian's `fortunes-min` package (1:1.99.1, BSD licence, notice in the file's header): every entry with a single
attribution line of the form `-- Author[, "Work"]` whose author is a name (at most four words, capitalised), with
at most 70 words and no overstruck characters. `build_quotes_file()` regenerates it from
`/usr/share/games/fortunes/literature` (`apt-get install fortunes-min`).

`qa_records` writes small "anthologies" from them: a context is 2-4 quotations by default (seeded choice), each as
`<quotation> -- <author>[, "<work>"]`, with authors who all differ; the question quotes the first few words of one
of them and asks who wrote it (`Who wrote "The man who ..."?`) or, when its attribution names a work, which work
it is from. The answer is that quotation's author (or work) as a span of the context. The quotations and their
attributions are real; the questions are templates, and the task is made for this demo: it is not a public
benchmark and its scores say nothing about SQuAD.

    python -m nb_finetune.sample_data.qa build    # rewrite literature_quotes.tsv from the Debian file
"""

from __future__ import annotations

import argparse
import math
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["Quote", "quotes", "qa_records", "long_record", "parse_fortunes", "build_quotes_file", "QUOTES_FILE"]

SOURCE = Path("/usr/share/games/fortunes/literature")
QUOTES_FILE = Path(__file__).with_name("literature_quotes.tsv")
MAX_WORDS = 70
_PARTICLES = {"de", "van", "von", "of", "the", "le", "la", "du", "da"}
_WHO = ('Who wrote "{s}"?', 'Who is quoted as saying "{s}"?', 'Whose words are these: "{s}"?')
_WORK = ('Which work is "{s}" from?', 'In which work does the line "{s}" appear?')
_HEADER = """\
# Quotations with their attribution (quote<TAB>author<TAB>work, work may be empty), from the `literature` fortune
# file of Debian's fortunes-min package, selected by nb_finetune/sample_data/qa.py (build_quotes_file).
# The fortune files carry this notice:
#
# Copyright (c) 1991 The Regents of the University of California. All rights reserved.
# Redistribution and use in source and binary forms, with or without modification, are permitted provided that
# the following conditions are met: 1. Redistributions of source code must retain the above copyright notice,
# this list of conditions and the following disclaimer. 2. Redistributions in binary form must reproduce the above
# copyright notice, this list of conditions and the following disclaimer in the documentation and/or other
# materials provided with the distribution. 4. Neither the name of the University nor the names of its
# contributors may be used to endorse or promote products derived from this software without specific prior
# written permission.
# THIS SOFTWARE IS PROVIDED BY THE REGENTS AND CONTRIBUTORS ``AS IS'' AND ANY EXPRESS OR IMPLIED WARRANTIES,
# INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
# DISCLAIMED. IN NO EVENT SHALL THE REGENTS OR CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL,
# SPECIAL, EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
# SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF
# LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY
# OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""


@dataclass(frozen=True)
class Quote:
    text: str
    author: str
    work: str = ""

    @property
    def key(self) -> str:
        """Who this is by, loosely: the surname (`Wm. Shakespeare` and `Shakespeare` are one author)."""
        return re.sub(r"\W", "", self.author.split()[-1].lower())

    def render(self) -> str:
        return f"{self.text} -- {self.author}" + (f', "{self.work}"' if self.work else "")


# --------------------------------------------------------------------------------------------- building the file
def _attribution(line: str) -> tuple[str, str] | None:
    """(author, work) of an attribution such as `Mark Twain, "Pudd'nhead Wilson's Calendar"`, or None."""
    a = re.sub(r"\[[^\]]*\]", "", line).strip()
    if a.startswith('"'):  # `"Mark Twain, Pudd'nhead Wilson's Calendar"`: the whole line quoted
        inner = a.strip('"')
        a = inner.replace(", ", ', "', 1) + '"' if ", " in inner else inner
    m = re.match(r'^(?P<author>[^,"(\[]+?)(?:\s+on\s.*)?\s*(?:[,("].*)?$', a)
    if not m:
        return None
    author = m.group("author").strip().rstrip(".").strip()
    words = author.split()
    if not words or len(words) > 4 or author.lower().startswith(("by ", "winning ", "grand ")):
        return None
    if any(not w[0].isupper() and w.lower() not in _PARTICLES for w in words):
        return None
    work = re.search(r'"([^"]+)"?', a[m.end("author") :])
    title = work.group(1).strip().rstrip(",.") if work else ""
    return author, title


def parse_fortunes(text: str) -> list[Quote]:
    """The quotations of a fortune file that have one `-- Author[, "Work"]` line naming a person (see module doc)."""
    out = []
    for entry in text.split("\n%\n"):
        if any(ord(ch) < 32 and ch not in "\n\t" for ch in entry):
            continue  # overstruck (backspaced) text
        lines = entry.strip("\n").split("\n")
        marks = [i for i, line in enumerate(lines) if re.match(r"^\s+-- ", line)]
        if len(marks) != 1 or any(line.strip() for line in lines[marks[0] + 1 :] if not line.startswith("\t\t")):
            continue
        body = " ".join(" ".join(line.split()) for line in lines[: marks[0]]).strip()
        tail = " ".join(line.strip() for line in lines[marks[0] :]).removeprefix("-- ")
        got = _attribution(tail)
        if not body or got is None or len(body.split()) > MAX_WORDS:
            continue
        out.append(Quote(body, *got))
    return out


def build_quotes_file(src: str | Path = SOURCE, dest: str | Path = QUOTES_FILE) -> int:
    """Rewrite the quotation file from a fortune file; the number of quotations written."""
    found = parse_fortunes(Path(src).read_text(encoding="utf-8", errors="replace"))
    rows = [f"{q.text}\t{q.author}\t{q.work}" for q in found]
    Path(dest).write_text(_HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    return len(rows)


@lru_cache(maxsize=1)
def quotes() -> tuple[Quote, ...]:
    """The quotations shipped with the package, in file order."""
    out = []
    for line in QUOTES_FILE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            text, author, work = line.split("\t")
            out.append(Quote(text, author, work))
    return tuple(out)


# --------------------------------------------------------------------------------------------- records
def _pool(split: str) -> list[Quote]:
    every = quotes()
    if split == "all":
        return list(every)
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: use 'train', 'test' or 'all'")
    # every 5th quotation (file order) is for testing: no test question is about a quotation seen in training
    return [q for i, q in enumerate(every) if (i % 5 == 4) == (split == "test")]


def _snippet(q: Quote, rng: random.Random) -> str:
    words = q.text.lstrip(".… ").split()
    k = rng.randint(4, 8)
    if len(words) <= k:
        return " ".join(words)
    return " ".join(words[:k]).rstrip(",;:.!?-") + " ..."


def _question(target: Quote, rng: random.Random) -> tuple[str, bool]:
    """A templated question about `target` and whether it asks for the work (else the author)."""
    ask_work = bool(target.work) and rng.random() < 0.3
    return rng.choice(_WORK if ask_work else _WHO).format(s=_snippet(target, rng)), ask_work


def _context(shown: list[Quote], at: int | None, ask_work: bool, bare: bool = False) -> tuple[str, int]:
    """The quotations one per line (`bare`: only `shown[at]` with its attribution), and where the answer (author
    or work of `shown[at]`) starts."""
    lines = [q.render() if not bare or i == at else q.text for i, q in enumerate(shown)]
    context = "\n".join(lines)
    if at is None:
        return context, -1
    start = sum(len(line) + 1 for line in lines[:at])
    q = shown[at]
    return context, start + len(q.text) + 4 + (len(q.author) + 3 if ask_work else 0)  # ` -- ` and `, "`


def _record(rid: str, target: Quote, shown: list[Quote], rng: random.Random, bare: bool = False) -> dict:
    question, ask_work = _question(target, rng)
    at = shown.index(target) if target in shown else None
    context, start = _context(shown, at, ask_work, bare)
    if at is None:
        return {"id": rid, "question": question, "context": context, "answers": {"text": [], "answer_start": []}}
    answer = target.work if ask_work else target.author
    assert context[start : start + len(answer)] == answer
    return {
        "id": rid,
        "question": question,
        "context": context,
        "answers": {"text": [answer], "answer_start": [start]},
    }


def _others(pool: list[Quote], target: Quote, k: int, rng: random.Random) -> list[Quote]:
    """k quotations by authors who differ from the target's and from each other."""
    out, seen = [], {target.key}
    if k <= 0:
        return out
    for q in rng.sample(pool, len(pool)):
        if q.key not in seen:
            out.append(q)
            seen.add(q.key)
            if len(out) == k:
                break
    return out


def qa_records(
    n: int = 1000,
    seed: int = 0,
    *,
    split: str = "all",
    per_context: int | tuple[int, int] = (2, 4),
    unanswerable: float = 0.0,
) -> list[dict]:
    """`n` SQuAD-style records (`id`, `question`, `context`, `answers`) about the shipped quotations.

    Args:
        n: how many records.
        seed: the same seed gives the same records, on every machine.
        split: `train` (4 of every 5 quotations), `test` (the 5th: questions about quotations never seen in
            `train`, though their authors may be) or `all`.
        per_context: quotations per context, or a (min, max) range.
        unanswerable: fraction of questions whose quotation is left out of the context (answers are then empty
            lists, as in SQuAD v2.0).

    Example:
        >>> r = qa_records(1, seed=3)[0]
        >>> r["context"][r["answers"]["answer_start"][0]:].startswith(r["answers"]["text"][0])
        True
    """
    lo, hi = (per_context, per_context) if isinstance(per_context, int) else per_context
    pool = _pool(split)
    rng = random.Random(seed * 7919 + {"all": 0, "train": 1, "test": 2}[split])
    out = []
    # prolific authors (Twain, Shakespeare) would otherwise be most answers: weight a quotation 1/sqrt(its author's)
    count = Counter(q.key for q in pool)
    weights = [1 / math.sqrt(count[q.key]) for q in pool]
    for i in range(n):
        target = rng.choices(pool, weights)[0]
        answerable = rng.random() >= unanswerable
        k = rng.randint(lo, hi)
        shown = _others(pool, target, k - 1 if answerable else k, rng)
        if answerable:
            shown.insert(rng.randrange(len(shown) + 1), target)
        out.append(_record(f"{split}-{seed}-{i}", target, shown, rng))
    return out


def long_record(n_quotes: int = 20, seed: int = 0, split: str = "all", attributed: str = "last") -> dict:
    """One record whose context is `n_quotes` quotations, one per line (thousands of characters: several windows of
    a model), and whose question is about the LAST of them, so the answer lies in the last window.

    `attributed="last"`: only that last quotation carries its attribution (a page of unattributed quotations, then
    the one asked about, with its source); `"all"`: every quotation does, by authors who all differ (then the
    question's opening words must be matched to the right quotation, a harder task)."""
    if attributed not in ("last", "all"):
        raise ValueError(f"attributed {attributed!r}: use 'last' or 'all'")
    pool = _pool(split)
    rng = random.Random(seed)
    target = rng.choice(pool)
    if attributed == "all":
        shown = _others(pool, target, n_quotes - 1, rng)
    else:
        shown = [q for q in rng.sample(pool, len(pool)) if q.key != target.key][: n_quotes - 1]
    return _record(f"long-{seed}", target, [*shown, target], rng, bare=attributed == "last")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nb_finetune.sample_data.qa", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="rewrite literature_quotes.tsv from the Debian fortune file")
    b.add_argument("src", nargs="?", default=str(SOURCE))
    args = p.parse_args(argv)
    if args.cmd == "build":
        if not Path(args.src).is_file():
            print(f"{args.src} is not there: apt-get install fortunes-min", file=sys.stderr)
            return 1
        print(f"wrote {build_quotes_file(args.src)} quotations to {QUOTES_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
