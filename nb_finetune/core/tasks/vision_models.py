"""Vision models on the task seam: a plain `nn.Module` with its classifier replaced, the first convolution / patch
embedding adapted to another channel count, and a layer map of CNN stages / blocks and ViT layers."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import ConfigError, ModelError

__all__ = [
    "ModuleClassifier",
    "find_head",
    "replace_head",
    "adapt_channels",
    "image_layer_map",
    "first_conv",
    "saved_activation_bytes",
]


def find_head(net, head: str | None):
    """(attribute path, module) of the classifier: `head` when given, else the last `nn.Linear`."""
    import torch.nn as nn

    if head:
        try:
            mod = net.get_submodule(head)
        except AttributeError:
            names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
            raise ConfigError(
                f"head: the model has no module {head!r}; its Linear layers are: {', '.join(names) or 'none'}"
            ) from None
        if isinstance(mod, nn.Sequential):  # `classifier` = Sequential(Dropout, Linear): its last Linear
            inner = [(f"{head}.{n}", m) for n, m in mod.named_modules() if isinstance(m, nn.Linear)]
            if inner:
                return inner[-1]
        if not isinstance(mod, nn.Linear):
            raise ConfigError(f"head: {head!r} is a {type(mod).__name__}, not an nn.Linear to replace")
        return head, mod
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(
            f"model: the {type(net).__name__} has no nn.Linear classifier to replace; name it with `head: <attribute>`"
        )
    return linears[-1]


def replace_head(net, path: str, num_labels: int, *, device=None):
    """Put a fresh `nn.Linear(in, num_labels)` at `path`; returns (old, new)."""
    import torch.nn as nn

    old = net.get_submodule(path)
    new = nn.Linear(old.in_features, num_labels, bias=old.bias is not None, device=device or old.weight.device)
    parent, _, leaf = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, new)
    return old, new


def _torch_module():
    import torch.nn as nn

    class ModuleClassifier(nn.Module):
        """Any image network as a classifier with the loop's interface: `forward(pixel_values, labels=None)` ->
        an output with `loss` (cross-entropy) and `logits`. Its parameters are the network's, under `net.`."""

        def __init__(self, net, label_names: list[str], head_path: str):
            super().__init__()
            self.net = net
            self.label_names = list(label_names)
            self.head_path = head_path

        def forward(self, pixel_values, labels=None):
            import torch.nn.functional as F
            from transformers.modeling_outputs import ImageClassifierOutput

            out = self.net(pixel_values)
            logits = getattr(out, "logits", out)
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
            return ImageClassifierOutput(loss=loss, logits=logits)

        def save_pretrained(self, path, safe_serialization: bool = True, **_):
            from safetensors.torch import save_model

            path = Path(path)
            path.mkdir(parents=True, exist_ok=True)
            save_model(self.net, str(path / "model.safetensors"))
            info = {
                "architecture": type(self.net).__name__,
                "head": self.head_path,
                "id2label": dict(enumerate(self.label_names)),
                "note": "weights of the network (head replaced); load with safetensors.torch.load_model(net, path)",
            }
            (path / "config.json").write_text(json.dumps(info, indent=2))

    return ModuleClassifier


_CLS = None


def ModuleClassifier(*args, **kw):  # noqa: N802 - a class built lazily (torch imported on first use)
    global _CLS
    if _CLS is None:
        _CLS = _torch_module()
    return _CLS(*args, **kw)


def is_module_classifier(model) -> bool:
    return _CLS is not None and isinstance(model, _CLS)


def first_conv(model):
    """(name, module) of the first Conv2d (a CNN's stem, a ViT's patch embedding), or None."""
    import torch.nn as nn

    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def adapt_channels(model, channels: int) -> str | None:
    """Make the first convolution read `channels` inputs; returns what was done (for describe()), None if nothing.

    Fewer channels than pretrained (RGB -> gray): each new input channel gets the mean of the pretrained ones,
    scaled by old/new (so a gray image gives the activations its RGB copy gave). More (RGB -> N bands): the
    pretrained channels repeated cyclically, scaled by old/new."""
    import torch
    import torch.nn as nn

    found = first_conv(model)
    if found is None:
        raise ModelError(f"channels: {channels}: the model has no Conv2d first layer to adapt; feed it 3 channels")
    name, conv = found
    old = conv.in_channels
    if old == channels:
        return None
    if conv.groups != 1:
        raise ModelError(f"channels: the first convolution {name!r} is grouped; it cannot be adapted")
    new = nn.Conv2d(
        channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    if conv.weight.device.type != "meta":
        with torch.no_grad():
            w = conv.weight
            if channels < old:
                neww = w.mean(1, keepdim=True).expand(-1, channels, -1, -1) * (old / channels)
                how = "averaged over the pretrained channels"
            else:
                idx = torch.arange(channels) % old
                neww = w[:, idx] * (old / channels)
                how = "repeated from the pretrained channels"
            new.weight.copy_(neww)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    else:
        how = "averaged" if channels < old else "repeated"
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
    for m in model.modules():  # HF embeddings check the input's channel count against their own
        if hasattr(m, "num_channels") and isinstance(m.num_channels, int) and m.num_channels == old:
            m.num_channels = channels
    if getattr(getattr(model, "config", None), "num_channels", None) is not None:
        model.config.num_channels = channels
    return f"first convolution '{name}' adapted {old} -> {channels} input channels (weights {how}, rescaled)"


def image_layer_map(model):
    """Layer map of a vision model: the blocks are the homogeneous `nn.ModuleList` holding the most parameters (a
    CNN's stages or blocks, a ViT's layers); without one, the network's top-level children (stem, stages, head)."""
    import torch.nn as nn

    from ..freezing import LayerGroup, LayerMap, build_layer_map

    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) >= 2 and len({type(m) for m in mod}) == 1:
            n = sum(p.numel() for p in mod.parameters())
            if n and (best is None or (n, len(mod)) > best[0]):
                best = ((n, len(mod)), name)
    if best is not None:
        return build_layer_map(model, best[1])
    # stem / stages / head from the network's children (torchvision ResNet: conv1, bn1, layer1-4, fc)
    net, prefix = (model.net, "net.") if is_module_classifier(model) else (model, "")
    head_path = getattr(model, "head_path", None)
    children = [(n, m) for n, m in net.named_children() if any(True for _ in m.parameters())]
    if len(children) < 2:
        return build_layer_map(model)
    groups, seen_container = [], False
    emb = LayerGroup("embeddings", "embeddings")
    blocks: list[LayerGroup] = []
    head = LayerGroup("head", "head")
    for n, m in children:
        is_head = head_path is not None and (head_path == n or head_path.startswith(n + "."))
        container = len(list(m.children())) > 0
        if is_head or (head_path is None and (n, m) == children[-1]):
            g = head
        elif not container and not seen_container:
            g = emb
        else:
            seen_container = True
            g = LayerGroup(f"blocks.{len(blocks)}", "block")
            blocks.append(g)
        g.module_names.append(prefix + n)
        for pn, p in m.named_parameters():
            g.param_names.append(f"{prefix}{n}.{pn}")
            g.num_params += p.numel()
    groups = ([emb] if emb.param_names else []) + blocks + ([head] if head.param_names else [])
    owned = {p for g in groups for p in g.param_names}
    rest = [(n, p) for n, p in model.named_parameters() if n not in owned]
    for n, p in rest:  # parameters of the network itself (no child): with the head
        head.param_names.append(n)
        head.num_params += p.numel()
    if rest and head not in groups:
        groups.append(head)
    return LayerMap(groups, None)


def load_named_model(ref: str, num_labels: int, meta: bool = False):
    """`timm:NAME` or `torchvision:NAME`, pretrained, only when that package is installed."""
    kind, _, name = ref.partition(":")
    if kind == "timm":
        try:
            import timm
        except Exception as e:  # noqa: BLE001 - ImportError, or torchvision failing to load beside this torch
            raise ModelError(
                f"model: {ref!r} needs the timm package ({type(e).__name__}: {e}); `pip install timm` where a "
                "matching torchvision installs (Colab has both), or pass any nn.Module as {{net}}"
            ) from None
        return timm.create_model(name, pretrained=not meta, num_classes=num_labels), None
    try:
        import torchvision
    except Exception as e:  # noqa: BLE001
        raise ModelError(
            f"model: {ref!r} needs torchvision ({type(e).__name__}: {e}); install the torchvision that matches "
            "your torch (Colab has it), or pass any nn.Module as {{net}}"
        ) from None
    try:
        net = torchvision.models.get_model(name, weights=None if meta else "DEFAULT")
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"model: torchvision has no model {name!r} ({e})") from None
    return net, None


def saved_activation_bytes(model, inputs: dict, layer_map, frozen: set[str]) -> int | None:
    """Bytes autograd keeps for the backward pass of one training forward of `inputs` (a dict of tensors, any
    device), traced on the meta device: shapes only, nothing computed, the model's own weights and buffers untouched.
    Trained and frozen groups are set up as the run has them (frozen parameters need no gradient, frozen modules in
    eval mode); the weights themselves are not counted, and a tensor saved by several operations counts once. None
    when this model's forward cannot run on the meta device (it reads values of its inputs)."""
    import numpy as np
    import torch
    from torch.func import functional_call

    owner = layer_map.group_of_param()
    params = {
        n: torch.empty_like(p, device="meta").requires_grad_(owner.get(n) not in frozen and n not in layer_map.fixed)
        for n, p in model.named_parameters()
    }
    buffers = {n: torch.empty_like(b, device="meta") for n, b in model.named_buffers()}
    weights = {id(t) for t in params.values()}
    meta_inputs = {k: torch.empty_like(v, device="meta") for k, v in inputs.items()}
    seen: dict[int, int] = {}
    held: list = []  # every packed tensor stays referenced during the trace: no id is reused for another one

    def pack(t):
        base = t._base if t._base is not None else t
        held.append(base)
        if id(base) not in weights and id(base) not in seen:
            seen[id(base)] = base.numel() * base.element_size()
        return t

    modes = {n: m.training for n, m in model.named_modules()}
    mods = dict(model.named_modules())
    np_state = np.random.get_state()
    try:
        model.train()
        for g in layer_map.groups:
            if g.name in frozen:
                for name in g.module_names:
                    mods[name].eval()
        for train_mode in (True, False):  # eval mode when code run in training mode reads values of its inputs
            if not train_mode:
                model.eval()
            seen.clear()
            held.clear()
            try:
                # random choices made on the host (LayerDrop's torch.rand, SpecAugment's numpy masks): the same in
                # every trace, and the run's own streams untouched
                with torch.random.fork_rng(devices=[]), torch.enable_grad():
                    torch.default_generator.manual_seed(0)
                    np.random.seed(0)
                    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                        functional_call(model, {**params, **buffers}, args=(), kwargs=meta_inputs, strict=False)
                return sum(seen.values())
            except Exception:  # noqa: BLE001 - data-dependent code (nonzero, .item(), .tolist()) fails on meta
                continue
        return None
    finally:
        np.random.set_state(np_state)
        for n, m in model.named_modules():
            m.training = modes[n]
