"""Token classification (NER, POS tagging, chunking): one tag per word, a softmax head over every token.

Data: records with a token list and an aligned tag list (`tokens` / `words` and `tags` / `ner_tags` / `labels` /
`label` / `pos_tags`, or the columns `data.tokens` and `data.label` name), from any source `load_source` reads, or
CoNLL files (`.conll`, `.conll03`, `.iob`, `.bio`, `.txt`: token in the first column, tag in the last, a blank
line between sentences, `-DOCSTART-` skipped; `.conllu`: FORM and UPOS). Tags are strings (IOB2, IOB1, IOBES,
BILOU or plain), ints with `labels:` naming them, or a `ClassLabel` sequence.

Words are split into sub-tokens by a fast tokenizer; the first sub-token of a word carries its tag and the rest
are ignored by the loss and the metric (`label_all_tokens: true` tags them too, `B-X` continuing as `I-X`).
Evaluation counts entities the way conlleval does (see `seq_metrics`): `precision`, `recall`, `f1` (micro over
entities), token `accuracy` and `<TYPE>_f1` per entity type.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError, ModelError
from .. import data as D
from . import common as C
from .base import Capabilities, Examples, Task, register
from .seq_metrics import EntityCounts, TagSet, detect_scheme

__all__ = ["TokenClassification", "EntityMetric", "read_conll", "split_words", "CONLL_SUFFIXES"]

TOKEN_CANDIDATES = ("tokens", "words")
TAG_CANDIDATES = ("tags", "ner_tags", "labels", "label", "pos_tags")
CONLL_SUFFIXES = D.CONLL_SUFFIXES
_PREFIX_RANK = {"B": 0, "I": 1, "E": 2, "L": 2, "S": 3, "U": 3}

# words as CoNLL-2003 / the Penn Treebank cut them: punctuation apart, clitics ('s, n't) apart, abbreviations,
# initials, numbers and hyphenated words whole
_WORD = re.compile(
    r"(?:[A-Za-z]\.){2,}"  # U.S., J.R.R.
    r"|\b(?:Mrs?|Ms|Dr|St|Mt|Jr|Sr|Prof|Gen|Gov|Sen|Rep|Lt|Col|Capt|Sgt|Rev|Inc|Corp|Ltd|Co|vs|etc"
    r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec)\."  # abbreviations with their dot
    r"|[A-Z]\.(?=\s+[A-Z])"  # an initial before a name: Samuel L. Jackson
    r"|\w+(?:[-'’]\w+)*?(?=['’][sS]\b)"  # a word before its 's
    r"|['’][sS]\b"
    r"|\w+(?=n['’]t\b)"  # do|n't
    r"|n['’]t\b"
    r"|\d+(?:[.,:]\d+)+"  # 3.5, 1,000, 10:30
    r"|\w+(?:[-'’]\w+)*"  # words, with inner hyphens and apostrophes
    r"|([^\w\s])\1*"  # punctuation; a run of one character is one token ('', --, ...)
)


def split_words(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) for each word of `text`, CoNLL-style; offsets index into `text`.

    Example:
        >>> [w for w, _, _ in split_words("Angela Merkel visited Paris, France's capital.")]
        ['Angela', 'Merkel', 'visited', 'Paris', ',', 'France', "'s", 'capital', '.']
    """
    return [(m.group(0), m.start(), m.end()) for m in _WORD.finditer(text)]


# --------------------------------------------------------------------------------------------- CoNLL files
def read_conll(path, *, what: str = "data.train") -> dict[str, list[list[str]]]:
    """{"tokens": [...], "tags": [...]}, one entry per sentence of a CoNLL file.

    Token from the first column, tag from the last (whitespace-separated), a blank line between sentences,
    `-DOCSTART-` lines skipped. `.conllu`: `#` comments skipped, FORM (column 2) and UPOS (column 4), multi-word
    token ranges and empty nodes skipped. A `.txt` file must look like CoNLL: the same number of columns (2 or more)
    on every token line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{what}: cannot read {str(path)!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{what}: {str(path)!r} is not UTF-8 text (byte {e.start})") from None
    conllu = path.suffix.lower() == ".conllu"
    strict = path.suffix.lower() == ".txt"
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    toks: list[str] = []
    tgs: list[str] = []
    width = None
    for lineno, line in enumerate(text.splitlines(), 1):
        cols = line.split("\t") if conllu else line.split()
        if not line.strip() or (cols[0] == "-DOCSTART-"):
            if toks:
                tokens.append(toks)
                tags.append(tgs)
                toks, tgs = [], []
            continue
        if conllu:
            if line.startswith("#"):
                continue
            if len(cols) < 4:
                raise DataError(f"{what}: line {lineno} of {path.name} has {len(cols)} columns; CoNLL-U has 10")
            if "-" in cols[0] or "." in cols[0]:  # multi-word token range / empty node
                continue
            toks.append(cols[1])
            tgs.append(cols[3])
            continue
        if len(cols) < 2:
            raise DataError(
                f"{what}: line {lineno} of {path.name} has one column ({line.strip()[:40]!r}); a CoNLL file needs "
                "the token in the first column and its tag in the last"
            )
        if strict:
            width = width or len(cols)
            if len(cols) != width:
                raise DataError(
                    f"{what}: {path.name} does not look like CoNLL: line {lineno} has {len(cols)} columns, earlier "
                    f"lines {width}. A CoNLL file has one token per line, its tag in the last column"
                )
        toks.append(cols[0])
        tgs.append(cols[-1])
    if toks:
        tokens.append(toks)
        tags.append(tgs)
    return {"tokens": tokens, "tags": tags}


# --------------------------------------------------------------------------------------------- columns and tags
def _pick(cols: list[str], named: str | None, candidates: tuple[str, ...]) -> str | None:
    if named is not None:
        return named if named in cols else None
    lower = {c.lower(): c for c in cols}
    return next((lower[c] for c in candidates if c in lower), None)


def _inner(feature):
    """The element feature of a list column, or None when the column is not a list."""
    if type(feature).__name__ in ("List", "Sequence", "LargeList"):
        return feature.feature
    if isinstance(feature, list) and feature:
        return feature[0]
    return None


def _kind(feature) -> str | None:
    """What the elements of a list column are: classlabel, str, int, other; None when it is not a list column."""
    import datasets

    inner = _inner(feature)
    if inner is None:
        return None
    if isinstance(inner, datasets.ClassLabel):
        return "classlabel"
    dtype = getattr(inner, "dtype", "")
    if dtype in ("string", "large_string"):
        return "str"
    if dtype.startswith(("int", "uint")):
        return "int"
    if dtype == "null":  # only empty lists
        return "str"
    return "other"


def _order_tags(found) -> list[str]:
    """`O` first, then by entity type and prefix (B, I, E, S), so B-PER and I-PER sit together."""

    def key(tag: str):
        if len(tag) > 2 and tag[1] in "-_" and tag[0] in _PREFIX_RANK:
            return (tag[2:], _PREFIX_RANK[tag[0]], tag)
        return (tag, -1, tag)

    found = {str(t) for t in found}
    return (["O"] if "O" in found else []) + sorted(found - {"O"}, key=key)


@register
class TokenClassification(Task):
    name = "token-classification"
    aliases = ("ner", "pos")
    title = "token classification"
    capabilities = Capabilities(prefix_cache=True, length_grouping=True, throughput_unit="tokens")
    default_metric = "eval_f1"
    metric_keys = ("precision", "recall", "f1", "accuracy")
    head_suffix = "ForTokenClassification"

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        self.model_obj = None
        self.tokens_col: str = ""
        self.tags_col: str = ""
        self.tag_kind: str = "str"  # str, int, classlabel
        self.scheme: str = ""
        self.unnamed_ints = False  # int tags without `labels:`: named "0".."K-1"
        self._index: dict[Any, int] = {}

    @classmethod
    def detect(cls, ds, cfg) -> str | None:
        cols = list(getattr(ds, "column_names", []) or [])
        tok = _pick(cols, cfg.data.tokens, TOKEN_CANDIDATES)
        tag = _pick(cols, cfg.data.label, TAG_CANDIDATES)
        if tok is None or tag is None or tok == tag:
            return None
        if _kind(ds.features[tok]) != "str" or _kind(ds.features[tag]) not in ("str", "int", "classlabel"):
            return None
        return f"token lists in '{tok}' with tag lists in '{tag}'"

    # ------------------------------------------------------------ calling thread
    def preflight(self) -> None:
        cfg = self.cfg
        C.require_model_and_data(cfg)
        self.model_obj, self.hf_config, self.model_id = C.resolve_model(
            cfg, head_suffix=self.head_suffix, task_title=self.title
        )
        if self.model_obj is None:
            from transformers import AutoModelForTokenClassification

            C.check_head(AutoModelForTokenClassification, self.model_id, self.hf_config)
        self.tokenizer = C.resolve_tokenizer(cfg, self.model_obj, self.model_id)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ModelError(
                f"tokenizer: {type(self.tokenizer).__name__} is a slow (Python) tokenizer; token classification "
                "needs a fast one to align words with sub-tokens. Use a checkpoint with a tokenizer.json, or pass "
                "`tokenizer: {{tok}}` built with AutoTokenizer.from_pretrained(..., use_fast=True)"
            )
        train = self._train_source
        if train is None:
            train = D.load_source(cfg.data.train, role="train", trust_remote_code=cfg.trust_remote_code)
        if len(train) == 0:
            raise DataError("data.train is empty")
        self.tokens_col, self.tags_col = self._columns(train, "train")
        eval_ = None
        if cfg.data.eval is not None:
            eval_ = D.load_source(cfg.data.eval, role="eval", trust_remote_code=cfg.trust_remote_code)
            if len(eval_) == 0:
                raise DataError("data.eval is empty")
            self._columns(eval_, "eval")
        # tags and rows are checked on the whole of data.train, before `eval_split` is held out: errors name the
        # user's rows, and a rare tag is known even when all its rows go to the held-out part
        self.train, self.eval = train, eval_
        self.resolve_tags()
        self.max_length = C.resolve_max_length(cfg, self.tokenizer, self.hf_config)
        self._check_tokenizer()
        train_ids = self.tag_ids(train, "train")  # every row checked now: a bad row is an error in the cell
        if not any(train_ids):
            raise DataError(f"data.train: every row of column '{self.tokens_col}' is an empty token list")
        if eval_ is not None:
            self.tag_ids(eval_, "eval")
        self.scheme = detect_scheme([self.label_names[i] for i in row] for row in train_ids)
        self.train, self.eval = C.holdout(cfg, train, eval_)

    def _columns(self, ds, role: str) -> tuple[str, str]:
        cfg = self.cfg
        cols = list(ds.column_names)
        shown = ", ".join(cols)
        for key, named in (("tokens", cfg.data.tokens), ("label", cfg.data.label)):
            if named is not None and named not in cols:
                raise DataError(
                    f"data.{key}: column '{named}' is not in data.{role} (columns: {shown}).{D.suggest(named, cols)}"
                )
        if role != "train":  # data.eval must have the columns data.train has
            for col in (self.tokens_col, self.tags_col):
                if col not in cols:
                    raise DataError(
                        f"data.{role} lacks column '{col}' that data.train has (columns: {shown}).{D.suggest(col, cols)}"
                    )
            return self.tokens_col, self.tags_col
        tok = _pick(cols, cfg.data.tokens, TOKEN_CANDIDATES)
        if tok is None:
            hint = D.suggest("tokens", cols) or D.suggest("words", cols)
            raise DataError(
                f"data.tokens: no token-list column in data.{role} (columns: {shown}); name it with "
                f"`tokens: <column>` under data:.{hint}"
            )
        tag = _pick(cols, cfg.data.label, TAG_CANDIDATES)
        if tag is None or tag == tok:
            hint = next((h for c in TAG_CANDIDATES if (h := D.suggest(c, [x for x in cols if x != tok]))), "")
            raise DataError(
                f"data.label: no tag-list column in data.{role} (columns: {shown}); name it with "
                f"`label: <column>` under data:.{hint}"
            )
        for key, col in (("tokens", tok), ("label", tag)):
            kind = _kind(ds.features[col])
            if kind is None:
                what = "token lists" if key == "tokens" else "tag lists (one tag per token)"
                split = " (split the text into words first, e.g. df[col].str.split())" if key == "tokens" else ""
                raise DataError(
                    f"data.{key}: column '{col}' of data.{role} holds {ds.features[col]}, not {what}{split}"
                )
            if key == "label" and kind == "other":
                raise DataError(
                    f"data.label: column '{col}' of data.{role} holds lists of {_inner(ds.features[col])}; tags "
                    "must be strings (B-PER, NN, ...) or integer ids with `labels:` naming them"
                )
        return tok, tag

    def resolve_tags(self) -> None:
        """Tag names in id order and the raw tag -> id mapping, from `labels:`, a ClassLabel or the data."""
        names = [str(n) for n in self.cfg.labels] if self.cfg.labels else None
        splits = [ds for ds in (self.train, self.eval) if ds is not None]
        feature = self.train.features[self.tags_col]
        kind = _kind(feature)
        if kind == "classlabel":
            found = list(_inner(feature).names)
            if names and len(names) != len(found):
                raise DataError(
                    f"labels: {len(names)} names given but column '{self.tags_col}' of data.train has "
                    f"{len(found)} classes ({found[:20]})"
                )
            names = names or found
            self._index = {i: i for i in range(len(names))}
        elif kind == "int":
            if names is None:
                top = max((int(v) for ds in splits for row in ds[self.tags_col] if row for v in row), default=0)
                names = [str(i) for i in range(top + 1)]
                self.unnamed_ints = True
            self._index = {i: i for i in range(len(names))}
        else:
            if names is None:
                names = _order_tags({str(v) for ds in splits for row in ds[self.tags_col] if row for v in row})
            self._index = {n: i for i, n in enumerate(names)}
        if len(names) < 2 and not self.unnamed_ints:
            raise DataError(
                f"data.label: column '{self.tags_col}' has a single tag {names}; token classification needs two "
                "or more (e.g. O and B-PER)"
            )
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise DataError(f"labels: tag names repeat: {dup}")
        if self.model_obj is not None and getattr(self.hf_config, "num_labels", len(names)) != len(names):
            raise DataError(
                f"model: the model object has {self.hf_config.num_labels} labels but the data has {len(names)} "
                f"tags ({names[:10]}); build it with num_labels={len(names)}"
            )
        self.tag_kind = kind
        self.label_names = names

    def tag_ids(self, ds, role: str) -> list[list[int]]:
        """Every row's tags as ids; a row whose tags do not fit its tokens or the tag names is a DataError."""
        tok_col, tag_col = self.tokens_col, self.tags_col
        ints = self.tag_kind in ("int", "classlabel")
        k = len(self.label_names)
        out = []
        for row, (toks, tags) in enumerate(zip(ds[tok_col], ds[tag_col])):
            if toks is None or tags is None:
                col = tok_col if toks is None else tag_col
                raise DataError(f"data.{role}: row {row} has no value in column '{col}'; drop that row first")
            if len(toks) != len(tags):
                raise DataError(
                    f"data.label: row {row} of data.{role} has {len(toks)} tokens but {len(tags)} tags "
                    f"(columns '{tok_col}' and '{tag_col}'); every token needs exactly one tag"
                )
            ids = []
            for t in tags:
                i = self._index.get(int(t) if ints else str(t))
                if i is None:
                    if ints:
                        raise DataError(
                            f"data.label: row {row} of data.{role} has tag id {t}, outside 0..{k - 1} "
                            f"(labels: names {k} tags)"
                        )
                    raise DataError(
                        f"data.label: row {row} of data.{role} has tag {t!r}, which is not in labels: "
                        f"{self.label_names[:30]}{D.suggest(str(t), self.label_names)}"
                    )
                ids.append(i)
            out.append(ids)
        return out

    def _check_tokenizer(self) -> None:
        """Tokenize two rows now, so a tokenizer that cannot take word lists fails here, not in the worker.

        Byte-level BPE (RoBERTa, GPT-2) reads a word list right only when it puts the space before each word itself
        (`add_prefix_space=True`): older transformers refuse word lists otherwise, newer ones glue the words."""
        sample = [[str(w) for w in toks] for toks in self.train[self.tokens_col][:2]]
        needs_space = _glues_words(self.tokenizer)
        try:
            self.tokenizer(sample, is_split_into_words=True, truncation=True, max_length=self.max_length)
        except Exception as e:  # noqa: BLE001 - tokenizers raise ValueError, TypeError, Rust errors...
            if "add_prefix_space" not in str(e):
                raise DataError(f"data.tokens: the tokenizer cannot read column '{self.tokens_col}': {e}") from None
            needs_space = True
        if not needs_space:
            return
        if self.cfg.tokenizer is not None and not isinstance(self.cfg.tokenizer, (str, Path)):
            raise ModelError(
                "tokenizer: this byte-level tokenizer needs add_prefix_space=True to read word lists; build it with "
                "AutoTokenizer.from_pretrained(..., add_prefix_space=True)"
            )
        from transformers import AutoTokenizer

        src = str(self.cfg.tokenizer or getattr(self.model_obj, "name_or_path", "") or self.model_id)
        pad = self.tokenizer.pad_token
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                src, add_prefix_space=True, trust_remote_code=self.cfg.trust_remote_code
            )
        except Exception as e:  # noqa: BLE001
            raise C.hub_error("tokenizer", src, e) from None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = pad

    def metric_names(self) -> list[str]:
        """The entity scores plus one F1 per entity type of the tag set (`eval_PER_f1`)."""
        types = TagSet(self.label_names).types if self.label_names else []
        return [*super().metric_names(), *(f"eval_{t}_f1" for t in types)]

    def describe(self) -> list[str]:
        lines = super().describe()
        sub = (
            "every sub-token of a word tagged" if self.cfg.label_all_tokens else "first sub-token of each word tagged"
        )
        lines.append(
            f"input: token column '{self.tokens_col}', tag column '{self.tags_col}', max_length {self.max_length}; "
            f"{sub}"
        )
        types = TagSet(self.label_names).types
        if self.unnamed_ints:
            lines.append(
                f"tags: integer ids without `labels:`, named 0..{len(self.label_names) - 1}; each id counts as its "
                "own one-token entity type. Give `labels: [O, B-PER, I-PER, ...]` for entity-level scores"
            )
        else:
            shown = ", ".join(types[:15]) + (" ..." if len(types) > 15 else "")
            lines.append(f"tag scheme: {self.scheme or '?'}; entity types ({len(types)}): {shown}")
        lines.append(f"head: {len(self.label_names)}-way softmax per token (cross-entropy over tagged sub-tokens)")
        return lines

    # ------------------------------------------------------------ worker
    def head_kwargs(self) -> dict[str, Any]:
        names = self.label_names
        return dict(
            num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
        )

    def build_model(self, *, meta: bool = False):
        from transformers import AutoModelForTokenClassification

        if self.model_obj is not None:
            model = self.model_obj
        else:
            model = C.from_pretrained(
                AutoModelForTokenClassification,
                self.cfg,
                self.model_id,
                self.hf_config,
                meta=meta,
                **self.head_kwargs(),
            )
            if meta:
                return model
        return C.finish_model(self.cfg, model, self.tokenizer)

    def _continuation(self) -> list[int]:
        """The id a word's later sub-tokens get with `label_all_tokens`: B-X -> I-X (when I-X exists), else the same."""
        index = {n: i for i, n in enumerate(self.label_names)}
        out = []
        for i, n in enumerate(self.label_names):
            if len(n) > 2 and n[0] == "B" and n[1] in "-_":
                out.append(index.get("I" + n[1:], i))
            else:
                out.append(i)
        return out

    def encode(self, ds, *, role: str = "eval") -> Examples:
        words = [[str(w) for w in toks] for toks in ds[self.tokens_col]]
        tags = self.tag_ids(ds, role) if self.tags_col in ds.column_names else None
        enc = self.tokenizer(words, is_split_into_words=True, truncation=True, max_length=self.max_length)
        keep = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        labels = None
        if tags is not None:
            cont = self._continuation() if self.cfg.label_all_tokens else None
            labels = [align_labels(enc.word_ids(i), row, cont) for i, row in enumerate(tags)]
        return Examples({k: list(enc[k]) for k in keep}, labels)

    def load_eval(self, src):
        ds = D.load_source(src, role="eval", trust_remote_code=self.cfg.trust_remote_code)
        if len(ds) == 0:
            raise DataError("data.eval is empty")
        self._columns(ds, "eval")
        return ds

    def collator(self):
        return D.Collator(self.tokenizer.pad_token_id, "tokens")

    def metric(self, data: Examples):
        return EntityMetric(self.label_names)

    def predict(self, model, texts, batch_size: int = 32):
        """Entities in raw text: per text a list of {"entity", "text", "start", "end", "score"}.

        Each text is split into words on whitespace and punctuation; a word's tag is the model's choice at its first
        sub-token, B-/I- runs are merged into spans (the same rules as the metric), and `score` is the mean of the
        words' top softmax probabilities. `start` / `end` index into the text. Words past max_length are not tagged.
        A single string gives a single list; a list of strings gives a list of lists.
        """
        import torch

        single = isinstance(texts, str)
        texts = [texts] if single else [str(t) for t in texts]
        tagset = TagSet(self.label_names)
        device = C.model_device(model)

        def batches():
            for s in range(0, len(texts), batch_size):
                chunk = texts[s : s + batch_size]
                words = [split_words(t) for t in chunk]
                enc = self.tokenizer(
                    [[w for w, _, _ in ws] or [""] for ws in words],
                    is_split_into_words=True,
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                word_ids = [enc.word_ids(i) for i in range(len(chunk))]
                yield chunk, words, word_ids, {k: v.to(device) for k, v in enc.items()}

        def run(m, b):
            chunk, words, word_ids, inputs = b
            probs = torch.softmax(m(**inputs).logits.float(), -1).cpu()
            top, arg = probs.max(-1)
            out = []
            for i, (text, ws) in enumerate(zip(chunk, words)):
                first = _first_subtokens(word_ids[i])[: len(ws)]
                ids = [int(arg[i, j]) for j in first]
                scores = [float(top[i, j]) for j in first]
                spans = []
                for t, a, e in tagset.spans(ids):
                    start, end = ws[a][1], ws[e - 1][2]
                    spans.append(
                        {
                            "entity": tagset.types[t],
                            "text": text[start:end],
                            "start": start,
                            "end": end,
                            "score": float(np.mean(scores[a:e])),
                        }
                    )
                out.append(spans)
            return out

        out = C.batched_inference(model, batches(), run)
        return out[0] if single else out


def _glues_words(tokenizer) -> bool:
    """Whether a byte-level pre-tokenizer would join the words of a word list (no space added before each)."""
    pre = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    if pre is None:
        return False
    try:
        parts = list(pre) if type(pre).__name__ == "Sequence" else [pre]
    except TypeError:  # an older tokenizers without indexable sequences
        parts = [pre]
    return any(type(p).__name__ == "ByteLevel" and getattr(p, "add_prefix_space", True) is False for p in parts)


def _first_subtokens(word_ids: list[int | None]) -> list[int]:
    """Positions of each word's first sub-token, in word order."""
    out, prev = [], None
    for pos, w in enumerate(word_ids):
        if w is not None and w != prev:
            out.append(pos)
        prev = w
    return out


def align_labels(word_ids: list[int | None], tags: list[int], continuation: list[int] | None = None) -> list[int]:
    """Per-sub-token labels: a word's tag on its first sub-token, -100 on special tokens and the word's other
    sub-tokens, or `continuation[tag]` on those when given (label_all_tokens)."""
    out, prev = [], None
    for w in word_ids:
        if w is None:
            out.append(-100)
        elif w != prev:
            out.append(tags[w])
        else:
            out.append(continuation[tags[w]] if continuation is not None else -100)
        prev = w
    return out


class EntityMetric:
    """Streaming entity-level P/R/F1, token accuracy and F1 per type: one (2, B, T) transfer per eval batch."""

    def __init__(self, label_names: list[str]):
        self.counts = EntityCounts(TagSet(label_names))

    def update(self, outputs, batch, host) -> None:
        import torch

        both = torch.stack([outputs.logits.argmax(-1), batch["labels"]]).cpu().numpy()
        for pred, gold in zip(both[0], both[1]):
            keep = gold != -100
            self.counts.add(pred[keep], gold[keep])

    def compute(self) -> dict[str, float]:
        return self.counts.scores()

    def extras(self) -> dict[str, Any]:
        scores = self.counts.scores()
        types = self.counts.tagset.types
        return {
            "entity_f1": {
                "kind": "bars",
                "title": "Entity F1 by type",
                "labels": list(types),
                "values": [scores[f"{t}_f1"] for t in types],
            }
        }
