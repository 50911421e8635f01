"""Extractive question answering (SQuAD v1.1 / v2.0 style): the answer is a span of the context.

Data: one row per question with `question`, `context` and `answers = {"text": [...], "answer_start": [...]}`
(character offsets into the context; empty lists for an unanswerable question, as in SQuAD v2.0). A context longer
than `max_length` is split into overlapping windows (`doc_stride` tokens of overlap); the windows are the examples
the loop trains on, each pointing its start / end labels at the answer's tokens, or at [CLS] (index 0) when the
answer is not inside it. Evaluation and `predict` score spans per window and keep the best over a question's
windows; when the training data has unanswerable questions, "no answer" wins when its score (the [CLS] start + end
logit) beats the best span's.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
import threading
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError, ModelError
from . import common as C
from .base import Capabilities, Examples, Task, register
from .squad_metrics import merge_candidates, squad_scores, window_candidates

__all__ = ["QuestionAnswering", "QAMetric", "parse_answers"]

COLUMNS = ("question", "context", "answers")
DEFAULT_MAX_LENGTH = 384  # the usual SQuAD setting; `max_length` overrides it
MIN_CONTEXT_ROOM = 8  # fewer context tokens per window than this is a question too long for max_length
NULL_INDEX = 0  # [CLS]: where training points windows without the answer, and whose score is "no answer"


def _short(v: Any, n: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def parse_answers(value: Any, row: int, role: str) -> tuple[list[str], list[int]]:
    """(texts, answer_starts) of one row's SQuAD-style answers; a DataError naming the row otherwise.

    Accepts the dict `{"text": [...], "answer_start": [...]}` and its JSON or Python-literal text (a CSV cell)."""
    v = value
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            try:
                v = ast.literal_eval(v)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                v = value
    ok = isinstance(v, dict) and "text" in v and "answer_start" in v
    texts = starts = None
    if ok:
        texts, starts = v["text"], v["answer_start"]
        ok = all(isinstance(x, (list, tuple, np.ndarray)) for x in (texts, starts)) and len(texts) == len(starts)
    if ok:
        texts, starts = list(texts), list(starts)
        ok = all(isinstance(t, str) for t in texts) and all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in starts
        )
    if not ok:
        raise DataError(
            f"data.answers: row {row} of data.{role} is not in SQuAD shape: expected "
            "{'text': [...], 'answer_start': [...]} (lists of the same length, empty for an unanswerable question), "
            f"got {_short(value)}"
        )
    return texts, [int(s) for s in starts]


def _check_answer(context: str, text: str, start: int, row: int, role: str) -> None:
    if not text:
        raise DataError(
            f"data.answers: row {row} of data.{role} has an empty answer text; an unanswerable question has "
            "empty lists: {'text': [], 'answer_start': []}"
        )
    if context[start : start + len(text)] == text and start >= 0:
        return
    found = [i for i in range(len(context)) if context.startswith(text, i)]
    hint = (
        f"; the answer text is at {min(found, key=lambda i: abs(i - start))} (answer_start counts characters from 0)"
        if found
        else "; the answer text does not occur in the context at all"
    )
    there = context[max(start, 0) : max(start, 0) + len(text)] if 0 <= start < len(context) else ""
    where = (
        f"the context has {_short(there, 60)} there"
        if there
        else f"that is outside the context ({len(context)} characters)"
    )
    raise DataError(
        f"data.answers: row {row} of data.{role}: answer_start {start} does not match the context: {where}, "
        f"but the answer text is {_short(text, 60)}{hint}"
    )


@register
class QuestionAnswering(Task):
    """Extractive QA: a start / end logit per token (AutoModelForQuestionAnswering), exact match and F1."""

    name = "question-answering"
    aliases = ("qa", "extractive-qa")
    title = "question answering"
    capabilities = Capabilities(prefix_cache=True, length_grouping=True, throughput_unit="tokens")
    default_metric = "eval_f1"
    metric_keys = ("exact_match", "f1")

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        self.model_obj = None
        self.question_col, self.context_col, self.answers_col = COLUMNS
        self.doc_stride: int = cfg.doc_stride
        self.stride_note = ""
        self.allow_null = False  # train has unanswerable questions: "no answer" is a prediction
        self.eval_unanswerable = 0
        self._encoded: dict[str, tuple[tuple, Examples]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ detection (task: auto)
    @classmethod
    def detect(cls, ds, cfg) -> str | None:
        cols = list(getattr(ds, "column_names", []) or [])
        names = [getattr(cfg.data, key) or key for key in COLUMNS]
        if all(n in cols for n in names):
            return "SQuAD-style " + ", ".join(f"'{n}'" for n in names) + " columns"
        return None

    # ------------------------------------------------------------ calling thread
    def preflight(self) -> None:
        cfg = self.cfg
        C.require_model_and_data(cfg)
        self.model_obj, self.hf_config, self.model_id = C.resolve_model(
            cfg, head_suffix="ForQuestionAnswering", task_title=self.title
        )
        if self.model_obj is None:
            from transformers import AutoModelForQuestionAnswering

            C.check_head(AutoModelForQuestionAnswering, self.model_id, self.hf_config)
        self.tokenizer = C.resolve_tokenizer(cfg, self.model_obj, self.model_id)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ModelError(
                f"tokenizer: {type(self.tokenizer).__name__} is a slow (Python) tokenizer; question answering needs "
                "a fast one (its offsets map answers to tokens): load it with AutoTokenizer(..., use_fast=True) or "
                "pick a model that ships a tokenizer.json"
            )
        train, eval_ = C.load_splits(cfg, self._train_source)
        self.question_col, self.context_col, self.answers_col = self.columns(train, "train")
        train_null = self.check_rows(train, "train")
        if eval_ is not None:
            if len(eval_) == 0:
                raise DataError("data.eval is empty")
            self.columns(eval_, "eval")
            self.eval_unanswerable = self.check_rows(eval_, "eval")
        self.allow_null = train_null > 0
        limit = C.resolve_max_length(cfg, self.tokenizer, self.hf_config)  # checks max_length against the model
        self.max_length = limit if cfg.max_length else min(DEFAULT_MAX_LENGTH, limit)
        self.resolve_stride([(train, "train")] + ([(eval_, "eval")] if eval_ is not None else []))
        self.train, self.eval = C.holdout(cfg, train, eval_)
        if eval_ is None and self.eval is not None:
            self.eval_unanswerable = sum(1 for a in self.eval[self.answers_col] if not parse_answers(a, 0, "eval")[0])

    def columns(self, ds, role: str) -> tuple[str, str, str]:
        """The question / context / answers column names; a DataError with a suggestion when one is missing."""
        cols = list(ds.column_names)
        out = []
        for key in COLUMNS:
            given = getattr(self.cfg.data, key)
            col = given or key
            if col not in cols:
                close = difflib.get_close_matches(col, cols, n=1, cutoff=0.5)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                how = "" if given else f" Name the column with `{key}: <column>` under data:"
                raise DataError(
                    f"data.{key}: column '{col}' is not in data.{role} (columns: {', '.join(cols)}).{hint}{how}"
                )
            out.append(col)
        return out[0], out[1], out[2]

    def check_rows(self, ds, role: str) -> int:
        """Check every question, context and answer of `ds`; the number of unanswerable questions."""
        unanswerable = 0
        columns = zip(ds[self.question_col], ds[self.context_col], ds[self.answers_col], strict=True)
        for row, (q, ctx, ans) in enumerate(columns):
            for key, v in (("question", q), ("context", ctx)):
                if not isinstance(v, str) or not v.strip():
                    what = "is empty" if isinstance(v, str) or v is None else f"is not text ({_short(v, 40)})"
                    raise DataError(f"data.{key}: row {row} of data.{role} {what}; drop or fix that row")
            texts, starts = parse_answers(ans, row, role)
            if not texts:
                unanswerable += 1
            for text, start in zip(texts, starts):
                _check_answer(ctx, text, start, row, role)
        return unanswerable

    def question_lengths(self, questions: list[str]) -> np.ndarray:
        enc = self.tokenizer(questions, add_special_tokens=False, verbose=False)["input_ids"]
        return np.fromiter((len(x) for x in enc), dtype=np.int64, count=len(enc))

    def context_room(self, question_tokens: int) -> int:
        return self.max_length - self.tokenizer.num_special_tokens_to_add(pair=True) - question_tokens

    def resolve_stride(self, sets) -> None:
        """The window overlap: `doc_stride`, which must leave room for new context in every window."""
        worst = None  # (room, row, role, question tokens)
        for ds, role in sets:
            lengths = self.question_lengths([str(q).lstrip() for q in ds[self.question_col]])
            if len(lengths):
                row = int(np.argmax(lengths))
                room = self.context_room(int(lengths[row]))
                if worst is None or room < worst[0]:
                    worst = (room, row, role, int(lengths[row]))
        if worst is None:
            return
        room, row, role, qlen = worst
        if room < MIN_CONTEXT_ROOM:
            raise DataError(
                f"data.question: row {row} of data.{role} is {qlen} tokens long, which leaves {max(room, 0)} of "
                f"max_length {self.max_length} for the context; raise max_length or shorten the question"
            )
        stride = self.cfg.doc_stride
        if stride >= room:
            default = type(self.cfg).model_fields["doc_stride"].default
            if stride != default:  # the user's choice (`replace()` marks every field as set: compare values)
                raise ConfigError(
                    f"Invalid finetune config: doc_stride {stride} must be smaller than the context room of a "
                    f"window: max_length {self.max_length} minus the longest question ({qlen} token{'s' * (qlen != 1)}, row {row} of "
                    f"data.{role}) and special tokens = {room}; use doc_stride: {room // 2} or a larger max_length"
                )
            self.stride_note = f" (default {stride} lowered to fit max_length {self.max_length})"
            stride = room // 2
        self.doc_stride = stride

    def describe(self) -> list[str]:
        lines = super().describe()
        lines.append(
            f"input: question '{self.question_col}', context '{self.context_col}', answers '{self.answers_col}'; "
            f"max_length {self.max_length}, doc_stride {self.doc_stride}{self.stride_note}"
        )
        for role, ds in (("train", self.train), ("eval", self.eval)):
            if ds is not None:
                lines.append(f"{role}: {len(ds):,} questions -> {len(self.windows(role)):,} windows")
        null = "; 'no answer' when the [CLS] score beats the best span (the train data has unanswerable questions)"
        lines.append(
            "head: start / end logit per token (cross-entropy over positions)" + (null if self.allow_null else "")
        )
        if self.eval_unanswerable and not self.allow_null:
            lines.append(
                f"note: data.eval has {self.eval_unanswerable} unanswerable questions but data.train has none: "
                "the model never predicts 'no answer', so those score 0"
            )
        lines.append(f"answers: best of n_best {self.cfg.n_best} spans, at most {self.cfg.max_answer_length} tokens")
        return lines

    @property
    def num_train(self) -> int:
        return len(self.windows("train")) if self.train is not None else 0

    @property
    def num_eval(self) -> int:
        return len(self.windows("eval")) if self.eval is not None else 0

    def load_eval(self, src):
        ds = super().load_eval(src)
        if len(ds) == 0:
            raise DataError("evaluate: the data is empty")
        self.columns(ds, "eval")
        self.check_rows(ds, "eval")
        return ds

    # ------------------------------------------------------------ worker
    def build_model(self, *, meta: bool = False):
        from transformers import AutoModelForQuestionAnswering

        if self.model_obj is not None:
            model = self.model_obj
        else:
            model = C.from_pretrained(
                AutoModelForQuestionAnswering, self.cfg, self.model_id, self.hf_config, meta=meta
            )
            if meta:
                return model
        return C.finish_model(self.cfg, model, self.tokenizer)

    def windows(self, role: str) -> Examples:
        """The encoded windows of the train or eval split, encoded once (the dry run and the worker share them)."""
        ds = self.train if role == "train" else self.eval
        key = (id(ds), self.max_length, self.doc_stride)
        with self._lock:
            hit = self._encoded.get(role)
            if hit is None or hit[0] != key:
                hit = self._encoded[role] = (key, self.encode(ds, role=role))
            return hit[1]

    def build_data(self) -> tuple[Examples, Examples | None]:
        return self.windows("train"), (self.windows("eval") if self.eval is not None else None)

    def tokenize_windows(self, questions: list[str], contexts: list[str], which=lambda i: f"predict: question {i}"):
        """Question + context windows of every pair (fast tokenizer, overflow with stride, offsets). `which(i)`
        names question i in an error."""
        tok = self.tokenizer
        right = tok.padding_side == "right"  # question first, unless the model reads the context first
        lengths = self.question_lengths(questions)
        too_long = np.flatnonzero(
            self.max_length - tok.num_special_tokens_to_add(pair=True) - lengths <= self.doc_stride
        )
        if len(too_long):
            i = int(too_long[0])
            raise DataError(
                f"{which(i)} is {int(lengths[i])} tokens long: with max_length {self.max_length} and doc_stride "
                f"{self.doc_stride} no room is left for the context; shorten it or raise max_length"
            )
        enc = tok(
            questions if right else contexts,
            contexts if right else questions,
            truncation="only_second" if right else "only_first",
            max_length=self.max_length,
            stride=self.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=False,
        )
        return enc, (1 if right else 0)

    def encode(self, ds, *, role: str = "eval") -> Examples:
        """One example per window. Features: the model inputs plus `start_positions` / `end_positions` (token
        indices of the first answer, or 0 = [CLS] when the window does not contain it). `extra` per window:
        `example_id` (the row's `id` when the data has one, else its row number), `context_index` (the row number),
        and for evaluation data `offsets` (character span per token, None outside the context), `context` and
        `answers` (the gold texts) for the metric. Training windows carry no offsets: nothing reads them."""
        questions = [str(q).lstrip() for q in ds[self.question_col]]
        contexts = [str(c) for c in ds[self.context_col]]
        answers = (
            [parse_answers(a, r, role) for r, a in enumerate(ds[self.answers_col])]
            if self.answers_col in ds.column_names
            else None
        )
        ids = list(ds["id"]) if "id" in ds.column_names else list(range(len(ds)))
        keep = [k for k in self.tokenizer.model_input_names if k in ("input_ids", "attention_mask", "token_type_ids")]
        features: dict[str, list] = {k: [] for k in keep}
        if answers is not None:
            features["start_positions"], features["end_positions"] = [], []
        extra: dict[str, list] = {"example_id": [], "context_index": []}
        if role != "train":
            extra.update(offsets=[], context=[], answers=[])
        chunk = 1000  # tokenizer output of a few thousand contexts at a time
        for lo in range(0, len(questions), chunk):
            enc, ctx_seq = self.tokenize_windows(
                questions[lo : lo + chunk],
                contexts[lo : lo + chunk],
                lambda i, lo=lo: f"data.question: row {lo + i} of data.{role}",
            )
            for w, sample in enumerate(enc["overflow_to_sample_mapping"]):
                ex = lo + sample
                seq = enc.sequence_ids(w)
                offs = [tuple(o) if s == ctx_seq else None for o, s in zip(enc["offset_mapping"][w], seq)]
                for k in keep:
                    features[k].append(enc[k][w])
                if answers is not None:
                    texts, starts = answers[ex]
                    a, b = answer_tokens(offs, starts[0], starts[0] + len(texts[0])) if texts else (0, 0)
                    features["start_positions"].append(a)
                    features["end_positions"].append(b)
                extra["example_id"].append(ids[ex])
                extra["context_index"].append(ex)
                if role != "train":
                    extra["offsets"].append(offs)
                    extra["context"].append(contexts[ex])
                    extra["answers"].append(answers[ex][0] if answers is not None else [])
        return Examples(features, None, extra)

    def collator(self):
        from .. import data as D

        return D.Collator(self.tokenizer.pad_token_id)

    def metric(self, data: Examples) -> QAMetric:
        return QAMetric(data, self.cfg.n_best, self.cfg.max_answer_length, self.allow_null)

    def predict(self, model, question=None, context=None, batch_size: int = 16):
        """The answer span of `question` in `context` (a string each, or lists of the same length; one context
        with a list of questions is asked each of them). Contexts of any length are read in windows.

        Returns:
            {"answer": str, "score": float, "start": int, "end": int} per question (a list for lists): `start` and
            `end` are character offsets, `context[start:end] == answer`. `score` is the softmax of start + end
            logit over the candidates kept for that question (the `n_best` best spans over all its windows, plus
            "no answer" when the model was trained with unanswerable questions): the model's share of belief in
            this span among those candidates, not a calibrated probability. "No answer" is `answer == ""` with
            `start == end == 0`.

        Example:
            >>> run.predict("Who wrote it?", "A line. -- Mark Twain")  # doctest: +SKIP
            {'answer': 'Mark Twain', 'score': 0.93, 'start': 11, 'end': 21}
        """
        if question is None or context is None:
            raise DataError("predict: pass a question and a context: predict(question=..., context=...)")
        single = isinstance(question, str) and isinstance(context, str)
        questions = [question] if isinstance(question, str) else list(question)
        contexts = [context] if isinstance(context, str) else list(context)
        if len(contexts) == 1 and len(questions) > 1:
            contexts = contexts * len(questions)
        if len(questions) == 1 and len(contexts) > 1:
            questions = questions * len(contexts)
        if len(questions) != len(contexts):
            raise DataError(f"predict: {len(questions)} questions but {len(contexts)} contexts")
        for what, values in (("question", questions), ("context", contexts)):
            bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
            if bad is not None:
                raise DataError(f"predict: {what} {bad} is a {type(values[bad]).__name__}, not a string")
        questions = [q.lstrip() for q in questions]
        enc, ctx_seq = self.tokenize_windows(questions, contexts)
        keep = [k for k in self.tokenizer.model_input_names if k in enc]
        samples = list(enc["overflow_to_sample_mapping"])
        offsets = [
            [tuple(o) if s == ctx_seq else None for o, s in zip(enc["offset_mapping"][w], enc.sequence_ids(w))]
            for w in range(len(samples))
        ]
        collate = self.collator()
        device = C.model_device(model)
        n_best, max_len = self.cfg.n_best, self.cfg.max_answer_length

        def batches():
            for lo in range(0, len(samples), batch_size):
                batch = collate([{k: enc[k][w] for k in keep} for w in range(lo, min(lo + batch_size, len(samples)))])
                yield lo, {k: v.to(device) for k, v in batch.items() if k in keep}

        def run(m, item):
            lo, batch = item
            out = m(**batch)
            both = np.stack([out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()])
            return [
                window_candidates(both[0, r], both[1, r], offsets[lo + r], n_best, max_len, NULL_INDEX)
                for r in range(both.shape[1])
            ]

        per_window = C.batched_inference(model, batches(), run)
        kept: list[list] = [[] for _ in questions]
        null = [math.inf] * len(questions)
        for w, (cands, null_score) in enumerate(per_window):
            ex = samples[w]
            kept[ex] = merge_candidates(kept[ex], cands, n_best)
            null[ex] = min(null[ex], null_score)
        results = [choose(contexts[i], kept[i], null[i] if self.allow_null else None) for i in range(len(questions))]
        return results[0] if single else results


def answer_tokens(offsets: list, start_char: int, end_char: int) -> tuple[int, int]:
    """(first, last) token of the answer characters [start_char, end_char) in one window, or (0, 0) = [CLS] when
    the window's context does not hold the whole answer."""
    ctx = [i for i, o in enumerate(offsets) if o is not None]
    if not ctx or offsets[ctx[0]][0] > start_char or offsets[ctx[-1]][1] < end_char:
        return NULL_INDEX, NULL_INDEX
    first = next(i for i in ctx if offsets[i][1] > start_char)
    last = next(i for i in reversed(ctx) if offsets[i][0] < end_char)
    return first, max(first, last)


def choose(context: str, candidates: list, null: float | None) -> dict[str, Any]:
    """The prediction for one question from its merged candidates; `null` is its no-answer score when the model
    may answer "no answer" (None otherwise). The score is a softmax over the candidates (and no-answer)."""
    scores = [c[0] for c in candidates] + ([null] if null is not None and math.isfinite(null) else [])
    if not scores:
        return {"answer": "", "score": 0.0, "start": 0, "end": 0}
    top = max(scores)
    total = sum(math.exp(s - top) for s in scores)
    if not candidates or (null is not None and null > candidates[0][0]):
        return {"answer": "", "score": math.exp(null - top) / total, "start": 0, "end": 0}
    score, a, b = candidates[0]
    return {"answer": context[a:b], "score": math.exp(score - top) / total, "start": a, "end": b}


class QAMetric:
    """Streaming exact match / F1: per eval batch one host transfer of the start / end logits, then each window's
    `n_best` candidate spans are kept (merged per question); `compute` picks each question's answer."""

    def __init__(self, data: Examples, n_best: int, max_answer_length: int, allow_null: bool):
        self.data = data
        self.n_best = n_best
        self.max_answer_length = max_answer_length
        self.allow_null = allow_null
        ex = data.extra
        self.questions: dict[int, tuple[str, list[str]]] = {}
        for i, c in enumerate(ex["context_index"]):
            self.questions.setdefault(c, (ex["context"][i], ex["answers"][i]))
        self.kept: dict[int, list] = {}
        self.null: dict[int, float] = {}

    def update(self, outputs, batch, host) -> None:
        import torch

        both = torch.stack([outputs.start_logits.float(), outputs.end_logits.float()]).cpu().numpy()
        ex = self.data.extra
        for r, i in enumerate(host["idx"]):
            cands, null = window_candidates(
                both[0, r], both[1, r], ex["offsets"][i], self.n_best, self.max_answer_length, NULL_INDEX
            )
            c = ex["context_index"][i]
            self.kept[c] = merge_candidates(self.kept.get(c, []), cands, self.n_best)
            self.null[c] = min(self.null.get(c, math.inf), null)

    def predictions(self) -> dict[int, dict[str, Any]]:
        """context_index -> the chosen answer ({"answer", "score", "start", "end"}) for every question seen."""
        return {
            c: choose(context, self.kept.get(c, []), self.null.get(c, math.inf) if self.allow_null else None)
            for c, (context, _) in self.questions.items()
        }

    def compute(self) -> dict[str, float]:
        preds = self.predictions()
        order = sorted(self.questions)
        return squad_scores([preds[c]["answer"] for c in order], [self.questions[c][1] for c in order])

    def extras(self) -> dict[str, Any]:
        has = [c for c, (_, gold) in self.questions.items() if gold]
        none = [c for c, (_, gold) in self.questions.items() if not gold]
        if not has or not none:
            return {}
        preds = self.predictions()
        f1 = [
            squad_scores([preds[c]["answer"] for c in group], [self.questions[c][1] for c in group])["f1"]
            for group in (has, none)
        ]
        return {
            "answerable": {
                "kind": "bars",
                "title": "F1 by question kind",
                "labels": [f"has answer ({len(has)})", f"no answer ({len(none)})"],
                "values": f1,
            }
        }
