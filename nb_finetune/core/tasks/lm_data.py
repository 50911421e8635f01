"""Causal-LM examples: chat records, prompt / completion pairs and plain text as token ids with labels (-100 where
the loss does not look), packing into rows with restarting position ids, and the collators of both shapes.

Every example's first label is -100: a causal LM never predicts its first token, and in a packed row the token
before it belongs to another example, so masking it keeps a packed row's loss equal to its examples' losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError

__all__ = [
    "Encoded",
    "encode_chat",
    "encode_prompt_completion",
    "encode_text",
    "pack",
    "LMCollator",
    "PackedCollator",
    "block_mask",
]

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    truncated: int = 0  # examples cut at max_length
    empty: list[int] = field(default_factory=list)  # rows with no trained token left (dropped)
    rows: list[int] = field(default_factory=list)  # source row of each kept example

    def add(self, row: int, ids: list[int], labels: list[int], max_length: int) -> None:
        if len(ids) > max_length:
            self.truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        labels = [IGNORE, *labels[1:]]
        if all(x == IGNORE for x in labels):
            self.empty.append(row)
            return
        self.input_ids.append(ids)
        self.labels.append(labels)
        self.rows.append(row)


def _with_eos(ids: list[int], labels: list[int], eos: int | None, train: bool) -> tuple[list[int], list[int]]:
    if eos is not None and (not ids or ids[-1] != eos):
        ids, labels = [*ids, eos], [*labels, eos if train else IGNORE]
    return ids, labels


def check_messages(msgs, row: int, role: str) -> list[dict[str, str]]:
    if not isinstance(msgs, (list, tuple)) or not msgs:
        raise DataError(f"data.messages: row {row} of data.{role} is not a list of {{role, content}} messages")
    for m in msgs:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(
                f"data.messages: row {row} of data.{role} has a message without `role` and `content`: {str(m)[:80]}"
            )
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError(f"data.messages: row {row} of data.{role} has no assistant message to train on")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs]


def render(tokenizer, msgs, *, add_generation_prompt: bool = False) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "data.messages: the tokenizer has no chat template to render chat records with; set "
            "`chat_template:` (a Jinja template, e.g. ChatML) or give `prompt` / `completion` columns instead"
        )
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_chat(tokenizer, records, max_length: int, train_on_all: bool, role: str = "train") -> Encoded:
    """Chat records -> ids; labels on the assistant turns only (their text and the template's end-of-turn marks)
    unless `train_on_all`. Spans are found on the rendered text: each assistant turn starts where the rendering
    of the conversation before it with a generation prompt ends, and ends where the rendering up to it ends."""
    out = Encoded()
    eos = tokenizer.eos_token_id
    for row, msgs in enumerate(records):
        msgs = check_messages(msgs, row, role)
        text = render(tokenizer, msgs)
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            start = render(tokenizer, msgs[:i], add_generation_prompt=True) if i else ""
            end = render(tokenizer, msgs[: i + 1])
            if not (text.startswith(start) and text.startswith(end)):
                raise ConfigError(
                    "chat_template: this template renders a conversation differently from its own prefixes, so the "
                    "assistant turns cannot be located; use `train_on: all` or another `chat_template:`"
                )
            spans.append((len(start), len(end)))
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = []
        for tok, (a, b) in zip(ids, enc["offset_mapping"]):
            inside = train_on_all or any(s <= a < e for s, e in spans) or (b > a and any(s < b <= e for s, e in spans))
            labels.append(tok if inside else IGNORE)
        if eos not in [t for t, lab in zip(ids, labels) if lab != IGNORE]:  # the template's end of turn is not EOS
            ids, labels = _with_eos(ids, labels, eos, True)
        out.add(row, ids, labels, max_length)
    return out


def encode_prompt_completion(tokenizer, prompts, completions, max_length: int, train_on_all: bool) -> Encoded:
    out = Encoded()
    eos = tokenizer.eos_token_id
    for row, (p, c) in enumerate(zip(prompts, completions)):
        p_ids = tokenizer(str(p), add_special_tokens=True)["input_ids"]
        c_ids = tokenizer(str(c), add_special_tokens=False)["input_ids"]
        ids = list(p_ids) + list(c_ids)
        labels = (list(p_ids) if train_on_all else [IGNORE] * len(p_ids)) + list(c_ids)
        ids, labels = _with_eos(ids, labels, eos, True)
        out.add(row, ids, labels, max_length)
    return out


def encode_text(tokenizer, texts, max_length: int) -> Encoded:
    out = Encoded()
    eos = tokenizer.eos_token_id
    for row, t in enumerate(texts):
        ids = list(tokenizer(str(t), add_special_tokens=True)["input_ids"])
        ids, labels = _with_eos(ids, list(ids), eos, True)
        out.add(row, ids, labels, max_length)
    return out


# --------------------------------------------------------------------------------------------- packing
def pack(input_ids: list[list[int]], labels: list[list[int]], max_length: int, seed: int = 0):
    """First-fit decreasing: whole examples into rows of at most `max_length` tokens (an example is never split).

    Returns (row ids, row labels, row position ids, row segment lengths, source examples of each row)."""
    order = sorted(range(len(input_ids)), key=lambda i: (-len(input_ids[i]), i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(input_ids[i])
        for r, free in enumerate(room):
            if free >= n:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max_length - n)
    rng = np.random.default_rng(seed)
    rows = [rows[k] for k in rng.permutation(len(rows))] if rows else rows
    out_ids, out_labels, out_pos, out_segs = [], [], [], []
    for members in rows:
        out_ids.append([t for i in members for t in input_ids[i]])
        out_labels.append([t for i in members for t in labels[i]])
        out_pos.append([p for i in members for p in range(len(input_ids[i]))])
        out_segs.append([len(input_ids[i]) for i in members])
    return out_ids, out_labels, out_pos, out_segs, rows


def block_mask(segments, width: int, dtype=None):
    """(B, 1, W, W) attention mask confining each token to the earlier tokens of its own example.

    `segments`: per row, the lengths of the examples packed into it; the padding after them forms one more
    segment (it attends to itself, so no row of the mask is empty). Boolean (True = attend) unless `dtype` is a
    float type: then 0 where attention is allowed and the dtype's minimum elsewhere (the eager attention's form)."""
    import torch

    seg = torch.empty(len(segments), width, dtype=torch.long)
    for r, lens in enumerate(segments):
        ids = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens, dtype=torch.long))
        seg[r, : len(ids)] = ids
        seg[r, len(ids) :] = len(lens)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = (seg[:, :, None] == seg[:, None, :]) & causal
    mask = mask[:, None]
    if dtype is None or not dtype.is_floating_point:
        return mask
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)


# --------------------------------------------------------------------------------------------- collators
class LMCollator:
    """Padded batches: input_ids, attention_mask, labels (-100 on padding) and the host keys."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        lens = [len(x["input_ids"]) for x in items]
        width = max(lens)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(items), width), dtype=torch.long)
        lab = torch.full((len(items), width), IGNORE, dtype=torch.long)
        for r, x in enumerate(items):
            n = lens[r]
            ids[r, :n] = torch.tensor(x["input_ids"])
            att[r, :n] = 1
            lab[r, :n] = torch.tensor(x["labels"])
        return {
            "input_ids": ids,
            "attention_mask": att,
            "labels": lab,
            "lengths": lens,
            "num_tokens": sum(lens),
            "idx": [x["idx"] for x in items],
        }


class PackedCollator:
    """Packed rows: input_ids, labels, position_ids (restarting per example) and `segments` (example lengths per
    row, a host list the task turns into the block-diagonal mask on the device)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        lens = [len(x["input_ids"]) for x in items]
        width = max(lens)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        lab = torch.full((len(items), width), IGNORE, dtype=torch.long)
        pos = torch.zeros((len(items), width), dtype=torch.long)
        for r, x in enumerate(items):
            n = lens[r]
            ids[r, :n] = torch.tensor(x["input_ids"])
            lab[r, :n] = torch.tensor(x["labels"])
            pos[r, :n] = torch.tensor(x["position_ids"])
            pos[r, n:] = torch.arange(width - n)
        return {
            "input_ids": ids,
            "labels": lab,
            "position_ids": pos,
            "packed_mask": block_mask([x["segments"] for x in items], width),
            "lengths": lens,
            "num_tokens": sum(lens),
            "idx": [x["idx"] for x in items],
        }
