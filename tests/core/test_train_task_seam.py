"""The loop knows its task only through the Task interface: collator, forward, streaming metric, best direction,
capabilities (prefix cache, length grouping, 4D mask, throughput unit), name / title / describe in RunStarted.

These drive `train()` directly with a Job built from a task instance, as the API does on its worker thread."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from nb_finetune.core.config import load_config  # noqa: E402
from nb_finetune.core.data import epoch_batches  # noqa: E402
from nb_finetune.core.events import CheckpointSaved, Controls, EvalEnded, RunStarted, StepEnded  # noqa: E402
from nb_finetune.core.runs import RunDir  # noqa: E402
from nb_finetune.core.tasks.base import HOST_KEYS, Capabilities  # noqa: E402
from nb_finetune.core.tasks.text_classification import TextClassification  # noqa: E402
from nb_finetune.core.train import Job, evaluate, train  # noqa: E402


class Recorder:
    def __init__(self):
        self.events = []

    def on_event(self, e):
        self.events.append(e)

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


def make_job(task_cls, tiny_config, **over):
    cfg = load_config({**tiny_config, **over})
    task = task_cls(cfg)
    task.preflight()
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    train_data, eval_data = task.build_data()
    rd = RunDir.create(cfg.output_dir, cfg.name)
    return Job(cfg, task, model, train_data, eval_data, task.layer_map(model), rd)


class Plain(TextClassification):
    """A task that allows no prefix cache, no length grouping and no 4D mask, counts examples, and records what
    its forward receives."""

    name = "test-plain"
    title = "plain test task"
    capabilities = Capabilities(prefix_cache=False, length_grouping=False, throughput_unit="examples", mask_4d=False)

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        self.seen = []  # per training micro-batch: (real lengths, attention mask shape)

    def forward(self, model, batch):
        if model.training:
            mask = batch.get("attention_mask")
            if mask is None:
                lengths = [batch["input_ids"].shape[1]] * len(batch["labels"])
            else:
                # the 4D mask is additive (0 where a key is attended), the 2D one 1 / 0
                lengths = ((mask[:, 0, 0, :] == 0) if mask.dim() == 4 else mask).sum(-1).tolist()
            self.seen.append((lengths, tuple(mask.shape) if mask is not None else None))
        return super().forward(model, batch)


def _batch_lengths(job, grouped: bool, epoch: int = 0):
    plan = epoch_batches(job.train_data.lengths, job.config.batch_size, job.config.seed, epoch, grouped)
    return [sorted(job.train_data.lengths[b].tolist()) for b in plan]


def test_run_started_and_eval_carry_the_task(tiny_config):
    job = make_job(TextClassification, tiny_config, max_steps=3, eval_every=3, save_every=None)
    rec = Recorder()
    result = train(job, Controls(), [rec])
    assert result.state == "finished" and result.step == 3
    (started,) = rec.of(RunStarted)
    assert (started.task, started.task_title, started.throughput_unit) == (
        "text-classification",
        "text classification",
        "tokens",
    )
    assert started.task_detail == job.task.describe() and started.task_detail[0] == "task: text-classification"
    (ev,) = rec.of(EvalEnded)
    assert set(ev.metrics) == {"eval_loss", "eval_accuracy", "eval_f1"}
    conf = ev.extras["confusion"]
    assert conf["kind"] == "matrix" and conf["rows"] == job.task.label_names
    assert sum(map(sum, conf["values"])) == len(job.eval_data)  # every eval example counted once
    assert result.best_metric == ev.metrics["eval_loss"]  # metric_for_best defaults to eval_loss


def test_capabilities_turn_off_the_cache_length_grouping_and_the_4d_mask(tiny_config):
    job = make_job(Plain, tiny_config, epochs=2, freeze="bottom 1", cache_frozen="on", save_every=None)
    rec = Recorder()
    assert train(job, Controls(), [rec]).state == "finished"
    (started,) = rec.of(RunStarted)
    assert started.cache.startswith("off (task test-plain") and started.throughput_unit == "examples"
    assert started.task == "test-plain" and started.task_title == "plain test task"
    n = len(_batch_lengths(job, False))
    seen = [sorted(lengths) for lengths, _ in job.task.seen]
    assert seen == _batch_lengths(job, False, 0) + _batch_lengths(job, False, 1)  # the ungrouped plan, in order
    assert seen[:n] != _batch_lengths(job, True, 0)
    assert all(shape is None or len(shape) == 2 for _, shape in job.task.seen)  # 2D masks only
    assert len(rec.of(StepEnded)) == 2 * n and rec.of(StepEnded)[-1].samples == 2 * len(job.train_data)


def test_default_capabilities_group_by_length_and_use_a_4d_mask(tiny_config):
    class Watching(Plain):
        capabilities = Capabilities()

    job = make_job(Watching, tiny_config, max_steps=4, save_every=None)
    assert train(job, Controls(), [Recorder()]).state == "finished"
    shapes = [shape for _, shape in job.task.seen]
    assert [sorted(lengths) for lengths, _ in job.task.seen] == _batch_lengths(job, True)[:4]
    assert any(s is not None and len(s) == 4 for s in shapes)  # padded batches got the probed 4D mask


def test_best_checkpoint_follows_the_tasks_direction(tiny_config):
    class LowerAccuracy(TextClassification):
        name = "test-lower-accuracy"
        lower_is_better = frozenset({"accuracy"})

    job = make_job(
        LowerAccuracy, tiny_config, max_steps=8, lr=3e-3, eval_every=2, save_every=2, metric_for_best="accuracy"
    )
    rec = Recorder()
    result = train(job, Controls(), [rec])
    evals = {e.step: e.metrics["eval_accuracy"] for e in rec.of(EvalEnded)}
    low = min(evals.values())
    first_low = min(s for s, v in evals.items() if v == low)
    assert result.best_metric == low
    assert result.best_checkpoint.endswith(f"step-{first_low:06d}")
    assert [e.is_best for e in rec.of(EvalEnded)][0] and len(rec.of(CheckpointSaved)) == 4


def test_evaluate_streams_batches_through_the_metric(tiny_config):
    job = make_job(TextClassification, tiny_config)
    calls = []

    class Spy:
        def update(self, outputs, batch, host):
            calls.append((sorted(host), batch["attention_mask"].dim(), len(host["idx"]), "labels" in batch))
            self.n = getattr(self, "n", 0) + len(host["idx"])

        def compute(self):
            return {"seen": float(self.n)}

    job.task.metric = lambda data: Spy()
    metrics, extras = evaluate(job.model, job.eval_data, job.task, job.config, torch.device("cpu"), mask_4d=True)
    bs = 2 * job.config.batch_size
    assert len(calls) == -(-len(job.eval_data) // bs)
    assert all(c[0] == ["idx", "lengths"] and c[1] == 2 and c[3] for c in calls)  # host keys; the 2D mask; labels
    assert metrics["eval_seen"] == len(job.eval_data) and extras == {}
    # the loss is the example-weighted mean of the model's own loss
    whole = job.task.collator()([job.eval_data[i] for i in range(len(job.eval_data))])
    with torch.inference_mode():
        ref = job.model(**{k: v for k, v in whole.items() if k not in HOST_KEYS}).loss
    assert metrics["eval_loss"] == pytest.approx(float(ref), rel=1e-4)
