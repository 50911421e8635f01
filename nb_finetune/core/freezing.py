"""Layer map for any Hugging Face model (embeddings / blocks / head) and freeze specs over it.

The map is found structurally, not from a per-architecture table: the blocks are the longest
`nn.ModuleList` of identical modules; parameters registered before the first block are the embeddings;
everything after the last block (final norm, pooler, task head) is the head. Plain `nn.Module`s without
such a list fall back to their top-level children as blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

__all__ = [
    "LayerGroup",
    "LayerMap",
    "build_layer_map",
    "parse_freeze_spec",
    "resolve_freeze",
    "apply_freeze",
    "parse_group_lr",
    "lr_multipliers",
    "next_unfreeze",
]


@dataclass
class LayerGroup:
    name: str  # "embeddings", "blocks.3", "head"
    kind: str  # "embeddings" | "block" | "head"
    param_names: list[str] = field(default_factory=list)
    module_names: list[str] = field(default_factory=list)
    num_params: int = 0
    base_params: int = 0  # with adapters (LoRA): the group's base weights, which never train


@dataclass
class LayerMap:
    groups: list[LayerGroup]
    blocks_path: str | None  # e.g. "bert.encoder.layer"
    fixed: frozenset[str] = frozenset()  # parameters no freeze spec makes trainable (a LoRA model's base weights)

    @property
    def num_blocks(self) -> int:
        return sum(g.kind == "block" for g in self.groups)

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def group(self, name: str) -> LayerGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def group_of_param(self) -> dict[str, str]:
        return {p: g.name for g in self.groups for p in g.param_names}

    def table(self, frozen: set[str] | None = None) -> list[dict[str, Any]]:
        frozen = frozen or set()
        rows = [
            {"group": g.name, "kind": g.kind, "params": g.num_params, "trainable": g.name not in frozen}
            for g in self.groups
        ]
        if self.fixed:  # `params` counts what can train (the adapters); `base_params` the fixed weights beside them
            for row, g in zip(rows, self.groups):
                row["base_params"] = g.base_params
        return rows

    def describe(self, frozen: set[str] | None = None) -> str:
        """Text table of groups, parameter counts and frozen/trainable, compressing runs of equal blocks."""
        frozen = frozen or set()
        rows, i, gs = [], 0, self.groups
        while i < len(gs):
            g = gs[i]
            j = i
            if g.kind == "block":
                while (
                    j + 1 < len(gs)
                    and gs[j + 1].kind == "block"
                    and (gs[j + 1].name in frozen) == (g.name in frozen)
                    and gs[j + 1].num_params == g.num_params
                ):
                    j += 1
            if j > i:
                label = f"blocks.{g.name.split('.')[1]}-{gs[j].name.split('.')[1]}"
                count = sum(x.num_params for x in gs[i : j + 1])
            else:
                label, count = g.name, g.num_params
            rows.append((label, count, "frozen" if g.name in frozen else "trainable"))
            i = j + 1
        total = sum(g.num_params for g in gs)
        trainable = sum(g.num_params for g in gs if g.name not in frozen)
        width = max(len(r[0]) for r in rows) if rows else 5
        out = [f"{'group':<{width}}  {'params':>12}  state"]
        out += [f"{n:<{width}}  {c:>12,}  {s}" for n, c, s in rows]
        pct = 100 * trainable / total if total else 0
        out.append(f"{'total':<{width}}  {total:>12,}  trainable {trainable:,} ({pct:.1f}%)")
        return "\n".join(out)


def _find_blocks(model) -> tuple[str, Any] | None:
    import torch.nn as nn

    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) >= 1:
            kinds = {type(m) for m in mod}
            if len(kinds) == 1:
                n_params = sum(p.numel() for p in mod.parameters())
                key = (len(mod), n_params)
                if n_params > 0 and (best is None or key > best[0]):
                    best = (key, name, mod)
    return (best[1], best[2]) if best else None


def build_layer_map(model, blocks_path: str | None = None) -> LayerMap:
    """Group `model`'s parameters into embeddings, blocks.0..N-1 and head.

    `blocks_path`: the `nn.ModuleList` to use as the blocks (a task that knows better, e.g. a CNN's stages);
    default: the longest list of identical modules.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 2))
        >>> build_layer_map(m).names
        ['blocks.0', 'blocks.1', 'blocks.2']
    """
    params = list(model.named_parameters())  # dedups tied weights: they stay with their first owner
    found = (blocks_path, model.get_submodule(blocks_path)) if blocks_path else _find_blocks(model)
    if found is None or len(found[1]) < 2:
        return _fallback_map(model, params)
    path, blocks = found
    groups: list[LayerGroup] = [LayerGroup("embeddings", "embeddings")]
    groups += [LayerGroup(f"blocks.{i}", "block", module_names=[f"{path}.{i}"]) for i in range(len(blocks))]
    groups.append(LayerGroup("head", "head"))
    prefix = path + "."
    seen_block = False
    for pname, p in params:
        if pname.startswith(prefix):
            idx = int(pname[len(prefix) :].split(".", 1)[0])
            g = groups[1 + idx]
            seen_block = True
        else:
            g = groups[-1] if seen_block else groups[0]
        g.param_names.append(pname)
        g.num_params += p.numel()
    # module names for the non-block groups (for eval-mode switching): top-most modules owning only their params
    owned = {g.name: set(g.param_names) for g in groups if g.kind != "block"}
    for name, mod in model.named_modules():
        if not name or name == path or name.startswith(prefix) or prefix.startswith(name + "."):
            continue
        names = {f"{name}.{n}" for n, _ in mod.named_parameters()}
        if not names:
            continue
        for g in groups:
            if (
                g.kind != "block"
                and names <= owned[g.name]
                and not any(name.startswith(m + ".") for m in g.module_names)
            ):
                g.module_names.append(name)
    groups = [g for g in groups if g.param_names or g.kind == "block"]
    return LayerMap(groups, path)


def _fallback_map(model, params) -> LayerMap:
    groups = []
    by_child = {}
    children = {name for name, _ in model.named_children()}
    for pname, p in params:
        child = pname.split(".", 1)[0]
        if child not in by_child:
            # a parameter of the model itself (no dot) has no module to switch to eval mode
            mods = [child] if child in children else []
            by_child[child] = LayerGroup(f"blocks.{len(by_child)}", "block", module_names=mods)
            groups.append(by_child[child])
        by_child[child].param_names.append(pname)
        by_child[child].num_params += p.numel()
    return LayerMap(groups, None)


# --------------------------------------------------------------------------------------------- specs
_RANGE = re.compile(r"^blocks\.(-?\d+)(?:\s*-\s*(-?\d+))?$")
_KEYWORDS = {"none", "nothing", "off", "no", "false", "all_but_head", "all-but-head", "embeddings", "head", "all"}


def parse_freeze_spec(spec: Any) -> Any:
    """Check the syntax of a freeze spec (no model needed); returns it unchanged or raises ConfigError."""
    if spec is None or isinstance(spec, bool):
        return spec
    if isinstance(spec, int):
        if spec < 0:
            raise ConfigError("freeze: a block count must be >= 0")
        return spec
    if isinstance(spec, float):
        if not 0 <= spec <= 1:
            raise ConfigError("freeze: a fraction of blocks must be between 0 and 1")
        return spec
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s in _KEYWORDS or _RANGE.match(s):
            return spec
        m = re.match(r"^(bottom|first|top|last|train_last|train last)\s+(\d+(?:\.\d+)?)$", s)
        if m:
            return spec
        if re.match(r"^\d+(\.\d+)?$", s):
            return spec
        raise ConfigError(
            f"freeze: {spec!r} is not a freeze spec. Use `bottom 8` / `8` (embeddings + first 8 blocks), "
            "`train_last 2`, `0.66` (that fraction of blocks), `all_but_head`, `[embeddings, blocks.0-7]` or `none`."
        )
    if isinstance(spec, (list, tuple)):
        for item in spec:
            if not isinstance(item, str) or not (item.strip().lower() in _KEYWORDS or _RANGE.match(item.strip())):
                raise ConfigError(
                    f"freeze: list item {item!r} is not a group. Use `embeddings`, `head`, `blocks.3` or `blocks.0-7`."
                )
        return spec
    raise ConfigError(f"freeze: expected a number, a string or a list of groups, not {type(spec).__name__}")


def resolve_freeze(spec: Any, layer_map: LayerMap) -> set[str]:
    """The set of group names that `spec` freezes on this model."""
    parse_freeze_spec(spec)
    blocks = [g.name for g in layer_map.groups if g.kind == "block"]
    n = len(blocks)
    has_emb = any(g.kind == "embeddings" for g in layer_map.groups)
    emb = {"embeddings"} if has_emb else set()

    def bottom(k: int) -> set[str]:
        if k > n:
            raise ConfigError(f"freeze: asks for {k} blocks but the model has {n} (groups: {_short(layer_map)})")
        return (emb | set(blocks[:k])) if k > 0 else set()

    if spec is None or spec is False:
        return set()
    if spec is True:
        return {g.name for g in layer_map.groups if g.kind != "head"}
    if isinstance(spec, int):
        return bottom(spec)
    if isinstance(spec, float):
        return bottom(round(spec * n))
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s in ("none", "nothing", "off", "no", "false"):
            return set()
        if re.match(r"^\d+$", s):
            return bottom(int(s))
        if re.match(r"^\d*\.\d+$", s):
            return bottom(round(float(s) * n))
        m = re.match(r"^(bottom|first|top|last|train_last|train last)\s+(\d+(?:\.\d+)?)$", s)
        if m:
            word, num = m.group(1), float(m.group(2))
            k = round(num * n) if num < 1 or "." in m.group(2) else int(num)
            if word in ("bottom", "first"):
                return bottom(k)
            if k > n:
                raise ConfigError(f"freeze: asks to train the last {k} blocks but the model has {n}")
            return bottom(n - k) if n - k > 0 else set()
        return _resolve_items([s], layer_map)
    return _resolve_items([str(x).strip().lower() for x in spec], layer_map)


def _resolve_items(items, layer_map: LayerMap) -> set[str]:
    names = set(layer_map.names)
    blocks = [g.name for g in layer_map.groups if g.kind == "block"]
    out: set[str] = set()
    for item in items:
        if item in ("all_but_head", "all-but-head"):
            out |= {g.name for g in layer_map.groups if g.kind != "head"}
        elif item == "all":
            out |= names
        elif item in ("embeddings", "head"):
            if item not in names:
                raise ConfigError(f"freeze: this model has no '{item}' group (groups: {_short(layer_map)})")
            out.add(item)
        else:
            m = _RANGE.match(item)
            lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
            lo, hi = (lo + len(blocks) if lo < 0 else lo), (hi + len(blocks) if hi < 0 else hi)
            if not (0 <= lo <= hi < len(blocks)):
                raise ConfigError(f"freeze: '{item}' is out of range: the model has blocks.0-{len(blocks) - 1}")
            out |= set(blocks[lo : hi + 1])
    return out


def _short(layer_map: LayerMap) -> str:
    n = layer_map.num_blocks
    parts = [g.name for g in layer_map.groups if g.kind != "block"]
    if n:
        parts.insert(1 if "embeddings" in parts else 0, f"blocks.0-{n - 1}")
    return ", ".join(parts)


def apply_freeze(model, layer_map: LayerMap, frozen: set[str]) -> tuple[int, int]:
    """Set requires_grad from the frozen set; returns (trainable, total) parameter counts."""
    owner = layer_map.group_of_param()
    trainable = total = 0
    for pname, p in model.named_parameters():
        is_frozen = pname in layer_map.fixed or owner.get(pname) in frozen
        p.requires_grad_(not is_frozen)
        if is_frozen:
            p.grad = None  # free grads early
        total += p.numel()
        trainable += 0 if is_frozen else p.numel()
    if trainable == 0:
        raise ConfigError("freeze: this spec freezes every parameter, so nothing would train. Leave the head free.")
    return trainable, total


def set_frozen_eval(model, layer_map: LayerMap, frozen: set[str]) -> None:
    """Put frozen groups' modules in eval mode (no dropout, fixed norm statistics). Call after `model.train()`."""
    mods = dict(model.named_modules())
    for g in layer_map.groups:
        if g.name in frozen:
            for mname in g.module_names:
                mods[mname].eval()


# --------------------------------------------------------------------------------------------- schedules
_GROUP_KEY = re.compile(r"^(embeddings|head|blocks\.-?\d+(?:\s*-\s*-?\d+)?)$")


def parse_group_lr(value: Any) -> Any:
    """Check the syntax of a `group_lr` mapping (no model needed); returns it unchanged or raises ConfigError."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(
            "group_lr: expected a mapping of group to multiplier, e.g. `{embeddings: 0.1, blocks.0-5: 0.5}`"
        )
    for key, mult in value.items():
        if not isinstance(key, str) or not _GROUP_KEY.match(key.strip().lower()):
            raise ConfigError(
                f"group_lr: {key!r} is not a layer group. Use `embeddings`, `head`, `blocks.3` or `blocks.0-5`."
            )
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not mult > 0 or mult != mult:
            raise ConfigError(
                f"group_lr: {key}: {mult!r} is not a multiplier > 0 (to stop a group training, freeze it)"
            )
    return value


def _groups_of_key(key: str, layer_map: LayerMap) -> list[str]:
    item = key.strip().lower()
    names = layer_map.names
    if item in ("embeddings", "head"):
        if item not in names:
            raise ConfigError(f"group_lr: this model has no '{item}' group (groups: {_short(layer_map)})")
        return [item]
    blocks = [g.name for g in layer_map.groups if g.kind == "block"]
    m = _RANGE.match(item)
    lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
    lo, hi = (lo + len(blocks) if lo < 0 else lo), (hi + len(blocks) if hi < 0 else hi)
    if not (0 <= lo <= hi < len(blocks)):
        raise ConfigError(f"group_lr: '{key}' is out of range (groups: {_short(layer_map)})")
    return blocks[lo : hi + 1]


def lr_multipliers(
    layer_map: LayerMap, layer_lr_decay: float | None = None, group_lr: dict[str, float] | None = None
) -> dict[str, float]:
    """Learning-rate multiplier of every layer group (discriminative / layer-wise lr decay).

    With `layer_lr_decay` d: the head and any other group above the blocks x1, the top block x d, the next x d^2,
    ..., the bottom block x d^n, the embeddings x d^(n+1). `group_lr` multiplies named groups on top of that
    (`embeddings`, `head`, `blocks.3`, `blocks.0-5`; a later key wins over an earlier one for the same group).

    Example:
        >>> lm = LayerMap([LayerGroup("embeddings", "embeddings"), LayerGroup("blocks.0", "block"),
        ...                LayerGroup("blocks.1", "block"), LayerGroup("head", "head")], "encoder.layer")
        >>> lr_multipliers(lm, 0.5, {"embeddings": 2})
        {'embeddings': 0.25, 'blocks.0': 0.25, 'blocks.1': 0.5, 'head': 1.0}
    """
    if layer_lr_decay is not None and not 0 < layer_lr_decay <= 1:
        raise ConfigError(f"layer_lr_decay: {layer_lr_decay!r} must be > 0 and <= 1")
    parse_group_lr(group_lr)
    blocks = [g.name for g in layer_map.groups if g.kind == "block"]
    n = len(blocks)
    out: dict[str, float] = {}
    for g in layer_map.groups:
        depth = 0  # how many decay steps below the head
        if layer_lr_decay is not None:
            if g.kind == "block":
                depth = n - blocks.index(g.name)
            elif g.kind == "embeddings":
                depth = n + 1
        out[g.name] = float(layer_lr_decay**depth) if depth else 1.0
    explicit: dict[str, float] = {}
    for key, mult in (group_lr or {}).items():
        for name in _groups_of_key(key, layer_map):
            explicit[name] = float(mult)
    for name, mult in explicit.items():
        out[name] *= mult
    return out


def unfreeze_order(layer_map: LayerMap) -> list[str]:
    """Groups in the order gradual unfreezing makes them trainable: head, blocks from the top down, embeddings."""
    return [g.name for g in reversed(layer_map.groups)]


def next_unfreeze(layer_map: LayerMap, frozen: set[str], floor: set[str] | None = None) -> set[str] | None:
    """The frozen set after the next gradual-unfreezing step, or None when nothing above `floor` is frozen.

    The top-most frozen group that is not in `floor` becomes trainable (blocks from the top down, embeddings last).

    Example:
        >>> lm = LayerMap([LayerGroup("embeddings", "embeddings"), LayerGroup("blocks.0", "block"),
        ...                LayerGroup("blocks.1", "block"), LayerGroup("head", "head")], "encoder.layer")
        >>> sorted(next_unfreeze(lm, {"embeddings", "blocks.0", "blocks.1"}))
        ['blocks.0', 'embeddings']
        >>> next_unfreeze(lm, {"embeddings", "blocks.0"}, floor={"embeddings", "blocks.0"}) is None
        True
    """
    floor = floor or set()
    for name in unfreeze_order(layer_map):
        if name in frozen and name not in floor:
            return set(frozen) - {name}
    return None
