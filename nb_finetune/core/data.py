"""Load examples from wherever the user has them, check columns and labels, tokenize, batch by length.

Sources: a hub dataset with split slicing (`imdb:train[:2000]`, `glue:sst2:train`), a local
csv/tsv/json/jsonl/parquet file (optionally sliced, `reviews.csv[:500]`), a directory saved with
`Dataset.save_to_disk`, a pandas DataFrame, a `datasets.Dataset`, a list of dicts or a dict of lists.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .tasks.base import HOST_KEYS, Examples

__all__ = [
    "load_source",
    "detect_columns",
    "infer_labels",
    "Examples",
    "TokenizedData",
    "HOST_KEYS",
    "tokenize",
    "epoch_batches",
    "Collator",
    "holdout_split",
]

_SLICE = re.compile(r"^(?P<base>.*?)(?P<slice>\[[^\[\]]*\])?$")
_FILE_KINDS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
CONLL_SUFFIXES = (".conll", ".conll03", ".conllu", ".iob", ".bio", ".txt")
TEXT_CANDIDATES = ("text", "sentence", "review", "content", "document", "input", "prompt", "question", "tweet")
LABEL_CANDIDATES = ("label", "labels", "target", "class", "category", "sentiment", "rating", "score", "tags", "y")


def apply_slice(n: int, spec: str | None, what: str) -> range:
    """`[:2000]`, `[100:]`, `[:10%]` over n rows."""
    if not spec:
        return range(n)
    inner = spec[1:-1].strip()
    m = re.fullmatch(r"(-?\d+%?)?\s*:\s*(-?\d+%?)?", inner)
    if not m:
        raise DataError(f"{what}: slice {spec!r} is not understood; use [:2000], [100:500] or [:10%]")

    def pos(s, default):
        if s is None:
            return default
        v = int(s[:-1]) * n // 100 if s.endswith("%") else int(s)
        return max(0, min(n, v + n if v < 0 else v))

    rows = range(pos(m.group(1), 0), pos(m.group(2), n))
    if not rows:  # an empty slice would surface later as "cannot tell the task" or an IndexError
        raise DataError(f"{what}: slice {spec} leaves no rows: the source has {n} rows (use e.g. [:{min(n, 2000)}])")
    return rows


def load_source(src: Any, *, role: str = "train", trust_remote_code: bool = False):
    """Turn any supported source into a `datasets.Dataset`. Errors name the source and what to do."""
    import datasets
    import pandas as pd

    what = f"data.{role}"
    if isinstance(src, datasets.Dataset):
        return src
    if isinstance(src, datasets.DatasetDict):
        raise DataError(
            f"{what} is a DatasetDict with splits {list(src)}: pass one split, e.g. {{{{ds['train']}}}} "
            "assigned to a variable first"
        )
    if isinstance(src, pd.DataFrame):
        return _arrow(datasets.Dataset.from_pandas, src.reset_index(drop=True), what=what, preserve_index=False)
    from .tasks.media import media_source  # lazy: (X, y) arrays, a folder with one sub-folder per class

    if (media := media_source(src, what)) is not None:
        return media
    if isinstance(src, list):
        if not src or not isinstance(src[0], dict):
            raise DataError(f"{what}: a list must hold dicts like {{'text': ..., 'label': ...}}")
        return _arrow(datasets.Dataset.from_list, src, what=what)
    if isinstance(src, dict):
        return _arrow(datasets.Dataset.from_dict, src, what=what)
    if not isinstance(src, (str, Path)):
        raise DataError(
            f"{what}: cannot use a {type(src).__name__}; pass a file path, a hub dataset name, "
            "a pandas DataFrame or a datasets.Dataset"
        )
    text = str(src).strip()
    m = _SLICE.match(text)
    base, slc = m.group("base"), m.group("slice")
    path = Path(base).expanduser()
    if path.exists():
        if path.is_dir():
            try:
                ds = datasets.load_from_disk(str(path))
            except Exception as e:  # noqa: BLE001 - any failure here is "not a saved dataset"
                raise DataError(f"{what}: directory {base!r} is not a dataset saved with save_to_disk ({e})") from None
            if isinstance(ds, datasets.DatasetDict):
                raise DataError(f"{what}: {base!r} holds splits {list(ds)}; name one as {base}/<split>")
        elif path.suffix.lower() in CONLL_SUFFIXES:  # whitespace columns, a blank line between sentences
            from .tasks.token_classification import read_conll  # lazy: that task imports this module

            ds = datasets.Dataset.from_dict(read_conll(path, what=what))
        else:
            ds = datasets.Dataset.from_pandas(_read_file(path, what), preserve_index=False)
        rows = apply_slice(len(ds), slc, what)
        return ds.select(rows) if len(rows) != len(ds) else ds
    parent = path.parent
    if (parent / "dataset_dict.json").is_file():  # `saved_dir/<split>` naming a split the saved dataset lacks
        splits = sorted(p.name for p in parent.iterdir() if (p / "dataset_info.json").is_file())
        raise DataError(f"{what}: {str(parent)!r} has no split {path.name!r}; its splits are {', '.join(splits)}")
    if Path(base).suffix.lower() in (*_FILE_KINDS, *CONLL_SUFFIXES) or "/" in base and Path(base).parent.exists():
        raise DataError(f"{what}: file {base!r} does not exist (working directory: {Path.cwd()})")
    return _load_hub(base, slc, what, trust_remote_code)


def _arrow(build, src, *, what: str, **kw):
    """Build a Dataset; rows whose columns change type (a dict here, a list there) are a DataError, not pyarrow's."""
    try:
        return build(src, **kw)
    except (TypeError, ValueError) as e:  # pyarrow's ArrowInvalid / ArrowTypeError subclass these
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(
            f"{what}: the rows do not share one shape ({first}); make each column hold one type in every row"
        ) from None


def _read_file(path: Path, what: str):
    import pandas as pd

    kind = _FILE_KINDS.get(path.suffix.lower())
    try:
        if kind == "csv":
            return pd.read_csv(path)
        if kind == "tsv":
            return pd.read_csv(path, sep="\t")
        if kind == "json":
            try:
                return pd.read_json(path)
            except ValueError:
                return pd.read_json(path, lines=True)
        if kind == "jsonl":
            return pd.read_json(path, lines=True)
        if kind == "parquet":
            return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{what}: could not read {str(path)!r} as {kind}: {e}") from None
    raise DataError(f"{what}: {str(path)!r} has an unsupported extension; use .csv, .tsv, .json, .jsonl or .parquet")


def _load_hub(base: str, slc: str | None, what: str, trust_remote_code: bool):
    import datasets

    parts = base.split(":")
    if len(parts) == 1:
        name, config, split = parts[0], None, "train"
    elif len(parts) == 2:
        name, config, split = parts[0], None, parts[1]
    elif len(parts) == 3:
        name, config, split = parts
    else:
        raise DataError(f"{what}: {base!r} is not understood; use name:split[slice] or name:config:split[slice]")
    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        return datasets.load_dataset(name, config, split=f"{split}{slc or ''}", **kwargs)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; all are "could not load"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"{what}: could not load {base!r}: no local file by that name, and loading it as a Hugging Face "
            f"Hub dataset failed ({type(e).__name__}: {first[:300]}). Check the name and split, or pass a local "
            "file path or a DataFrame as {{df}}."
        ) from None


def suggest(name: str, columns: list[str]) -> str:
    """' Did you mean ...?' for the closest column name, or ''."""
    close = difflib.get_close_matches(name, columns, n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def detect_columns(
    ds,
    text: str | None,
    label: str | None,
    text_pair: str | None = None,
    *,
    role: str = "train",
    require_label: bool = True,
) -> tuple[str, str | None, str | None]:
    """Check or auto-detect the text / label / text-pair columns of `ds`."""
    cols = list(ds.column_names)
    shown = ", ".join(cols)
    for key, col in (("text", text), ("label", label), ("text_pair", text_pair)):
        if col is not None and col not in cols:
            raise DataError(
                f"data.{key}: column '{col}' is not in data.{role} (columns: {shown}).{suggest(col, cols)}"
            )
    if label is None and require_label:
        lower = {c.lower(): c for c in cols}
        label = next((lower[c] for c in LABEL_CANDIDATES if c in lower), None)
        if label is None:
            raise DataError(
                f"data.label: no label column found in data.{role} (columns: {shown}); "
                "name it with `label: <column>` under data:"
            )
    if text is None:
        strings = [c for c in cols if c not in (label, text_pair) and _is_string_col(ds, c)]
        lower = {c.lower(): c for c in strings}
        text = next((lower[c] for c in TEXT_CANDIDATES if c in lower), None)
        if text is None and len(strings) == 1:
            text = strings[0]
        if text is None:
            which = f"string columns: {', '.join(strings)}" if strings else f"no string columns; columns: {shown}"
            raise DataError(
                f"data.text: cannot tell which column holds the text in data.{role} ({which}); "
                "name it with `text: <column>` under data:"
            )
    if not _is_string_col(ds, text):
        raise DataError(
            f"data.text: column '{text}' of data.{role} does not hold text "
            f"(type {ds.features[text]}); name the text column with `text: <column>`"
        )
    return text, label, text_pair


def _is_string_col(ds, col) -> bool:
    f = ds.features.get(col)
    return getattr(f, "dtype", None) in ("string", "large_string")


def infer_labels(train, eval_, label_col: str, names: list[str] | None) -> tuple[list[str], dict[Any, int]]:
    """Label names in index order and a mapping raw value -> index. Raises DataError on mismatches."""
    import datasets

    feat = train.features[label_col]
    if isinstance(feat, datasets.ClassLabel):
        found = list(feat.names)
        mapping = {i: i for i in range(len(found))}
        mapping.update({n: i for i, n in enumerate(found)})
        if names and len(names) != len(found):
            raise DataError(
                f"labels: {len(names)} names given but data.train's label column has {len(found)} classes ({found})"
            )
        return list(names or found), mapping
    values = train[label_col]
    ev_values = eval_[label_col] if eval_ is not None and label_col in eval_.column_names else []
    if any(v is None for v in values):
        raise DataError(f"data.label: column '{label_col}' of data.train has empty values; drop those rows first")
    sample = values[0]
    if isinstance(sample, float) and any(float(v) != int(v) for v in values[:1000] if v == v):
        raise DataError(
            f"data.label: column '{label_col}' holds non-integer numbers (e.g. {sample}); "
            "to predict the number, set `task: regression`; to classify, bin it into classes"
        )
    if isinstance(sample, bool) or isinstance(sample, (int, float, np.integer)):
        ints = sorted({int(v) for v in values})
        if ints[0] < 0:
            raise DataError(f"data.label: integer labels must be 0..K-1, found {ints[0]}")
        k = max(ints[-1], max((int(v) for v in ev_values), default=0)) + 1
        if names:
            if len(names) < k:
                raise DataError(f"labels: {len(names)} names given but the data has label ids up to {k - 1}")
            k = len(names)
        mapping = {i: i for i in range(k)}
        mapping.update({float(i): i for i in range(k)})
        return list(names or [str(i) for i in range(k)]), mapping
    found = sorted({str(v) for v in values})
    if names:
        unknown = sorted(set(found) - set(map(str, names)))
        if unknown:
            raise DataError(f"labels: data.train has labels {unknown} that are not in labels: {names}")
        found = [str(n) for n in names]
    missing = sorted({str(v) for v in ev_values} - set(found))
    if missing:
        raise DataError(f"data.eval has labels {missing[:10]} that never occur in data.train ({found[:10]})")
    if len(found) < 2:
        raise DataError(
            f"data.label: column '{label_col}' has a single class {found}; classification needs two or more"
        )
    return found, {n: i for i, n in enumerate(found)}


def holdout_split(ds, fraction: float, seed: int):
    """Seeded split of `ds` into (train, held_out)."""
    n = len(ds)
    n_eval = max(1, int(round(n * fraction)))
    if n - n_eval < 1:
        raise DataError(f"data.eval_split: {fraction} of {n} examples leaves nothing to train on")
    perm = np.random.default_rng(seed).permutation(n)
    return ds.select(np.sort(perm[n_eval:])), ds.select(np.sort(perm[:n_eval]))


TokenizedData = Examples  # the name the text tasks grew up with


def tokenize(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, labels=None) -> TokenizedData:
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    keep = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return Examples({k: list(enc[k]) for k in keep}, labels)


def epoch_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool, shuffle: bool = True
) -> list[np.ndarray]:
    """Deterministic batch plan for one epoch; every example appears exactly once.

    With `group_by_length`, examples are shuffled, cut into mega-batches of 50 batches, sorted by length
    inside each (little padding, still random), and the batch order is shuffled with the longest batch
    first, so an out-of-memory error shows on the first step rather than late in the epoch.
    """
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    idx = rng.permutation(n) if shuffle else np.arange(n)
    if not group_by_length:
        return [idx[i : i + batch_size] for i in range(0, n, batch_size)]
    mega = batch_size * 50
    batches = []
    for s in range(0, n, mega):
        chunk = idx[s : s + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    if not shuffle:
        return batches
    longest = int(np.argmax([lengths[b].max() for b in batches]))
    rest = [b for i, b in enumerate(batches) if i != longest]
    order = rng.permutation(len(rest))
    return [batches[longest]] + [rest[i] for i in order]


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int) -> int:
    return math.ceil(math.ceil(n_examples / batch_size) / grad_accum)


LABEL_KINDS = ("class", "float", "multi_hot", "tokens")


class Collator:
    """Pads a list of examples to the longest in the batch (dynamic padding).

    `label_kind`: class (one int per example), float (one number: regression), multi_hot (a fixed-width list of
    0/1: multi-label), tokens (one id per token, padded with -100 so the loss ignores the padding). Features that
    are lists are padded (`input_ids` with the pad id, the rest with 0); scalar features (`start_positions`)
    become one long tensor.
    """

    def __init__(self, pad_token_id: int, label_kind: str = "class"):
        if label_kind not in LABEL_KINDS:
            raise ValueError(f"label_kind {label_kind!r}; one of {LABEL_KINDS}")
        self.pad_token_id = pad_token_id
        self.label_kind = label_kind

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(it["input_ids"]) for it in items)
        out: dict[str, Any] = {}
        for key in items[0]:
            if key == "idx":
                continue
            if key == "labels":
                out["labels"] = self._labels([it["labels"] for it in items], longest)
                continue
            if not isinstance(items[0][key], (list, tuple, np.ndarray)):
                out[key] = torch.tensor([it[key] for it in items], dtype=torch.long)
                continue
            pad = self.pad_token_id if key == "input_ids" else 0
            out[key] = torch.tensor(
                [list(it[key]) + [pad] * (longest - len(it[key])) for it in items], dtype=torch.long
            )
        # host-side bookkeeping (no device read needed): example ids and real lengths
        out["lengths"] = [len(it["input_ids"]) for it in items]
        out["num_tokens"] = sum(out["lengths"])
        if "idx" in items[0]:
            out["idx"] = [it["idx"] for it in items]
        return out

    def _labels(self, values: list, longest: int):
        import torch

        if self.label_kind == "class":
            return torch.tensor(values, dtype=torch.long)
        if self.label_kind == "float":
            return torch.tensor(values, dtype=torch.float32)
        if self.label_kind == "multi_hot":
            return torch.tensor(values, dtype=torch.float32)
        return torch.tensor([list(v) + [-100] * (longest - len(v)) for v in values], dtype=torch.long)
