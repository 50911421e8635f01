"""The task seam: a task defined here, in a test file, trains through `finetune()` with no change to the loop or
the API; `task: auto` picks from the data and says what it picked; keys a task does not use are refused."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from nb_finetune import finetune
from nb_finetune.core.config import FinetuneConfig
from nb_finetune.core.tasks.base import Capabilities, Examples, Task, register, registry, resolve_task
from nb_finetune.errors import ConfigError, DataError


@dataclass
class _Out:
    loss: object
    logits: object


class _BagOfIds:
    """A model that is not from transformers: embeddings, one block, a head."""

    def __new__(cls, vocab: int, hidden: int = 16):
        import torch.nn as nn

        class Bag(nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = nn.Embedding(vocab, hidden)
                self.layers = nn.ModuleList([nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())])
                self.head = nn.Linear(hidden, 1)

            def forward(self, input_ids, labels=None):
                h = self.embed(input_ids)
                for block in self.layers:
                    h = block(h)
                y = self.head(h.mean(1)).squeeze(-1)
                loss = ((y - labels) ** 2).mean() if labels is not None else None
                return _Out(loss, y)

        return Bag()


class _MeanMetric:
    def __init__(self):
        self.err, self.n = 0.0, 0

    def update(self, outputs, batch, host):
        d = (outputs.logits - batch["labels"]).abs().sum()
        self.err += float(d)
        self.n += len(host["idx"])

    def compute(self):
        return {"mae": self.err / max(self.n, 1)}


class _Collate:
    def __call__(self, items):
        import torch

        width = max(len(it["input_ids"]) for it in items)
        ids = torch.tensor([it["input_ids"] + [0] * (width - len(it["input_ids"])) for it in items])
        lengths = [len(it["input_ids"]) for it in items]
        return {
            "input_ids": ids,
            "labels": torch.tensor([float(it["labels"]) for it in items]),
            "lengths": lengths,
            "num_tokens": sum(lengths),
            "idx": [it["idx"] for it in items],
        }


@register
class CountSevens(Task):
    """Toy task: how many 7s are in a list of small integers."""

    name = "test-count-sevens"
    title = "count sevens"
    capabilities = Capabilities(prefix_cache=False, mask_4d=False, throughput_unit="numbers")
    lower_is_better = frozenset({"mae"})

    @classmethod
    def detect(cls, ds, cfg):
        return "a 'numbers' column" if "numbers" in getattr(ds, "column_names", []) else None

    def preflight(self):
        from nb_finetune.core import data as D

        ds = self._train_source or D.load_source(self.cfg.data.train)
        self.train, self.eval = ds.select(range(0, 160)), ds.select(range(160, len(ds)))
        self.model_id = "bag-of-ids"

    def build_model(self, *, meta=False):
        return _BagOfIds(vocab=10)

    def encode(self, ds, *, role="eval"):
        nums = [list(map(int, x)) for x in ds["numbers"]]
        return Examples({"input_ids": nums}, [float(x.count(7)) for x in nums])

    def collator(self):
        return _Collate()

    def metric(self, data):
        return _MeanMetric()

    def predict(self, model, numbers):
        import torch

        with torch.inference_mode():
            return [float(v) for v in model(torch.tensor(numbers)).logits]


def _numbers(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return {"numbers": [rng.integers(0, 10, size=int(rng.integers(4, 12))).tolist() for _ in range(n)]}


def test_a_task_defined_in_a_test_trains_through_finetune(tmp_path):
    events = []

    class Rec:
        def on_event(self, e):
            events.append(e)

    run = finetune(
        {"data": {"train": _numbers()}, "model": "unused", "epochs": 6, "batch_size": 16, "lr": 3e-2},
        task="auto",
        name="toy",
        output_dir=str(tmp_path),
        eval_every="epoch",
        log_every=2,
        wait=True,
        callbacks=[Rec()],
    )
    assert run.status == "finished", run.error
    assert run.task.name == "test-count-sevens" and run.task.picked == "a 'numbers' column"
    started = next(e for e in events if e.kind == "RunStarted")
    assert started.task == "test-count-sevens" and started.throughput_unit == "numbers"
    assert any("auto: a 'numbers' column" in line for line in started.task_detail)
    evals = [e.metrics for e in events if e.kind == "EvalEnded"]
    # control case: the first evaluation is far from the last; the task's own metric drives "best" (lower is better)
    assert evals[-1]["eval_mae"] < 0.7 * evals[0]["eval_mae"], evals
    losses = run.history["loss"].dropna().tolist()
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert len(run.predict([[7, 7, 7, 1], [1, 2, 3, 4]])) == 2
    assert run.best_checkpoint is not None


def test_auto_is_ambiguous_when_two_tasks_fit():
    @register
    class AlsoNumbers(CountSevens):
        name = "test-also-numbers"

    try:
        with pytest.raises(DataError, match="fits several tasks: .*test-count-sevens.*test-also-numbers"):
            resolve_task(FinetuneConfig.from_dict({"data": {"train": _numbers(10)}}))
    finally:
        from nb_finetune.core.tasks import base

        base._REGISTRY.pop("test-also-numbers")
        base._ALIASES.pop("test-also-numbers")


def test_auto_names_the_task_values_when_nothing_fits():
    with pytest.raises(DataError, match="name it with `task:` .*text-classification"):
        resolve_task(FinetuneConfig.from_dict({"data": {"train": {"a": ["some text", "more text"]}}}))


def test_a_key_the_task_does_not_use_is_refused_naming_the_tasks_that_do():
    cfg = FinetuneConfig.from_dict({"task": "text-classification", "doc_stride": 64, "data": {"train": _numbers(4)}})
    with pytest.raises(ConfigError, match="`doc_stride` is not used by task text-classification; it is for: quest"):
        resolve_task(cfg)
    # control: the default value (not set by the user) is no mistake
    assert resolve_task(FinetuneConfig.from_dict({"task": "text-classification"})).name == "text-classification"


def test_unknown_task_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'text-classification'"):
        FinetuneConfig.from_dict({"task": "text-clasification"})
    assert "text-classification" in registry()


def test_a_task_without_predict_says_how_to_add_one():
    """The base class's default; control: CountSevens defines its own and returns predictions (test above)."""
    from nb_finetune.errors import FinetuneError

    class NoPredict(CountSevens):
        name = "test-no-predict"
        predict = Task.predict

    task = NoPredict.__new__(NoPredict)
    with pytest.raises(FinetuneError, match=r"'test-no-predict' has no predict\(\): define `predict"):
        task.predict(None, [1, 2])
