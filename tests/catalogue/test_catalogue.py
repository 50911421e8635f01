"""The catalogue (catalogue_rows.py) as one parametrized test: every row's error class, key words, length and the
state left on disk. Control case: a row whose act does not raise, or raises another class, fails here."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
from catalogue_rows import ROWS, no_run_dir, record_message, recorded_messages
from conftest import build_tiny_model, tiny_bert, tiny_llama

from nb_finetune.errors import FinetuneError

ROOT = Path(__file__).resolve().parents[2]
MAX_CHARS = 600  # one screen: a few lines of at most a couple of hundred characters
RECORD = os.environ.get("NB_FT_RECORD_MESSAGES") == "1"  # rewrite messages.json from this run's messages


class Ctx:
    """What a row's act gets: the tiny model, a 192-row DataFrame, a temporary directory."""

    def __init__(self, tmp: Path, model_dir: str, df, mp):
        self.tmp, self.model_dir, self.df, self.ns, self.mp = tmp, model_dir, df, {}, mp

    def config(self, **kw) -> dict:
        cfg = {
            "name": "cat",
            "model": self.model_dir,
            "data": {"train": self.df},
            "max_steps": 2,
            "batch_size": 16,
            "output_dir": str(self.tmp / "runs"),
        }
        cfg.update(kw)
        return cfg

    def file(self, name: str, text: str = "x") -> str:
        p = self.tmp / name
        p.write_text(text)
        return str(p)

    def csv(self) -> str:
        p = self.tmp / "train.csv"
        self.df.to_csv(p, index=False)
        return str(p)

    def dsdict(self):
        import datasets

        return datasets.DatasetDict({"train": datasets.Dataset.from_pandas(self.df, preserve_index=False)})

    def saved_splits(self) -> str:
        import datasets

        d = self.tmp / "saved"

        ds = datasets.Dataset.from_pandas(self.df, preserve_index=False)
        datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(d))
        return str(d)

    def media(self, ext: str) -> str:
        """A folder of class folders holding files that are not really images / audio."""
        d = self.tmp / f"media-{ext}"
        for c in ("cat", "dog"):
            (d / c).mkdir(parents=True, exist_ok=True)
            for i in range(3):
                (d / c / f"{i}.{ext}").write_bytes(b"not really")
        return str(d)

    def with_empty_label(self):
        df = self.df.copy()
        df.loc[3, "label"] = None
        return {"train": df}

    def remote_code_dir(self) -> str:
        d = self.tmp / "remote-code"
        d.mkdir(exist_ok=True)
        cfg = {"model_type": "my-own-arch", "auto_map": {"AutoConfig": "configuration_mine.MyConfig"}}
        (d / "config.json").write_text(json.dumps(cfg))
        return str(d)

    def nan_at(self, steps: set[int]) -> None:
        from nb_finetune.core.tasks.text_classification import TextClassification

        real, calls = TextClassification.forward, [0]

        def forward(task, model, batch):
            loss, out = real(task, model, batch)
            if model.training:
                calls[0] += 1
                loss = loss * float("nan") if calls[0] in steps else loss
            return loss, out

        self.mp.setattr(TextClassification, "forward", forward)

    def disk_full(self) -> None:
        import errno

        import safetensors.torch as st

        def save_file(*a, **kw):
            raise OSError(errno.ENOSPC, "No space left on device")

        self.mp.setattr(st, "save_file", save_file)

    def out_of_memory(self) -> None:
        import torch

        from nb_finetune.core.tasks.text_classification import TextClassification

        def forward(task, model, batch):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        self.mp.setattr(TextClassification, "forward", forward)

    def one_block_model(self) -> str:
        return build_tiny_model(self.tmp / "one-block", num_layers=1)

    def resume_damaged(self):
        from nb_finetune import finetune

        run = finetune(self.config(max_steps=1), wait=True)
        f = run.checkpoints[-1] / "model.safetensors"
        data = bytearray(f.read_bytes())
        data[-5] ^= 0xFF
        f.write_bytes(bytes(data))
        return finetune(self.config(resume_from="last", max_steps=2))

    def tiny_llama(self):
        return tiny_llama(1)

    def tiny_bert(self):
        return tiny_bert(1)


@pytest.fixture()
def ctx(tmp_path, tiny_model_dir, tiny_df, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return Ctx(tmp_path, tiny_model_dir, tiny_df, monkeypatch)


def test_catalogue_has_sixty_rows_over_every_area():
    assert len(ROWS) >= 60
    areas = {r.area.split(":")[0] for r in ROWS}
    assert {"config", "data", "model", "runtime", "environment", "security", "task", "fault"} <= areas
    from nb_finetune.core.tasks.base import registry

    # the built-in tasks (a task another test registers, e.g. in test_seam.py, is no product task)
    builtin = {n for n, cls in registry().items() if cls.__module__.startswith("nb_finetune.")}
    covered = {r.area.split(": ")[1] for r in ROWS if r.area.startswith("task: ")} | {"text-classification"}
    assert builtin <= covered, f"tasks without their own rows: {builtin - covered}"


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_row(row, ctx):
    if "no_gpu" in row.marks:
        import torch

        if torch.cuda.is_available():
            pytest.skip("the row is about a machine without a GPU")
    with pytest.raises(FinetuneError) as e:
        row.act(ctx)
    err = e.value
    assert type(err).__name__ == row.error, f"{type(err).__name__}: {err}"
    msg = str(err)
    missing = [w for w in row.words if w not in msg]
    assert not missing, f"message lacks {missing}: {msg}"
    assert len(msg.splitlines()) <= row.max_lines and len(msg) <= MAX_CHARS, msg
    assert "Traceback" not in msg
    (row.check or no_run_dir)(ctx)
    shown = as_shown(msg, ctx)
    if RECORD:
        record_message(row.id, shown)
    else:
        recorded = recorded_messages().get(row.id)
        if row.varies and recorded is not None:
            shown, recorded = (re.sub(row.varies, "…", m, flags=re.S) for m in (shown, recorded))
        assert recorded == shown, (
            f"the message changed: {shown!r}\nre-record: NB_FT_RECORD_MESSAGES=1 pytest "
            "tests/catalogue/test_catalogue.py -k test_row, then python scripts/update_readme.py"
        )


def as_shown(msg: str, ctx: Ctx) -> str:
    """The message with this test's temporary paths written as `<tmp>` and `<tiny-bert>` (the rest is as raised)."""
    for path, name in ((ctx.tmp, "<tmp>"), (Path(ctx.model_dir), "<tiny-bert>")):
        msg = msg.replace(str(path.resolve()), name).replace(str(path), name)
    return msg


def test_every_row_has_its_message_recorded():
    """messages.json holds one message per row, no more (a renamed or removed row leaves none behind)."""
    assert list(recorded_messages()) == [r.id for r in ROWS]


def test_catalogue_doc_is_current():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    doc = (ROOT / "docs" / "catalogue.md").read_text(encoding="utf-8")
    assert mod.render_catalogue(doc) == doc, "run: python scripts/update_readme.py"
