"""Holes a new user found, beyond the catalogue's refusals: what must keep working next to each refusal."""

from __future__ import annotations

import types

import pytest

from nb_finetune import finetune
from nb_finetune.core.config import FinetuneConfig
from nb_finetune.errors import ConfigError, ModelError


def test_a_subclass_of_a_head_class_is_accepted_and_trains(tiny_config, tiny_model_dir):
    """A user's wrapper overriding `forward` is judged by what it is (its MRO), not its name.
    Control: a bare BertModel (no classification head) is still refused."""
    from transformers import BertForSequenceClassification, BertModel

    calls = []

    class MyWrapper(BertForSequenceClassification):
        def forward(self, **kw):
            calls.append(1)
            return super().forward(**kw)

    model = MyWrapper.from_pretrained(tiny_model_dir)
    run = finetune({**tiny_config, "model": model, "max_steps": 2, "device": "cpu"}, wait=True)
    assert (run.status, run.step) == ("finished", 2) and calls
    with pytest.raises(ModelError, match="ForSequenceClassification"):
        finetune({**tiny_config, "model": BertModel.from_pretrained(tiny_model_dir)}, dry_run=True)


def test_placeholders_resolve_plain_attributes_only():
    """`{{ns.attr}}` (data attributes, module attributes) resolves; a property or a dunder never does.
    Control: the same object's property is refused, so the lookup is what differs."""
    holder = types.SimpleNamespace(name="my-model")

    class WithProp:
        value = "plain"

        @property
        def prop(self):
            raise AssertionError("a placeholder ran code")

    cfg = FinetuneConfig.from_cell("model: {{h.name}}\ntokenizer: {{w.value}}", {"h": holder, "w": WithProp()})
    assert (cfg.model, cfg.tokenizer) == ("my-model", "plain")
    with pytest.raises(ConfigError, match="property"):
        FinetuneConfig.from_cell("model: {{w.prop}}", {"w": WithProp()})
    with pytest.raises(ConfigError, match="dunder"):
        FinetuneConfig.from_cell("model: {{__builtins__}}", {"__builtins__": {}})


def test_device_auto_and_cpu_are_accepted_and_reported(tiny_config):
    """`device: cpu` trains on the CPU and the dry run names it; control: `cuda:7` is refused (catalogue)."""
    report = finetune({**tiny_config, "device": "cpu"}, dry_run=True)
    assert report.device.startswith("CPU")
    assert FinetuneConfig.from_dict({"device": "CUDA:1"}).device == "cuda:1"


def test_warmup_within_the_run_and_fractions_pass(tiny_config):
    """Control for the warmup refusal: warmup equal to the planned steps, and any fraction, are fine."""
    finetune({**tiny_config, "max_steps": 5, "warmup": 5}, dry_run=True)
    finetune({**tiny_config, "max_steps": 5, "warmup": 0.9}, dry_run=True)


def test_freeze_all_with_gradual_unfreezing_is_allowed(tiny_config):
    """`freeze: all` is refused alone (catalogue) but is a valid start for gradual unfreezing."""
    report = finetune({**tiny_config, "freeze": "all", "unfreeze_every": 2}, dry_run=True)
    assert report.params_trainable == 0


def test_named_task_metric_passes(tiny_config):
    """Control for the metric-name refusal: a metric the task reports is accepted."""
    finetune({**tiny_config, "eval_every": 2, "early_stopping": {"metric": "eval_f1"}}, dry_run=True)


def test_declared_metric_names_are_what_the_metrics_compute():
    """`metric_keys` (checked against metric_for_best / early_stopping.metric in pre-flight) are the keys the
    task's streaming metric really returns. Control: a metric adding or renaming a key fails here."""
    from nb_finetune.core.tasks.multi_label import MultiLabelClassification, MultiLabelMetric
    from nb_finetune.core.tasks.regression import Regression, RegressionMetric
    from nb_finetune.core.tasks.text_classification import ClassificationMetric, TextClassification
    from nb_finetune.core.tasks.token_classification import EntityMetric, TokenClassification

    assert set(ClassificationMetric(["a", "b"]).compute()) == set(TextClassification.metric_keys)
    assert set(RegressionMetric().compute()) == set(Regression.metric_keys)
    assert set(MultiLabelMetric(["a", "b"]).compute()) == set(MultiLabelClassification.metric_keys)
    ner = set(EntityMetric(["O", "B-PER", "I-PER"]).compute())
    assert ner == set(TokenClassification.metric_keys) | {"PER_f1"}
