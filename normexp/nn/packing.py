"""Train several runs that differ only in their seed as one grouped model ("packing").

Each run (a member) keeps its own parameters, norm statistics and data order. Convolutions become
grouped convolutions with one group block per member, BatchNorm gets one set of channels per member
(its statistics are per channel, so per member), GroupNorm one set of groups per member, and the
classifier one weight block per member; normexp's own layers (Batch Renorm, FRN, EvoNorm) declare
their widening (`packed(members)`), and Weight Standardization standardizes each output filter, so each
member's filters alone. Members never mix: the packed model computes what the members compute alone,
in one call per layer instead of K, which is what makes small batches fast. Every packed tensor is
the members' tensors concatenated along dimension 0, so packed state converts to and from ordinary
single-run state dicts (checkpoints keep the single-run format).

This module owns the members' layout of the model: inputs side by side in the channel dimension and
labels in columns (filled by the loader, normexp.data.loader.member_views), logits member-major in
the feature dimension (`Pack.losses`), state and optimizer state concatenated along dimension 0
(`Pack.member_states`, `Pack.load_optimizer`).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional, Sequence, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from normexp.errors import ConfigError
from normexp.nn.layers import WeightStandardization
from normexp.nn.traits import norm_traits, traits_of

# Modules without their own weights whose forward acts on each channel separately (or only routes
# tensors between such modules), so that they work unchanged on packed channels; a model's own
# containers say so with `routes_channels = True` (normexp.nn.models).
CHANNEL_LOCAL = (nn.Sequential, nn.ReLU, nn.Identity, nn.AdaptiveAvgPool2d)
# Parametrizations that act on each output row of a weight alone (so on each member's rows alone).
ROW_LOCAL_PARAMETRIZATIONS = (WeightStandardization,)


class PackingError(ConfigError):
    """A model holds a layer that cannot be split into independent members."""


class PackedLinear(nn.Module):
    """K independent linear layers on packed features (B, K*in) -> (B, K*out)."""

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.members, self.in_features, self.out_features = members, in_features, out_features
        self.weight = nn.Parameter(torch.empty(members * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members * out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        k, o = self.members, self.out_features
        out = torch.einsum("bki,koi->bko", x.view(x.shape[0], k, self.in_features), self.weight.view(k, o, -1))
        if self.bias is not None:
            out = out + self.bias.view(k, o)
        return out.flatten(1)


def _widened_batch_norm(module: nn.BatchNorm2d, k: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(module.num_features * k, module.eps, module.momentum, module.affine,
                          module.track_running_stats)


def _widened_group_norm(module: nn.GroupNorm, k: int) -> nn.GroupNorm:
    return nn.GroupNorm(module.num_groups * k, module.num_channels * k, module.eps, module.affine)


def _widened_linear(module: nn.Linear, k: int) -> PackedLinear:
    return PackedLinear(k, module.in_features, module.out_features, module.bias is not None)


# torch's layers, by exact type (a subclass may compute otherwise); normexp's own layers declare
# their widening themselves (a `packed(members)` method, normexp.nn.layers)
TORCH_LAYERS: dict[type[nn.Module], Callable[[Any, int], nn.Module]] = {
    nn.BatchNorm2d: _widened_batch_norm, nn.GroupNorm: _widened_group_norm, nn.Linear: _widened_linear}


def _widened(module: nn.Module, k: int) -> nn.Module:
    """A K-member version of one layer (fresh weights: `pack` loads the members' state)."""
    if parametrize.is_parametrized(module):
        return _widened_parametrized(module, k)
    if type(module) is nn.Conv2d:
        return _widened_conv(module, k)
    if hasattr(module, "packed"):
        widened = cast(Any, module).packed(k)  # the layer's own method (duck-typed)
        if norm_traits(module) is not None:
            traits_of(widened)  # a norm's wider layer declares its traits too
        return widened
    if type(module) in TORCH_LAYERS:
        return TORCH_LAYERS[type(module)](module, k)
    if isinstance(module, CHANNEL_LOCAL) or getattr(module, "routes_channels", False):
        for name, child in module.named_children():
            setattr(module, name, _widened(child, k))
        return module
    raise PackingError(
        f"cannot pack a {type(module).__name__} layer (packing knows Conv2d, "
        f"{', '.join(t.__name__ for t in TORCH_LAYERS)}, layers with a packed(members) method and "
        f"{', '.join(t.__name__ for t in CHANNEL_LOCAL)} and containers with routes_channels); train one seed per "
        f"job (seed=<int>)"
    )


def _widened_conv(module: nn.Conv2d, k: int) -> nn.Conv2d:
    return nn.Conv2d(module.in_channels * k, module.out_channels * k,  # torch types the sizes as n-D tuples:
                     module.kernel_size, module.stride, module.padding, module.dilation,  # type: ignore[arg-type]
                     module.groups * k, module.bias is not None, module.padding_mode)


def _widened_parametrized(module: nn.Module, k: int) -> nn.Module:
    """A parametrized Conv2d widened with the same parametrizations, if each acts on each output
    row of its tensor alone (as each member's rows then stay apart)."""
    base = type(module).__bases__[0]  # parametrize makes the class Parametrized<base>(base)
    for name, chain in cast(nn.ModuleDict, module.parametrizations).items():
        for p in cast(nn.ModuleList, chain):
            if base is not nn.Conv2d or not isinstance(p, ROW_LOCAL_PARAMETRIZATIONS):
                raise PackingError(
                    f"cannot pack a {base.__name__} layer with a {type(p).__name__} parametrization of its {name} "
                    f"(packing knows Conv2d with {', '.join(t.__name__ for t in ROW_LOCAL_PARAMETRIZATIONS)}); "
                    f"train one seed per job (seed=<int>)"
                )
    widened = _widened_conv(cast(nn.Conv2d, module), k)
    for name, chain in cast(nn.ModuleDict, module.parametrizations).items():
        for p in cast(nn.ModuleList, chain):
            parametrize.register_parametrization(widened, name, p)
    return widened


def check_packable(model: nn.Module) -> None:
    """Raise PackingError (a ConfigError) if `model` holds a layer packing does not know."""
    _widened(copy.deepcopy(model), 2)


def pack_tensors(tensors: Sequence[Optional[Tensor]]) -> Optional[Tensor]:
    """Members' tensors -> the packed tensor (scalars such as BN's step counter are shared)."""
    first = tensors[0]
    if first is None:
        return None
    return torch.cat(list(cast(Sequence[Tensor], tensors))) if first.ndim else first.clone()  # none is None


def member_tensor(packed: Optional[Tensor], members: int, index: int) -> Optional[Tensor]:
    """Member `index`'s part of a packed tensor, as its own copy."""
    if packed is None:
        return None
    return packed.chunk(members)[index].clone() if packed.ndim else packed.clone()


def pack(models: Sequence[nn.Module]) -> nn.Module:
    """One model computing all `models` at once; a single model is returned as it is."""
    if len(models) == 1:
        return models[0]
    packed = _widened(copy.deepcopy(models[0]), len(models))
    packed.load_state_dict(pack_state([m.state_dict() for m in models]))
    return packed


def pack_state(states: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {key: cast(Tensor, pack_tensors([s[key] for s in states])) for key in states[0]}


def member_state(packed: dict[str, Tensor], members: int, index: int) -> dict[str, Tensor]:
    return {key: cast(Tensor, member_tensor(value, members, index)) for key, value in packed.items()}


def pack_optimizer_state(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Members' optimizer state dicts (same parameter order) -> the packed optimizer's."""
    return {
        "state": {i: {name: pack_tensors([s["state"][i][name] for s in states]) for name in slots}
                  for i, slots in states[0]["state"].items()},
        "param_groups": copy.deepcopy(states[0]["param_groups"]),
    }


def member_optimizer_state(packed: dict[str, Any], members: int, index: int) -> dict[str, Any]:
    return {
        "state": {i: {name: member_tensor(value, members, index) for name, value in slots.items()}
                  for i, slots in packed["state"].items()},
        "param_groups": copy.deepcopy(packed["param_groups"]),
    }


class Pack:
    """K runs that differ only in seed, trained as one model (K = 1: the plain model)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        self.size = len(models)
        self.model = pack(models)

    def losses(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Each member's mean cross-entropy (K,) and its count of correct predictions (K,)."""
        out = logits.view(logits.shape[0], self.size, -1)
        loss = F.cross_entropy(out.flatten(0, 1), labels.flatten(), reduction="none").view(-1, self.size).mean(0)
        return loss, (out.argmax(-1) == labels).sum(0)

    def member_states(self, optimizer: torch.optim.Optimizer) -> list[tuple[dict[str, Tensor], dict[str, Any]]]:
        """Each member's (model state, optimizer state), in the single-run format of a checkpoint."""
        model, optim = self.model.state_dict(), optimizer.state_dict()
        return [(member_state(model, self.size, i), member_optimizer_state(optim, self.size, i))
                for i in range(self.size)]

    def load_optimizer(self, optimizer: torch.optim.Optimizer, states: Sequence[dict[str, Any]]) -> None:
        optimizer.load_state_dict(pack_optimizer_state(states))
