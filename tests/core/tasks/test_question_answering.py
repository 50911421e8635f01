"""Extractive question answering: SQuAD scoring and normalisation, windows over long contexts (answers mapped
through the overflow, found again in the last window), pre-flight errors that name the row, the sample data, and
training end to end."""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import tiny_bert
from metrics_log import losses_by_step

from nb_finetune.core.config import FinetuneConfig
from nb_finetune.core.tasks.base import resolve_task
from nb_finetune.core.tasks.question_answering import QAMetric, QuestionAnswering, answer_tokens, parse_answers
from nb_finetune.core.tasks.squad_metrics import (
    f1_score,
    merge_candidates,
    normalize_answer,
    squad_scores,
    window_candidates,
)
from nb_finetune.errors import ConfigError, DataError, ModelError
from nb_finetune.sample_data.qa import long_record, qa_records, quotes

POS = "good great fine superb lovely wonderful excellent brilliant".split()
NEG = "bad awful poor terrible boring dull horrible weak".split()
FILL = "the a film movie plot actor story scene was is and it this very quite".split()
QUESTION = "good or bad"  # every context holds one sentiment word: the answer


def sentiment_records(n: int, seed: int, words: tuple[int, int] = (5, 15), at_end: bool = False) -> list[dict]:
    """Learnable QA in the tiny tokenizer's vocabulary: the answer is the one sentiment word among filler words."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ws = [rng.choice(FILL) for _ in range(rng.randint(*words))]
        pos = len(ws) if at_end else rng.randrange(len(ws) + 1)
        w = rng.choice(POS + NEG)
        ws.insert(pos, w)
        context = " ".join(ws)
        start = len(" ".join(ws[:pos])) + (1 if pos else 0)
        out.append({"id": f"s{i}", "question": QUESTION, "context": context, "answers": _ans([w], [start])})
    return out


def _ans(texts, starts):
    return {"text": list(texts), "answer_start": list(starts)}


def make_task(tiny_model_dir, train, **kw) -> QuestionAnswering:
    cfg = FinetuneConfig.from_dict({"model": tiny_model_dir, "task": "qa", "data": {"train": train}, **kw})
    task = resolve_task(cfg)
    task.preflight()
    return task


def feed(metric: QAMetric, data, logits_of, batch_size: int = 4) -> None:
    """Drive a streaming metric as the loop does: batches of windows, logits from `logits_of(window) -> (s, e)`."""
    import torch

    for lo in range(0, len(data), batch_size):
        idx = list(range(lo, min(lo + batch_size, len(data))))
        width = max(len(data.features["input_ids"][i]) for i in idx)
        s = torch.full((len(idx), width), -5.0)
        e = torch.full((len(idx), width), -5.0)
        for r, i in enumerate(idx):
            si, ei = logits_of(i)
            s[r, : len(si)], e[r, : len(ei)] = torch.as_tensor(si), torch.as_tensor(ei)
        metric.update(SimpleNamespace(start_logits=s, end_logits=e), {}, {"idx": idx, "lengths": []})


# --------------------------------------------------------------------------------------------- scoring
def test_normalisation_lowercases_strips_punctuation_articles_and_whitespace():
    assert normalize_answer("  The Quick,  brown fox!! ") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert normalize_answer("...") == ""


def test_exact_match_and_f1_against_hand_computed_values():
    # pred tokens after normalisation: cat sat on mat; gold: cat sat on red mat -> P = 4/4, R = 4/5
    assert f1_score("The cat sat on the mat.", "a cat sat on a red mat") == pytest.approx(2 * 1 * 0.8 / 1.8)
    preds = ["The Eiffel Tower!", "Paris", "", "Mark Twain", "nothing here"]
    golds = [
        ["Eiffel Tower"],  # EM 1 after normalisation
        ["in Paris, France"],  # EM 0, F1 = 2 * 1 * (1/3) / (4/3) = 0.5
        [],  # unanswerable, empty prediction: 1 / 1
        ["Twain", "Mark Twain, Huckleberry Finn", "Mark Twain"],  # the best gold counts: 1 / 1
        [],  # unanswerable but answered: 0 / 0
    ]
    got = squad_scores(preds, golds)
    assert got["exact_match"] == pytest.approx(3 / 5)
    assert got["f1"] == pytest.approx((1 + 0.5 + 1 + 1 + 0) / 5)
    assert set(got) == {"exact_match", "f1"}
    assert squad_scores([], []) == {"exact_match": 0.0, "f1": 0.0}


def test_window_candidates_keep_valid_spans_only():
    offsets = [None, None, None, (0, 3), (4, 7), (8, 11), (12, 15), None]  # [CLS] q q | 4 context tokens | [SEP]
    start = np.array([1.0, 50.0, 0, 2, 9, 0, 0, 0])  # the question token (1) must never start an answer
    end = np.array([1.0, 0, 50.0, 8, 0, 1, 7, 40.0])  # nor the [SEP] (7) end one
    cands, null = window_candidates(start, end, offsets, n_best=20, max_answer_length=30)
    assert null == 2.0  # start + end logit at [CLS]
    assert cands[0] == (9 + 7, 4, 15)  # token 4 .. token 6: characters 4..15
    assert all(a <= b for _, a, b in cands) and all(c[0] >= d[0] for c, d in zip(cands, cands[1:]))
    assert (9 + 8, 4, 3) not in cands  # end before start is not a span
    short, _ = window_candidates(start, end, offsets, n_best=20, max_answer_length=1)
    assert short[0] == (2 + 8, 0, 3)  # one token at most: token 3 alone
    assert len(window_candidates(start, end, offsets, n_best=2, max_answer_length=30)[0]) <= 2
    assert merge_candidates([(5.0, 0, 3)], [(7.0, 0, 3), (6.0, 4, 7)], 2) == [(7.0, 0, 3), (6.0, 4, 7)]


# --------------------------------------------------------------------------------------------- windows
LONG = dict(words=(300, 300), at_end=True)  # ~300 tokens: several times the tiny model's 64 positions


def test_long_context_is_split_with_stride_and_the_answer_mapped_into_its_window(tiny_model_dir):
    train = sentiment_records(6, 0, **LONG) + sentiment_records(10, 1)
    task = make_task(tiny_model_dir, train, data={"train": train, "eval_split": 0})
    assert task.max_length == 64 and task.doc_stride < 64 and "lowered" in task.stride_note
    windows = task.windows("train")
    assert len(windows) == task.num_train > len(train)
    assert any(f"{len(train)} questions -> {len(windows)} windows" in line for line in task.describe())
    ev = task.encode(task.train, role="eval")  # the same rows with the evaluation extras (offsets)
    assert set(ev.extra) == {"example_id", "context_index", "offsets", "context", "answers"}
    for w in range(len(ev)):
        row = train[ev.extra["context_index"][w]]
        assert ev.extra["example_id"][w] == row["id"]
        offs = ev.extra["offsets"][w]
        assert offs[0] is None and offs[1] is None  # [CLS] and the question are not context
        s, e = ev.features["start_positions"][w], ev.features["end_positions"][w]
        text, start = row["answers"]["text"][0], row["answers"]["answer_start"][0]
        ctx = [o for o in offs if o is not None]
        inside = ctx[0][0] <= start and start + len(text) <= ctx[-1][1]
        if inside:
            assert row["context"][offs[s][0] : offs[e][1]] == text
        else:
            assert (s, e) == (0, 0)  # windows without the answer point at [CLS]
    long_windows = [w for w in range(len(ev)) if ev.extra["context_index"][w] == 0]
    assert len(long_windows) >= 4
    # the answer is the last word: only the last window of that question holds it
    assert [ev.features["start_positions"][w] > 0 for w in long_windows] == [False] * (len(long_windows) - 1) + [True]


def test_answer_tokens_cover_partial_tokens():
    offsets = [None, (0, 5), (5, 8), (9, 12)]
    assert answer_tokens(offsets, 2, 7) == (1, 2)  # an answer starting inside a token takes that token
    assert answer_tokens(offsets, 9, 12) == (3, 3)
    assert answer_tokens(offsets, 20, 25) == (0, 0)


def _pointer_logits(ev, task, word: str):
    """Crafted logits: a peak on `word`'s token everywhere it occurs (question included), noise elsewhere."""
    wid = task.tokenizer.convert_tokens_to_ids(word)
    rng = np.random.default_rng(0)

    def of(i):
        ids = np.array(ev.features["input_ids"][i])
        noise = rng.normal(0, 0.1, len(ids))
        peak = np.where(ids == wid, 10.0, 0.0)
        return noise + peak, noise + peak

    return of


def test_metric_finds_the_answer_in_the_last_window_on_crafted_logits(tiny_model_dir):
    train = sentiment_records(12, 2)
    task = make_task(tiny_model_dir, train, data={"train": train, "eval_split": 0})
    rows = sentiment_records(3, 3, **LONG) + sentiment_records(3, 4)
    ev = task.encode(task.load_eval(rows), role="eval")
    assert len(ev) > 12
    metric = task.metric(ev)
    wids = {task.tokenizer.convert_tokens_to_ids(w) for w in POS + NEG}

    def logits_of(i):
        ids = np.array(ev.features["input_ids"][i])
        peak = np.where(np.isin(ids, list(wids)), 10.0, 0.0)
        return peak, peak

    feed(metric, ev, logits_of)
    preds = metric.predictions()
    assert [preds[i]["answer"] for i in range(6)] == [r["answers"]["text"][0] for r in rows]
    assert preds[0]["start"] == rows[0]["answers"]["answer_start"][0] > 1000  # far past the first window
    assert metric.compute() == {"exact_match": 1.0, "f1": 1.0}


def test_v2_no_answer_wins_when_the_null_score_beats_every_span(tiny_model_dir):
    train = sentiment_records(8, 5) + [
        {"id": "u", "question": QUESTION, "context": "the film", "answers": _ans([], [])}
    ]
    task = make_task(tiny_model_dir, train, data={"train": train, "eval_split": 0})
    assert task.allow_null and any("no answer" in line for line in task.describe())
    rows = sentiment_records(2, 6) + [{"question": QUESTION, "context": "plot was story", "answers": _ans([], [])}]
    ev = task.encode(task.load_eval(rows), role="eval")
    metric = task.metric(ev)
    wids = {task.tokenizer.convert_tokens_to_ids(w) for w in POS + NEG}

    def logits_of(i):
        ids = np.array(ev.features["input_ids"][i])
        s = np.where(np.isin(ids, list(wids)), 10.0, 0.0)
        s[0] = 4.0  # null = 8: beaten by a real answer (20), beats the unanswerable row's best span (0)
        return s, s.copy()

    feed(metric, ev, logits_of)
    preds = metric.predictions()
    assert preds[2]["answer"] == "" and preds[0]["answer"] == rows[0]["answers"]["text"][0]
    assert metric.compute() == {"exact_match": 1.0, "f1": 1.0}
    assert metric.extras()["answerable"]["values"] == [1.0, 1.0]
    task.allow_null = False  # a model trained without unanswerable questions always answers
    metric = task.metric(ev)
    feed(metric, ev, logits_of)
    assert metric.compute()["exact_match"] == pytest.approx(2 / 3)


class _Pointer:
    """A stand-in QA model whose start / end logits peak on given token ids (any window, question included)."""

    def __new__(cls, start_id: int, end_id: int):
        import torch
        import torch.nn as nn

        class Pointer(nn.Module):
            def __init__(self):
                super().__init__()
                self.w = nn.Parameter(torch.zeros(1))
                self.windows = 0

            def forward(self, input_ids, attention_mask=None, token_type_ids=None):
                self.windows += len(input_ids)
                base = torch.zeros(input_ids.shape) + self.w
                return SimpleNamespace(
                    start_logits=base + 10.0 * (input_ids == start_id), end_logits=base + 10.0 * (input_ids == end_id)
                )

        return Pointer()


def test_predict_reads_a_long_context_in_windows_and_returns_char_offsets(tiny_model_dir):
    train = sentiment_records(8, 7)
    task = make_task(tiny_model_dir, train, data={"train": train, "eval_split": 0})
    tok = task.tokenizer
    model = _Pointer(tok.convert_tokens_to_ids("superb"), tok.convert_tokens_to_ids("lovely"))
    filler = " ".join(random.Random(0).choice(FILL) for _ in range(300))
    # "superb" alone early on (no end in reach), the answer "superb lovely" at the very end; the question has both
    context = f"it was superb {filler} and the story was superb lovely"
    assert len(tok(context)["input_ids"]) > 4 * task.max_length
    got = task.predict(model, "superb or lovely", context)
    assert set(got) == {"answer", "score", "start", "end"}
    assert got["answer"] == "superb lovely" and context[got["start"] : got["end"]] == "superb lovely"
    assert got["start"] == context.rindex("superb lovely") and 0 < got["score"] <= 1
    assert model.windows > 4
    many = task.predict(model, question=["superb or lovely", "what"], context=[context, "superb lovely film"])
    assert [m["answer"] for m in many] == ["superb lovely", "superb lovely"]
    assert many[1]["start"] == 0 and many[1]["end"] == len("superb lovely")
    assert task.predict(model, ["a", "b"], "a superb lovely film")[1]["answer"] == "superb lovely"  # one context
    nothing = task.predict(model, "what", "the plot was dull")  # no start peak: best span of the noise, scored low
    assert nothing["score"] < 0.5
    with pytest.raises(DataError, match="2 questions but 3 contexts"):
        task.predict(model, ["a", "b"], ["x", "y", "z"])
    with pytest.raises(DataError, match="predict: question 1 is 80 tokens long"):  # not a tokenizer panic
        task.predict(model, ["a", "good " * 80], "the film")
    assert task.predict(model, "what", "")["answer"] == ""


# --------------------------------------------------------------------------------------------- pre-flight
def test_answer_start_mismatch_names_the_row_and_what_the_context_has(tiny_model_dir):
    train = sentiment_records(5, 8)
    bad = dict(train[3], answers=_ans([train[3]["answers"]["text"][0]], [train[3]["answers"]["answer_start"][0] + 2]))
    with pytest.raises(DataError) as e:
        make_task(tiny_model_dir, train[:3] + [bad] + train[4:])
    msg = str(e.value)
    assert "row 3 of data.train" in msg and f"answer_start {bad['answers']['answer_start'][0]}" in msg
    assert "the context has" in msg and repr(bad["answers"]["text"][0]) in msg
    assert f"is at {train[3]['answers']['answer_start'][0]}" in msg and len(msg.splitlines()) == 1


def test_missing_columns_suggest_the_close_name(tiny_model_dir):
    rows = [
        {"question": r["question"], "contexts": r["context"], "answers": r["answers"]} for r in sentiment_records(4, 9)
    ]
    with pytest.raises(
        DataError, match=r"data.context: column 'context' is not in data.train .*Did you mean 'contexts'"
    ):
        make_task(tiny_model_dir, rows)
    rows = [
        {"Question": r["question"], "context": r["context"], "answers": r["answers"]} for r in sentiment_records(4, 9)
    ]
    with pytest.raises(DataError, match="Did you mean 'Question'"):
        make_task(tiny_model_dir, rows)
    renamed = [{"q": r["question"], "context": r["context"], "answers": r["answers"]} for r in sentiment_records(4, 9)]
    task = make_task(tiny_model_dir, renamed, data={"train": renamed, "question": "q", "eval_split": 0})
    assert task.question_col == "q"


def test_answers_not_in_squad_shape_name_the_row(tiny_model_dir):
    rows = sentiment_records(4, 10)
    for wrong in (
        ["a"],
        {"text": ["x"]},
        {"text": ["a", "b"], "answer_start": [1]},
        {"text": "fine", "answer_start": 0},
    ):
        bad = [
            dict(r, answers=json.dumps(wrong)) if i == 2 else dict(r, answers=json.dumps(r["answers"]))
            for i, r in enumerate(rows)
        ]
        with pytest.raises(DataError, match="row 2 of data.train is not in SQuAD shape"):
            make_task(tiny_model_dir, bad)
    assert parse_answers("{'text': ['a'], 'answer_start': [3]}", 0, "train") == (["a"], [3])  # a CSV cell


def test_empty_data_a_model_without_qa_head_a_slow_tokenizer_and_too_long_questions(tiny_model_dir, tmp_path):
    import pandas as pd
    from transformers import BertTokenizerFast, ViTConfig

    with pytest.raises(DataError, match="data.train is empty"):
        make_task(tiny_model_dir, pd.DataFrame({"question": [], "context": [], "answers": []}))
    vit = tmp_path / "vit"
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(vit)
    with pytest.raises(ModelError, match="has no QuestionAnswering head"):
        make_task(str(vit), sentiment_records(3, 0))

    with pytest.raises(ModelError, match="needs a \\*ForQuestionAnswering model object"):
        make_task(tiny_bert(), sentiment_records(3, 0))
    slow_cls = type("Slow", (BertTokenizerFast,), {"is_fast": property(lambda self: False)})
    slow = slow_cls.from_pretrained(tiny_model_dir)
    with pytest.raises(ModelError, match="needs a fast one"):
        make_task(tiny_model_dir, sentiment_records(3, 0), tokenizer=slow)
    long_q = sentiment_records(4, 0)
    long_q[1] = dict(long_q[1], question=" ".join(["good"] * 70))
    with pytest.raises(DataError, match="row 1 of data.train is 70 tokens long"):
        make_task(tiny_model_dir, long_q)
    with pytest.raises(ConfigError, match="doc_stride 60 must be smaller than"):
        make_task(tiny_model_dir, sentiment_records(4, 0), doc_stride=60)


def test_auto_detects_squad_columns_and_refuses_keys_of_other_tasks(tiny_model_dir):
    cfg = FinetuneConfig.from_dict({"model": tiny_model_dir, "data": {"train": sentiment_records(4, 0)}})
    task = resolve_task(cfg)
    assert isinstance(task, QuestionAnswering) and "SQuAD-style" in task.picked
    with pytest.raises(ConfigError, match="`labels` is not used by task question-answering"):
        resolve_task(cfg.replace(task="extractive-qa", labels=["a", "b"]))


# --------------------------------------------------------------------------------------------- sample data
def test_sample_records_are_deterministic_real_quotes_with_correct_spans(tiny_model_dir):
    assert qa_records(20, 3) == qa_records(20, 3) and qa_records(20, 3) != qa_records(20, 4)
    texts = {q.text for q in quotes()}
    recs = qa_records(200, 0, split="test", unanswerable=0.25)
    for r in recs:
        for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"]):
            assert r["context"][s : s + len(t)] == t
        assert all(line.split(" -- ")[0] in texts or " -- " in line for line in r["context"].split("\n"))
    assert 20 < sum(1 for r in recs if not r["answers"]["text"]) < 80
    train_q = {q.text for q in quotes()} - {
        line.rsplit(" -- ", 1)[0] for r in recs for line in r["context"].split("\n")
    }
    assert len(train_q) > 100  # test contexts use test quotations only
    rec = long_record(40, seed=1)
    assert rec["context"].endswith(rec["answers"]["text"][0]) or rec["context"].endswith('"')
    task = make_task(
        tiny_model_dir, qa_records(6, 0), max_length=64, data={"train": qa_records(6, 0), "eval_split": 0}
    )
    assert task.num_train >= 6  # pre-flight accepts the records; with 64 positions they span several windows


# --------------------------------------------------------------------------------------------- training
def test_training_pieces_learn_and_find_the_answer_in_the_last_window(tiny_model_dir):
    """Collator + forward + metric + predict on the tiny model, without the loop: loss falls, EM reaches 1."""
    import torch

    train = sentiment_records(160, 11)
    task = make_task(tiny_model_dir, train, data={"train": train, "eval": sentiment_records(24, 12)})
    torch.manual_seed(0)
    model = task.build_model()
    tr, ev = task.build_data()
    collate = task.collator()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(3):
        for lo in range(0, len(tr), 16):
            batch = collate([tr[i] for i in range(lo, min(lo + 16, len(tr)))])
            for k in ("lengths", "num_tokens", "idx"):
                batch.pop(k)
            assert batch["start_positions"].dtype == torch.long and "labels" not in batch
            loss, _ = task.forward(model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    metric = task.metric(ev)
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(ev), 8):
            batch = collate([ev[i] for i in range(lo, min(lo + 8, len(ev)))])
            host = {k: batch.pop(k) for k in ("lengths", "num_tokens", "idx")}
            metric.update(model(**batch), batch, host)
    assert metric.compute()["exact_match"] >= 0.9
    far = sentiment_records(3, 13, **LONG)
    got = task.predict(model, [r["question"] for r in far], [r["context"] for r in far])
    assert [g["start"] for g in got] == [r["answers"]["answer_start"][0] for r in far]
    assert all(math.isfinite(g["score"]) for g in got)


# --------------------------------------------------------------------------------------------- whole runs
def test_finetune_learns_answers_and_reports_exact_match_and_f1(tiny_model_dir, tmp_path):
    from nb_finetune import finetune

    cfg = {
        "model": tiny_model_dir,
        "task": "qa",
        "data": {
            "train": sentiment_records(192, 21),
            "eval": sentiment_records(40, 22) + sentiment_records(4, 23, **LONG),
        },
        "epochs": 3,
        "batch_size": 16,
        "lr": 3e-3,
        "log_every": 2,
        "eval_at_start": True,
        "seed": 0,
        "output_dir": str(tmp_path),
        "name": "qa",
    }
    dry = finetune(cfg, dry_run=True)
    assert any("192 questions -> 192 windows" in line for line in dry.task_detail) and dry.num_eval > 44
    run = finetune(cfg, wait=True)
    assert run.status == "finished", run.error
    assert run.task.name == "question-answering"
    evals = run.history.dropna(subset=["eval_f1"])
    assert {"eval_loss", "eval_exact_match", "eval_f1"} <= set(evals.columns)
    first, last = evals.iloc[0], evals.iloc[-1]
    assert first["eval_f1"] < 0.3  # control: the fresh head points anywhere
    assert last["eval_exact_match"] > 0.9 and last["eval_f1"] >= last["eval_exact_match"]
    losses = run.history["loss"].dropna().to_numpy()
    assert losses[-5:].mean() < 0.3 * losses[:5].mean()
    far = sentiment_records(2, 24, **LONG)  # the answer is the last word: in the last window only
    got = run.predict([r["question"] for r in far], [r["context"] for r in far])
    assert [(g["answer"], g["start"]) for g in got] == [
        (r["answers"]["text"][0], r["answers"]["answer_start"][0]) for r in far
    ]
    one = run.predict(question=far[0]["question"], context=far[0]["context"], batch_size=2)
    assert one == got[0]
    again = run.evaluate(cfg["data"]["eval"])
    assert again["eval_f1"] == pytest.approx(last["eval_f1"])


def test_freezing_all_but_head_trains_only_the_qa_head(tiny_model_dir, tmp_path):
    from transformers import AutoModelForQuestionAnswering

    from nb_finetune import finetune
    from nb_finetune.core.events import RunStarted

    start, box = {}, {}

    class Snapshot:
        def on_event(self, e):
            if isinstance(e, RunStarted):
                start["head"] = box["run"].model.qa_outputs.weight.detach().cpu().clone()

    run = box["run"] = finetune(
        {
            "model": tiny_model_dir,
            "task": "qa",
            "data": {"train": sentiment_records(64, 25), "eval_split": 0},
            "max_steps": 4,
            "batch_size": 16,
            "lr": 1e-2,
            "freeze": "all_but_head",
            "output_dir": str(tmp_path),
            "name": "frozen",
        },
        callbacks=[Snapshot()],
        start=False,
    )
    run.start().wait()
    assert run.status == "finished", run.error
    base = AutoModelForQuestionAnswering.from_pretrained(tiny_model_dir).state_dict()
    tuned = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
    body = [k for k in base if not k.startswith("qa_outputs.")]
    assert body and all(tuned[k].equal(base[k]) for k in body)
    assert not tuned["qa_outputs.weight"].equal(start["head"])  # control: the head did train


def test_stop_and_resume_in_a_fresh_process_repeats_an_uninterrupted_run(tiny_model_dir, tmp_path):
    import torch
    from fresh_process import StopAtForward, run_py

    from nb_finetune import finetune

    data = tmp_path / "train.jsonl"
    rows = sentiment_records(40, 26) + sentiment_records(4, 27, words=(60, 90))  # some questions span 2+ windows
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = {
        "model": tiny_model_dir,
        "task": "qa",
        "data": {"train": str(data), "eval_split": 0.25},
        "epochs": 2,
        "batch_size": 8,
        "grad_accum": 2,
        "lr": 1e-3,
        "dropout": 0.1,
        "precision": "fp32",
        "seed": 5,
        "log_every": 1,
        "save_every": None,
        "output_dir": str(tmp_path / "runs"),
    }
    a = finetune(cfg, name="a", wait=True)
    assert a.status == "finished", (a.status, a.error)
    per_epoch = math.ceil(a.task.num_train / 8)  # batches of windows
    stop_at = per_epoch + 3  # epoch 2's third batch: mid-epoch, and the first half of an accumulated step
    stop = StopAtForward(stop_at)
    b = stop.attach(finetune(cfg, name="b", callbacks=[stop], start=False))
    b.start().wait()
    assert (b.status, b.reason) == ("stopped", "user"), (b.status, b.error)
    runs = tmp_path / "runs"
    # that half-step's gradient is discarded: epoch 1's steps (the last one flushes an odd batch) plus one
    assert b.step == math.ceil(per_epoch / 2) + 1 and max(losses_by_step(runs / "b")) == b.step
    code = """
        import json, os
        from nb_finetune import finetune
        run = finetune(json.loads(os.environ["NB_FT_CFG"]), name="b", resume_from="last", wait=True)
        assert run.status == "finished", run.error
    """
    # as run a had it: the same reduction order
    run_py(code, {"NB_FT_CFG": json.dumps(cfg), "OMP_NUM_THREADS": str(torch.get_num_threads())})
    la, lb = losses_by_step(runs / "a"), losses_by_step(runs / "b")
    assert len(la) > b.step and sorted(la) == sorted(lb)
    assert [lb[s] for s in sorted(lb)] == [la[s] for s in sorted(la)]  # exactly equal, not approximately
