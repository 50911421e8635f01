"""Token classification on the task seam: entity-level scores against hand-computed values (IOB2, IOB1, IOBES,
plain tags), pre-flight errors naming rows and tags, sub-token alignment, CoNLL files, predict's spans and
offsets, and whole runs through `finetune()` (it learns, freezing applies, a stopped run resumed in a fresh process
repeats an uninterrupted one exactly)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from metrics_log import losses_by_step

from nb_finetune.core.config import FinetuneConfig
from nb_finetune.core.tasks.base import resolve_task
from nb_finetune.core.tasks.seq_metrics import detect_scheme, entities, entity_scores
from nb_finetune.core.tasks.token_classification import (
    EntityMetric,
    TokenClassification,
    align_labels,
    read_conll,
    split_words,
)
from nb_finetune.errors import DataError, ModelError

ROOT = Path(__file__).resolve().parents[3]
FILL = "the a film movie plot actor story scene was is and it this very quite".split()
PEOPLE = [("anna", "smith"), ("john", "brown"), ("maria", "lopez"), ("peter", "jones")]
PLACES = ["paris", "texas", "berlin", "tokyo"]


def ner_recs(n: int, seed: int = 0) -> list[dict]:
    """Filler sentences with one or two entities from small fixed sets (learnable by the tiny model)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        toks = [rng.choice(FILL) for _ in range(rng.randint(3, 8))]
        tags = ["O"] * len(toks)
        for kind in rng.sample(["PER", "LOC"], rng.randint(1, 2)):
            i = rng.choice([k for k in range(len(toks) + 1) if k == len(toks) or not tags[k].startswith("I-")])
            ent = list(rng.choice(PEOPLE)) if kind == "PER" else [rng.choice(PLACES)]
            toks[i:i] = ent
            tags[i:i] = [f"B-{kind}"] + [f"I-{kind}"] * (len(ent) - 1)
        out.append({"tokens": toks, "tags": tags})
    return out


def ner_task(model_dir, train, **over) -> TokenClassification:
    data = {"train": train, "eval_split": 0.25, **over.pop("data", {})}
    cfg = FinetuneConfig.from_dict({"model": model_dir, "task": over.pop("task", "ner"), "data": data, **over})
    task = resolve_task(cfg)
    task.preflight()
    return task


# --------------------------------------------------------------------------------------------- metrics
def test_iob2_scores_count_entity_boundaries():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"], ["B-PER", "B-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-LOC", "O", "O"], ["B-PER", "I-PER", "O", "B-LOC"]]
    s = entity_scores(gold, pred)
    # gold: PER 0-2, LOC 3-5 | PER 0-1, PER 1-2, LOC 3-4 (5); predicted: PER 0-2, LOC 3-4 | PER 0-2, LOC 3-4 (4).
    # Right: the first PER and the second LOC. A one-token-short LOC and two PERs merged into one are wrong.
    assert s["precision"] == pytest.approx(2 / 4) and s["recall"] == pytest.approx(2 / 5)
    assert s["f1"] == pytest.approx(2 * 0.5 * 0.4 / 0.9)
    assert s["PER_f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3)) and s["LOC_f1"] == pytest.approx(0.5)
    assert s["accuracy"] == pytest.approx(8 / 10)
    assert entity_scores(gold, gold)["f1"] == 1.0


def test_iob1_iobes_bilou_and_plain_tags_are_read_as_conlleval_reads_them():
    # IOB1: I- starts an entity, B- only splits two adjacent ones of a type
    assert entities(["I-PER", "I-PER", "B-PER", "O", "I-LOC"]) == [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5)]
    s = entity_scores([["I-PER", "I-PER", "B-PER", "O", "I-LOC"]], [["I-PER", "I-PER", "I-PER", "O", "I-LOC"]])
    assert (s["precision"], s["recall"]) == (pytest.approx(1 / 2), pytest.approx(1 / 3)) and s["f1"] == pytest.approx(
        0.4
    )
    # IOBES: an E- closes, an S- stands alone; broken sequences still give spans (E- after O starts one)
    gold = ["S-LOC", "B-PER", "E-PER", "B-PER", "I-PER", "E-PER"]
    assert entities(gold) == [("LOC", 0, 1), ("PER", 1, 3), ("PER", 3, 6)]
    s = entity_scores([gold], [["S-LOC", "B-PER", "I-PER", "I-PER", "I-PER", "E-PER"]])
    assert s["f1"] == pytest.approx(0.4) and s["LOC_f1"] == 1.0 and s["PER_f1"] == 0.0
    assert entities(["O", "E-PER", "B-LOC", "S-LOC", "I-LOC"]) == [
        ("PER", 1, 2),
        ("LOC", 2, 3),
        ("LOC", 3, 4),
        ("LOC", 4, 5),
    ]
    assert entities(["U-PER", "B-LOC", "L-LOC", "I-LOC"]) == [("PER", 0, 1), ("LOC", 1, 3), ("LOC", 3, 4)]
    # a type change inside a run ends the entity; sloppy IOB2 (I- after O) starts one
    assert entities(["B-PER", "I-LOC", "O", "I-PER"]) == [("PER", 0, 1), ("LOC", 1, 2), ("PER", 3, 4)]
    # plain tags (POS): every tagged token is its own entity
    s = entity_scores([["NN", "NN", "VB", "O"]], [["NN", "VB", "VB", "O"]])
    assert (
        s["f1"] == pytest.approx(2 / 3) and s["NN_f1"] == pytest.approx(2 / 3) and s["VB_f1"] == pytest.approx(2 / 3)
    )
    assert entities(["B", "I", "O", "B"]) == [("_", 0, 2), ("_", 3, 4)]  # untyped chunks


def test_scheme_detection():
    assert detect_scheme([["B-PER", "I-PER", "O"], ["B-LOC"]]) == "IOB2"
    assert detect_scheme([["I-PER", "I-PER", "O"], ["B-LOC"]]) == "IOB1"
    assert detect_scheme([["B-PER", "E-PER", "S-LOC"]]) == "IOBES"
    assert detect_scheme([["U-PER", "B-LOC", "L-LOC"]]) == "BILOU"
    assert detect_scheme([["NN", "VB", "DT"]]) == "plain"


def test_streaming_metric_keeps_only_tagged_positions_and_equals_the_whole():
    import torch

    names = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    rng = np.random.default_rng(0)
    gold, pred, batches = [], [], []
    for _ in range(4):  # batches of different widths, -100 on special tokens, padding and later sub-tokens
        b, t = int(rng.integers(1, 5)), int(rng.integers(3, 12))
        labels = torch.full((b, t), -100)
        logits = torch.zeros(b, t, len(names))
        for r in range(b):
            pos = sorted(rng.choice(np.arange(1, t), size=int(rng.integers(1, t)), replace=False))
            g = rng.integers(0, len(names), len(pos))
            p = np.where(rng.random(len(pos)) < 0.6, g, rng.integers(0, len(names), len(pos)))
            labels[r, pos] = torch.tensor(g)
            logits[r, torch.arange(t), torch.tensor(rng.integers(0, len(names), t))] = 1.0  # noise off the tags
            logits[r, pos] = 0.0
            logits[r, pos, torch.tensor(p)] = 5.0
            gold.append([names[i] for i in g])
            pred.append([names[i] for i in p])
        batches.append((SimpleNamespace(logits=logits), {"labels": labels}))
    m = EntityMetric(names)
    for out, batch in batches:
        m.update(out, batch, {"idx": [], "lengths": []})
    got, want = m.compute(), entity_scores(gold, pred)
    assert set(got) == {"precision", "recall", "f1", "accuracy", "LOC_f1", "PER_f1"}
    assert got == pytest.approx(want)
    bars = m.extras()["entity_f1"]
    assert bars["kind"] == "bars" and bars["labels"] == ["LOC", "PER"]
    assert bars["values"] == [pytest.approx(want["LOC_f1"]), pytest.approx(want["PER_f1"])]


# --------------------------------------------------------------------------------------------- pre-flight
def test_auto_detects_token_lists_and_describes_the_tags(tiny_model_dir):
    task = ner_task(tiny_model_dir, ner_recs(40), task="auto")
    assert isinstance(task, TokenClassification) and task.picked == "token lists in 'tokens' with tag lists in 'tags'"
    assert task.label_names == ["O", "B-LOC", "B-PER", "I-PER"]
    text = "\n".join(task.describe())
    assert "tag scheme: IOB2; entity types (2): LOC, PER" in text
    assert "first sub-token of each word tagged" in text and "4-way softmax per token" in text
    assert task.default_metric == "eval_f1" and task.higher_is_better("eval_f1")


def test_a_row_whose_tags_do_not_fit_its_tokens_names_the_row_and_both_lengths(tiny_model_dir):
    recs = ner_recs(10)
    recs[7] = {"tokens": ["anna", "smith", "was"], "tags": ["B-PER", "I-PER"]}
    with pytest.raises(DataError, match=r"row 7 of data.train has 3 tokens but 2 tags"):  # the user's row number
        ner_task(tiny_model_dir, recs, data={"eval_split": 0.5})


def test_unknown_tag_with_labels_names_row_and_tag(tiny_model_dir):
    recs = ner_recs(10)
    recs[3]["tags"][0] = "B-ORG"
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    with pytest.raises(DataError, match=r"row 3 of data.train has tag 'B-ORG', which is not in labels"):
        ner_task(tiny_model_dir, recs, labels=labels, data={"eval_split": 0.5})
    task = ner_task(tiny_model_dir, ner_recs(10), labels=labels)  # the given order is the id order
    assert task.label_names == labels


def test_int_tags_with_and_without_names(tiny_model_dir):
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    recs = [{"tokens": r["tokens"], "tags": [names.index(t) for t in r["tags"]]} for r in ner_recs(20)]
    named = ner_task(tiny_model_dir, recs, labels=names)
    assert named.label_names == names and "entity types (2): PER, LOC" in "\n".join(named.describe())
    bare = ner_task(tiny_model_dir, recs)  # no I-LOC in the data: ids 0..3
    assert bare.label_names == ["0", "1", "2", "3"] and bare.unnamed_ints
    assert "integer ids without `labels:`, named 0..3" in "\n".join(bare.describe())
    with pytest.raises(DataError, match=r"row \d+ of data.train has tag id 3, outside 0..2"):
        ner_task(tiny_model_dir, recs, labels=names[:3], data={"eval_split": 0})


def test_classlabel_sequences_give_their_names(tiny_model_dir):
    import datasets

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    recs = ner_recs(20)
    ds = datasets.Dataset.from_dict(
        {"words": [r["tokens"] for r in recs], "ner_tags": [[names.index(t) for t in r["tags"]] for r in recs]},
        features=datasets.Features(
            {
                "words": datasets.Sequence(datasets.Value("string")),
                "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
            }
        ),
    )
    task = ner_task(tiny_model_dir, ds, task="auto")
    assert (task.tokens_col, task.tags_col, task.label_names) == ("words", "ner_tags", names)
    train, _ = task.build_data()
    assert {x for row in train.labels for x in row} == {-100, 0, 1, 2, 3}


def test_missing_columns_empty_data_and_text_instead_of_tokens(tiny_model_dir):
    recs = ner_recs(10)
    with pytest.raises(DataError, match=r"data.tokens: column 'tokns' is not in data.train .*Did you mean 'tokens'\?"):
        ner_task(tiny_model_dir, recs, data={"tokens": "tokns"})
    with pytest.raises(
        DataError, match=r"data.label: no tag-list column in data.train \(columns: tokens, tagz\).*'tagz'"
    ):
        ner_task(tiny_model_dir, [{"tokens": r["tokens"], "tagz": r["tags"]} for r in recs])
    with pytest.raises(DataError, match=r"data.tokens: column 'tokens' of data.train holds .*not token lists"):
        ner_task(tiny_model_dir, [{"tokens": " ".join(r["tokens"]), "tags": r["tags"]} for r in recs])
    import datasets

    empty = datasets.Dataset.from_dict({"tokens": [], "tags": []})
    with pytest.raises(DataError, match="data.train is empty"):
        ner_task(tiny_model_dir, empty)
    with pytest.raises(DataError, match="data.eval lacks column 'tags'"):
        ner_task(tiny_model_dir, recs, data={"eval": [{"tokens": ["a"], "labelz": ["O"]}], "eval_split": 0})


def test_a_model_that_cannot_tag_tokens_is_refused_before_training(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, CanineTokenizer, ViTConfig

    seq = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(ModelError, match=r"needs a \*ForTokenClassification model object"):
        ner_task(seq, ner_recs(10), tokenizer=tok)
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path
    )
    with pytest.raises(ModelError, match=r"has no TokenClassification head"):
        ner_task(str(tmp_path), ner_recs(10))
    with pytest.raises(ModelError, match="CanineTokenizer is a slow .*needs a fast one"):
        ner_task(tiny_model_dir, ner_recs(10), tokenizer=CanineTokenizer())


def test_byte_level_tokenizers_get_a_space_before_each_word(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator(
        FILL * 20, trainers.BpeTrainer(vocab_size=400, special_tokens=special, initial_alphabet=alphabet)
    )
    tok = RobertaTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    tok.model_max_length = 64
    tok.save_pretrained(tmp_path)
    conf = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    RobertaModel(
        RobertaConfig(vocab_size=len(tok), max_position_embeddings=66, pad_token_id=1, **conf)
    ).save_pretrained(tmp_path)
    task = ner_task(str(tmp_path), ner_recs(10))
    words = task.tokenizer(["the", "film"], is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert words == task.tokenizer(" the film", add_special_tokens=False)["input_ids"]  # as in running text
    with pytest.raises(ModelError, match="needs add_prefix_space=True"):
        ner_task(str(tmp_path), ner_recs(10), tokenizer=tok)


# --------------------------------------------------------------------------------------------- alignment
def test_first_sub_token_carries_the_tag_or_all_do_with_label_all_tokens(tiny_model_dir):
    recs = [{"tokens": ["anna", "smith", "was", "in", "tokyo"], "tags": ["B-PER", "I-PER", "O", "O", "B-LOC"]}] * 4
    first = ner_task(tiny_model_dir, recs, data={"eval_split": 0})
    enc = first.tokenizer(recs[0]["tokens"], is_split_into_words=True)
    word_ids = enc.word_ids()
    assert len(word_ids) > len(recs[0]["tokens"]) + 2  # the tiny vocabulary splits these words
    ids = {n: i for i, n in enumerate(first.label_names)}
    tags = [ids[t] for t in recs[0]["tags"]]
    ex = first.encode(first.train, role="train")
    labels = ex.labels[0]
    assert len(labels) == len(ex.features["input_ids"][0])
    want = []
    for k, w in enumerate(word_ids):
        want.append(-100 if w is None or (k and word_ids[k - 1] == w) else tags[w])
    assert labels == want and labels[0] == labels[-1] == -100
    every = ner_task(tiny_model_dir, recs, data={"eval_split": 0}, label_all_tokens=True)
    all_labels = every.encode(every.train, role="train").labels[0]
    cont = {ids["B-PER"]: ids["I-PER"], ids["I-PER"]: ids["I-PER"], ids["O"]: ids["O"], ids["B-LOC"]: ids["B-LOC"]}
    want_all = [
        -100 if w is None else tags[w] if k == 0 or word_ids[k - 1] != w else cont[tags[w]]
        for k, w in enumerate(word_ids)
    ]
    assert all_labels == want_all
    assert ids["B-LOC"] in [all_labels[k] for k, w in enumerate(word_ids) if w == 4][1:]  # no I-LOC: B-LOC stays
    short = ner_task(tiny_model_dir, recs, data={"eval_split": 0}, max_length=8)
    ex = short.encode(short.train, role="train")
    assert len(ex.features["input_ids"][0]) == 8 and len(ex.labels[0]) == 8 and ex.labels[0][-1] == -100


def test_align_labels_by_word_ids():
    assert align_labels([None, 0, 0, 1, None], [1, 3]) == [-100, 1, -100, 3, -100]
    assert align_labels([None, 0, 0, 1, 1, None], [1, 2], continuation=[0, 2, 2]) == [-100, 1, 2, 2, 2, -100]


def test_collated_batch_pads_labels_and_the_head_computes_the_loss(tiny_model_dir):
    import torch

    task = ner_task(tiny_model_dir, ner_recs(20))
    model = task.build_model()
    assert type(model).__name__ == "BertForTokenClassification" and model.config.num_labels == 4
    assert model.config.id2label == dict(enumerate(task.label_names))
    train, _ = task.build_data()
    batch = task.collator()([train[i] for i in range(4)])
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    inputs = {k: v for k, v in batch.items() if k not in ("num_tokens", "lengths", "idx")}
    loss, out = task.forward(model, inputs)
    keep = inputs["labels"] != -100
    want = torch.nn.functional.cross_entropy(out.logits[keep], inputs["labels"][keep])
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


# --------------------------------------------------------------------------------------------- CoNLL files
CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O
"""


def test_conll_files_skip_docstart_and_take_first_and_last_columns(tmp_path, tiny_model_dir):
    p = tmp_path / "train.conll"
    p.write_text(CONLL)
    got = read_conll(p)
    assert got["tokens"] == [
        ["EU", "rejects", "German", "call", "."],
        ["Peter", "Blackburn"],
        ["BRUSSELS", "1996-08-22"],
    ]
    assert got["tags"] == [["B-ORG", "O", "B-MISC", "O", "O"], ["B-PER", "I-PER"], ["B-LOC", "O"]]
    task = ner_task(tiny_model_dir, str(p), data={"eval": f"{p}[1:]", "eval_split": 0})
    assert task.num_train == 3 and task.num_eval == 2 and task.label_names[0] == "O"
    assert (task.tokens_col, task.tags_col) == ("tokens", "tags")
    u = tmp_path / "ud.conllu"
    u.write_text(
        "# sent_id = 1\n# text = Don't go.\n1-2\tDon't\t_\t_\n1\tDo\tdo\tAUX\t_\t_\t3\taux\t_\t_\n"
        "2\tn't\tnot\tPART\t_\t_\t3\tadvmod\t_\t_\n3\tgo\tgo\tVERB\t_\t_\t0\troot\t_\t_\n4\t.\t.\tPUNCT\t_\t_\t3\tpunct\t_\t_\n"
    )
    assert read_conll(u) == {"tokens": [["Do", "n't", "go", "."]], "tags": [["AUX", "PART", "VERB", "PUNCT"]]}
    pos = ner_task(tiny_model_dir, str(u), task="pos", data={"eval_split": 0})
    assert pos.label_names == ["AUX", "PART", "PUNCT", "VERB"] and pos.scheme == "plain"
    bad = tmp_path / "notes.txt"
    bad.write_text("a b\nc d\nThis is just a sentence.\n")
    with pytest.raises(DataError, match="notes.txt does not look like CoNLL: line 3 has 5 columns"):
        ner_task(tiny_model_dir, str(bad))
    one = tmp_path / "one.iob"
    one.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(DataError, match="line 2 of one.iob has one column"):
        read_conll(one)
    with pytest.raises(DataError, match="does not exist"):
        ner_task(tiny_model_dir, str(tmp_path / "missing.conll"))


# --------------------------------------------------------------------------------------------- predict
def test_split_words_keeps_offsets_and_cuts_punctuation():
    text = "Angela Merkel met the U.S. envoy in Paris, France's capital -- didn't she?"
    words = split_words(text)
    assert [w for w, _, _ in words] == [
        "Angela", "Merkel", "met", "the", "U.S.", "envoy", "in", "Paris", ",", "France", "'s", "capital", "--",
        "did", "n't", "she", "?",
    ]  # fmt: skip
    assert all(text[a:b] == w for w, a, b in words)


class _StubTagger:
    """A stand-in model that tags known inputs as told: {input ids: tag id per position}; anything else is O.
    Its top probability is the same everywhere, so the expected scores are known too."""

    def __init__(self, num_labels: int, known: dict[tuple, list[int]]):
        import torch

        self.num_labels, self.known = num_labels, known
        self.param = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self.param])

    training = False

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, input_ids, attention_mask, **kw):
        import torch

        logits = torch.zeros(*input_ids.shape, self.num_labels)
        logits[..., 0] = 3.0
        for r in range(input_ids.shape[0]):
            ids = tuple(input_ids[r][attention_mask[r].bool()].tolist())
            for pos, tag in enumerate(self.known.get(ids, [])):
                logits[r, pos] = 0.0
                logits[r, pos, tag] = 3.0
        return SimpleNamespace(logits=logits)


def test_predict_merges_spans_with_character_offsets(tiny_model_dir):
    task = ner_task(tiny_model_dir, ner_recs(20))
    text = "anna smith visited paris, then  texas."
    words = [w for w, _, _ in split_words(text)]
    assert words == ["anna", "smith", "visited", "paris", ",", "then", "texas", "."]
    enc = task.tokenizer(words, is_split_into_words=True)
    tag = {n: i for i, n in enumerate(task.label_names)}
    by_word = {0: "B-PER", 1: "I-PER", 3: "B-LOC", 6: "B-LOC"}  # anna smith | paris | texas
    # the model's tag at each word's first sub-token decides; later sub-tokens say I-LOC / B-PER to show they do not
    per_pos, prev = [], None
    for w in enc.word_ids():
        first = w is not None and w != prev
        per_pos.append(tag[by_word.get(w, "O")] if first else tag["B-PER"] if w is not None else 0)
        prev = w
    model = _StubTagger(len(task.label_names), {tuple(enc["input_ids"]): per_pos})
    got = task.predict(model, text)
    assert [(e["entity"], e["text"], e["start"], e["end"]) for e in got] == [
        ("PER", "anna smith", 0, 10),
        ("LOC", "paris", 19, 24),
        ("LOC", "texas", 32, 37),
    ]
    p = np.exp(3.0) / (np.exp(3.0) + len(task.label_names) - 1)
    assert all(e["score"] == pytest.approx(p, rel=1e-5) for e in got)
    many = task.predict(model, [text, "", "the film"], batch_size=2)
    assert len(many) == 3 and many[0] == got and many[1] == [] and many[2] == []


# --------------------------------------------------------------------------------------------- sample data
def test_sample_ner_records_are_seeded_iob2_over_real_sentences():
    from nb_finetune.errors import FinetuneError
    from nb_finetune.sample_data.ner import ner_records

    try:
        recs = ner_records(300, seed=4, download=False)
    except FinetuneError as e:  # the sentences are cached by `make assets`
        pytest.skip(str(e))
    assert recs == ner_records(300, seed=4, download=False) and recs != ner_records(300, seed=5, download=False)
    assert len(recs) == 300 and all(len(r["tokens"]) == len(r["tags"]) for r in recs)
    assert {t for r in recs for t in r["tags"]} == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC"}
    assert detect_scheme(r["tags"] for r in recs) == "IOB2"
    assert 0.1 < sum(not set(r["tags"]) - {"O"} for r in recs) / 300 < 0.2  # the entity-free share, about 15%
    for r in recs:  # words as predict cuts them; every entity is capitalised
        assert [w for w, _, _ in split_words(" ".join(r["tokens"]))] == r["tokens"]
        assert all(r["tokens"][a][0].isupper() for _, a, _ in entities(r["tags"]))


# --------------------------------------------------------------------------------------------- whole runs
def test_finetune_learns_entities_and_reports_every_key(tiny_model_dir, tmp_path):
    from nb_finetune import finetune

    run = finetune(
        {
            "model": tiny_model_dir,
            "task": "ner",
            "data": {"train": ner_recs(256, seed=1), "eval": ner_recs(64, seed=2)},
            "epochs": 6,
            "batch_size": 16,
            "lr": 3e-3,
            "log_every": 2,
            "eval_at_start": True,
            "seed": 0,
            "output_dir": str(tmp_path),
            "name": "ner",
        },
        wait=True,
    )
    assert run.status == "finished", run.error
    assert run.task.name == "token-classification"
    evals = run.history.dropna(subset=["eval_f1"])
    for key in (
        "eval_loss",
        "eval_precision",
        "eval_recall",
        "eval_f1",
        "eval_accuracy",
        "eval_PER_f1",
        "eval_LOC_f1",
    ):
        assert key in evals.columns, key
    first, last = evals.iloc[0], evals.iloc[-1]
    assert first["eval_f1"] < 0.2  # control: the fresh head tags at random
    assert last["eval_f1"] > 0.6 and last["eval_f1"] > first["eval_f1"] + 0.4, (first["eval_f1"], last["eval_f1"])
    losses = run.history["loss"].dropna().to_numpy()
    assert losses[-5:].mean() < 0.3 * losses[:5].mean()
    got = run.predict("the film anna smith was in paris")
    assert {("PER", "anna smith"), ("LOC", "paris")} <= {(e["entity"], e["text"]) for e in got}, got
    again = run.evaluate(ner_recs(64, seed=2))
    assert again["eval_f1"] == pytest.approx(last["eval_f1"]) and again["eval_PER_f1"] == pytest.approx(
        last["eval_PER_f1"]
    )


def test_freezing_all_but_head_trains_only_the_head(tiny_model_dir, tmp_path):
    from transformers import AutoModelForTokenClassification

    from nb_finetune import finetune
    from nb_finetune.core.events import RunStarted

    start = {}

    class Snapshot:
        def on_event(self, e):
            if isinstance(e, RunStarted):
                start["head"] = run_box["run"].model.classifier.weight.detach().cpu().clone()

    run_box = {}
    run = finetune(
        {
            "model": tiny_model_dir,
            "task": "ner",
            "data": {"train": ner_recs(64, seed=1), "eval_split": 0},
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
    run_box["run"] = run
    run.start()
    run.wait()
    assert run.status == "finished", run.error
    base = AutoModelForTokenClassification.from_pretrained(
        tiny_model_dir, num_labels=4, ignore_mismatched_sizes=True
    ).state_dict()
    tuned = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
    body = [k for k in base if not k.startswith("classifier.")]
    assert body and all(tuned[k].equal(base[k]) for k in body)
    assert not tuned["classifier.weight"].equal(start["head"])  # control: the head did train


def test_stop_and_resume_in_a_fresh_process_repeats_an_uninterrupted_run(tiny_model_dir, tmp_path):
    import torch
    from fresh_process import StopAtForward

    from nb_finetune import finetune

    conll = tmp_path / "train.conll"
    conll.write_text(
        "\n\n".join("\n".join(f"{w} {t}" for w, t in zip(r["tokens"], r["tags"])) for r in ner_recs(96, 3))
    )
    cfg = {
        "model": tiny_model_dir,
        "task": "ner",
        "data": {"train": str(conll), "eval_split": 0.25},
        "epochs": 3,
        "batch_size": 8,
        "lr": 1e-3,
        "dropout": 0.1,
        "precision": "fp32",
        "seed": 11,
        "log_every": 1,
        "save_every": None,
        "output_dir": str(tmp_path / "runs"),
    }
    a = finetune(cfg, name="a", wait=True)
    assert a.status == "finished" and a.task.name == "token-classification", (a.status, a.error)
    # b: stopped during the 13th training forward pass, mid-epoch (9 batches per epoch)
    stop = StopAtForward(13)
    b = stop.attach(finetune(cfg, name="b", callbacks=[stop], start=False))
    b.start().wait()
    assert (b.status, b.reason) == ("stopped", "user"), (b.status, b.error)
    runs = tmp_path / "runs"
    assert 12 <= b.step <= 13 and max(losses_by_step(runs / "b")) == b.step
    # b resumed in a fresh process
    env = {
        **os.environ,
        "NB_FT_CFG": json.dumps(cfg),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }  # as run a had it: the same reduction order
    code = """
        import json, os
        from nb_finetune import finetune
        run = finetune(json.loads(os.environ["NB_FT_CFG"]), name="b", resume_from="last", wait=True)
        assert run.status == "finished", run.error
    """
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    la, lb = losses_by_step(runs / "a"), losses_by_step(runs / "b")
    assert len(la) == 27 and sorted(la) == sorted(lb)
    assert [lb[s] for s in sorted(lb)] == [la[s] for s in sorted(la)]  # exactly equal, not approximately
