"""LoRA adapters through PEFT: wrapping a model, the layer map of a model with adapters (blocks with their base and
adapter parameter counts; freezing a block freezes its adapters), and the weights a checkpoint must hold (the
adapters, never the frozen base)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .freezing import LayerMap, build_layer_map

__all__ = [
    "AdapterLayerMap",
    "add_adapters",
    "adapter_layer_map",
    "is_adapter_model",
    "trained_state",
    "load_trained_state",
    "peft_available",
]


def peft_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("peft") is not None


def is_adapter_model(model) -> bool:
    return type(model).__module__.startswith("peft.") and hasattr(model, "peft_config")


def _is_adapter_param(name: str) -> bool:
    return "lora_" in name or ".modules_to_save." in name


def add_adapters(model, lora, *, gradient_checkpointing: bool = False):
    """`model` wrapped in a PEFT LoRA model from a `LoraSettings`; only the adapters require grad."""
    if not peft_available():
        raise ConfigError("lora: needs the `peft` package: pip install peft (or nb-finetune[llm])")
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules
    if isinstance(targets, str) and targets.strip().lower().replace("_", "-") in ("all-linear", "all"):
        targets = "all-linear"
    conf = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        use_dora=lora.use_dora,
        use_rslora=lora.rslora,
        task_type="CAUSAL_LM",
        bias="none",
    )
    if gradient_checkpointing:
        # the input embeddings are frozen: without this hook the checkpointed blocks would see inputs that do not
        # require grad, and the adapters inside them would get none
        model.enable_input_require_grads()
    try:
        return get_peft_model(model, conf)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise ConfigError(
            f"lora.target_modules: {lora.target_modules!r} matches no module of this model ({str(e)[:160]}); "
            f"its linear layers are named {', '.join(names[:20])}; or use `all-linear`"
        ) from None


@dataclass
class AdapterLayerMap(LayerMap):
    """A layer map whose groups hold adapter parameters (`num_params`) beside fixed base weights (`base_params`)."""

    def describe(self, frozen: set[str] | None = None) -> str:
        frozen = frozen or set()
        rows, i, gs = [], 0, self.groups
        while i < len(gs):  # runs of equal blocks in the same state share one row, as in the plain map
            g, j = gs[i], i
            while (
                g.kind == "block"
                and j + 1 < len(gs)
                and gs[j + 1].kind == "block"
                and (gs[j + 1].name in frozen) == (g.name in frozen)
                and (gs[j + 1].num_params, gs[j + 1].base_params) == (g.num_params, g.base_params)
            ):
                j += 1
            label = f"blocks.{g.name.split('.')[1]}-{gs[j].name.split('.')[1]}" if j > i else g.name
            part = gs[i : j + 1]
            state = "frozen" if g.name in frozen else ("trainable" if g.num_params else "base only")
            rows.append((label, sum(x.base_params for x in part), sum(x.num_params for x in part), state))
            i = j + 1
        base = sum(g.base_params for g in gs)
        adapters = sum(g.num_params for g in gs)
        trainable = sum(g.num_params for g in gs if g.name not in frozen)
        w = max([len(r[0]) for r in rows] + [5])
        out = [f"{'group':<{w}}  {'base':>12}  {'adapters':>10}  state"]
        out += [f"{n:<{w}}  {b:>12,}  {a:>10,}  {s}" for n, b, a, s in rows]
        pct = 100 * trainable / (base + adapters) if base + adapters else 0
        out.append(f"{'total':<{w}}  {base:>12,}  {adapters:>10,}  trainable {trainable:,} ({pct:.2f}%)")
        return "\n".join(out)


def adapter_layer_map(model) -> AdapterLayerMap:
    """The generic layer map of a PEFT model, with each group's parameters split into adapters (what the group's
    freezing switches) and base weights (fixed: never trainable)."""
    plain = build_layer_map(model)
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    fixed = set()
    for g in plain.groups:
        adapters = [n for n in g.param_names if _is_adapter_param(n)]
        base = [n for n in g.param_names if not _is_adapter_param(n)]
        fixed.update(base)
        g.param_names = adapters
        g.num_params = sum(sizes[n] for n in adapters)
        g.base_params = sum(sizes[n] for n in base)
    return AdapterLayerMap(plain.groups, plain.blocks_path, frozenset(fixed))


# --------------------------------------------------------------------------------------------- checkpoints
def trained_state(model) -> dict[str, Any] | None:
    """The tensors a checkpoint of `model` must hold when only part of it can ever change (a PEFT model: its
    adapters), by parameter name; None for a plain model (the whole state is saved)."""
    if not is_adapter_model(model):
        return None
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if _is_adapter_param(n)}


def load_trained_state(model, tensors: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Load adapter tensors into a PEFT model; (missing adapter names, unexpected names)."""
    expected = {n for n, _ in model.named_parameters() if _is_adapter_param(n)}
    unexpected = sorted(set(tensors) - expected)
    missing = sorted(expected - set(tensors))
    if not unexpected:
        model.load_state_dict(tensors, strict=False)
    return missing, unexpected
