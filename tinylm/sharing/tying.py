"""Weight sharing that stays shared.

A tie here is ONE ``nn.Parameter`` object held by two modules. That is the only form of sharing
under which both uses' gradients accumulate into one ``.grad`` and an optimizer such as AdamW
keeps one state for the matrix. Two Parameters that merely alias one storage (what
``dst.weight = nn.Parameter(src.weight.data)`` gives) behave like a tie under plain SGD and not
under Adam: two grads, two moment estimates, two updates applied to the same memory. We call that
a *fake tie* and refuse it.

Public API::

    tie(src_module, src_name, dst_module, dst_name, transform="same")
    tied_groups(module) -> list[list[str]]
    declared_ties(module) -> list[TieInfo]
    check_ties(module, expected=None)       # raises TieError
    share_modules(root, groups)             # declare: these submodule names are ONE module
    shared_modules(module) -> list[list[str]]
    TieGuarded                              # base class for roots that own ties
    TieError

``transform="transpose"`` makes ``dst`` compute with ``src``'s matrix transposed (a tied
autoencoder's decoder, say). It is built on ``torch.nn.utils.parametrize``: ``dst`` keeps no
weight of its own; ``dst.parametrizations[dst_name].original`` IS ``src``'s Parameter, and
``dst.<dst_name>`` is computed as its transpose on each access.

Lifecycle guards (a tie never breaks silently):
- ``load_state_dict(..., assign=True)`` replaces each module's Parameter with a new one. Hooks
  registered by :func:`tie` on both modules re-point the other side to the freshly loaded
  Parameter, so the pair ends as one Parameter again.
- :class:`TieGuarded` roots also refuse a state dict whose tied entries disagree, re-tie after
  ``.to()``/``.cuda()`` under torch's "overwrite params on conversion" mode, and run
  :func:`check_ties` after both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

Transform = Literal["same", "transpose"]
_TIES_ATTR = "_tinylm_ties"  # on a dst module: {dst_name: _TieSpec}
_SOURCES_ATTR = "_tinylm_tie_sources"  # on a src module: [(dst_module, dst_name)]
_HOOKED_ATTR = "_tinylm_tie_hooked"  # a module whose load hook is registered
_SHARES_ATTR = "_tinylm_module_shares"  # on a root: [[submodule names that are one module]]


class TieError(RuntimeError):
    """A declared tie is broken, a fake tie was found, or a tie cannot be made."""


@dataclass
class _TieSpec:
    """What :func:`tie` records on the destination module.

    ``param`` is the Parameter the pair shared when last known to be intact; the load hooks
    compare against it to tell which side was freshly replaced.
    """

    src_module: nn.Module
    src_name: str
    transform: Transform
    param: nn.Parameter


@dataclass(frozen=True)
class TieInfo:
    """A declared tie, by qualified parameter names within a root module."""

    src: str  # e.g. "embed_tokens.weight"
    dst: str  # e.g. "lm_head.weight"
    transform: Transform


class _Transpose(nn.Module):
    """Parametrization: the destination sees the source's matrix transposed."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.t()


def tie(
    src_module: nn.Module,
    src_name: str,
    dst_module: nn.Module,
    dst_name: str,
    transform: Transform = "same",
) -> None:
    """Make ``dst_module.<dst_name>`` use ``src_module.<src_name>``'s Parameter.

    The source keeps its Parameter (and its values); the destination's own weight, if any, is
    dropped. Its shape must match the source's (``"same"``) or the source's transpose
    (``"transpose"``), so a tie cannot silently change what a layer computes.
    """
    if transform not in ("same", "transpose"):
        raise TieError(f"tie: transform must be 'same' or 'transpose', got {transform!r}")
    src_param = src_module._parameters.get(src_name)
    if not isinstance(src_param, nn.Parameter):
        raise TieError(
            f"tie: {type(src_module).__name__} has no Parameter {src_name!r} to share"
        )
    if parametrize.is_parametrized(dst_module, dst_name):
        raise TieError(f"tie: {type(dst_module).__name__}.{dst_name} is already parametrized")
    if transform == "transpose" and src_param.dim() != 2:
        raise TieError(
            f"tie: transform='transpose' needs a 2-D source, {src_name} has shape "
            f"{tuple(src_param.shape)}"
        )
    want = tuple(src_param.shape) if transform == "same" else tuple(src_param.shape[::-1])
    old = dst_module._parameters.get(dst_name)
    if old is not None and tuple(old.shape) != want:
        raise TieError(
            f"tie: {type(dst_module).__name__}.{dst_name} has shape {tuple(old.shape)} but "
            f"transform={transform!r} of {src_name} {tuple(src_param.shape)} gives {want}"
        )
    if dst_name in dst_module._parameters:
        del dst_module._parameters[dst_name]
    elif hasattr(dst_module, dst_name):
        raise TieError(
            f"tie: {type(dst_module).__name__}.{dst_name} exists and is not a Parameter"
        )
    dst_module.register_parameter(dst_name, src_param)
    if transform == "transpose":
        # unsafe=True: the parametrization changes the shape on purpose (src is (a, b), dst
        # computes with (b, a)). No right_inverse, so `original` stays the very same object.
        parametrize.register_parametrization(dst_module, dst_name, _Transpose(), unsafe=True)
        assert dst_module.parametrizations[dst_name].original is src_param

    # Plain attributes (object.__setattr__), not submodules: the tie must not register
    # src_module as a child of dst_module. deepcopy copies them with the modules, so a
    # copied model's ties point into the copy.
    if not hasattr(dst_module, _TIES_ATTR):
        object.__setattr__(dst_module, _TIES_ATTR, {})
    getattr(dst_module, _TIES_ATTR)[dst_name] = _TieSpec(src_module, src_name, transform, src_param)
    if not hasattr(src_module, _SOURCES_ATTR):
        object.__setattr__(src_module, _SOURCES_ATTR, [])
    getattr(src_module, _SOURCES_ATTR).append((dst_module, dst_name))
    for m in (src_module, dst_module):
        if not getattr(m, _HOOKED_ATTR, False):
            m.register_load_state_dict_post_hook(_reconcile_after_load)
            object.__setattr__(m, _HOOKED_ATTR, True)


def _dst_param(dst_module: nn.Module, dst_name: str, spec: _TieSpec) -> nn.Parameter | None:
    if spec.transform == "transpose":
        if not parametrize.is_parametrized(dst_module, dst_name):
            return None
        return dst_module.parametrizations[dst_name].original
    return dst_module._parameters.get(dst_name)


def _set_dst_param(dst_module: nn.Module, dst_name: str, spec: _TieSpec, p: nn.Parameter) -> None:
    if spec.transform == "transpose":
        dst_module.parametrizations[dst_name]._parameters["original"] = p
    else:
        dst_module._parameters[dst_name] = p


def _reconcile(dst_module: nn.Module, dst_name: str, spec: _TieSpec) -> None:
    """Re-join a pair after one or both sides were replaced by a new Parameter.

    The side that was replaced (not ``spec.param``) holds the newer values, so the other side is
    re-pointed to it. If both were replaced, their values must agree, or we raise.
    """
    s = spec.src_module._parameters.get(spec.src_name)
    d = _dst_param(dst_module, dst_name, spec)
    if s is None or d is None or s is d:
        if s is not None and s is d:
            spec.param = s
        return
    if d is spec.param:  # only the source was replaced
        _set_dst_param(dst_module, dst_name, spec, s)
        spec.param = s
    elif s is spec.param:  # only the destination was replaced
        spec.src_module._parameters[spec.src_name] = d
        spec.param = d
    elif s.shape == d.shape and s.dtype == d.dtype and torch.equal(s.detach(), d.detach()):
        _set_dst_param(dst_module, dst_name, spec, s)
        spec.param = s
    else:
        raise TieError(
            f"tie broken: {type(dst_module).__name__}.{dst_name} and "
            f"{type(spec.src_module).__name__}.{spec.src_name} were replaced by Parameters "
            "with different values"
        )


def _reconcile_after_load(module: nn.Module, incompatible_keys) -> None:
    """load_state_dict post-hook (a module-level function so deepcopy and pickle keep it)."""
    for dst_name, spec in getattr(module, _TIES_ATTR, {}).items():
        _reconcile(module, dst_name, spec)
    for dst_module, dst_name in getattr(module, _SOURCES_ATTR, []):
        _reconcile(dst_module, dst_name, getattr(dst_module, _TIES_ATTR)[dst_name])


def _param_names(module: nn.Module) -> dict[int, list[str]]:
    """id(Parameter) -> every qualified name it is reachable under (aliases included)."""
    names: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def _params_by_id(module: nn.Module) -> dict[int, nn.Parameter]:
    return {id(p): p for p in module.parameters()}


def tied_groups(module: nn.Module) -> list[list[str]]:
    """Parameter names that are one Parameter object, one list per shared Parameter.

    Transposed ties show up too: the destination's name is
    ``<dst>.parametrizations.<name>.original``.
    """
    return sorted(sorted(g) for g in _param_names(module).values() if len(g) > 1)


def declared_ties(module: nn.Module) -> list[TieInfo]:
    """The ties recorded by :func:`tie` inside ``module``, by qualified names."""
    qual = {id(m): name for name, m in module.named_modules(remove_duplicate=False)}
    out = []
    for mname, m in module.named_modules():
        for dst_name, spec in getattr(m, _TIES_ATTR, {}).items():
            src_mod = qual.get(id(spec.src_module))
            src = f"{src_mod}.{spec.src_name}".lstrip(".") if src_mod is not None else (
                f"<outside>.{spec.src_name}"
            )
            out.append(TieInfo(src, f"{mname}.{dst_name}".lstrip("."), spec.transform))
    return out


def share_modules(root: nn.Module, groups: Iterable[Iterable[str]]) -> None:
    """Declare that each group of submodule names of ``root`` is ONE module instance (a block
    run at several depths): every parameter inside is then one Parameter under several names,
    so both uses' gradients sum into one ``.grad``, an optimizer keeps one state and a
    checkpoint stores it once. :func:`check_ties` verifies the declaration."""
    declared = [sorted(g) for g in groups if len(list(g)) > 1]
    for group in declared:
        first = root.get_submodule(group[0])
        if any(root.get_submodule(n) is not first for n in group[1:]):
            raise TieError(f"share_modules: {group} are not one module instance")
    setattr(root, _SHARES_ATTR, getattr(root, _SHARES_ATTR, []) + declared)


def shared_modules(module: nn.Module) -> list[list[str]]:
    """Submodule names under which one module instance is reachable, one list per instance
    (outermost only: the submodules of a shared block are not listed again)."""
    names: dict[int, list[str]] = {}
    for name, m in module.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(name)
    groups = sorted(sorted(g) for g in names.values() if len(g) > 1)
    return [g for g in groups
            if not any(g[0].startswith(o[0] + ".") for o in groups if o is not g)]


def _check_shares(module: nn.Module) -> None:
    for group in getattr(module, _SHARES_ATTR, []):
        try:
            mods = [module.get_submodule(n) for n in group]
        except AttributeError:
            raise TieError(f"share broken: {group} should be one module, but "
                           "not all of them exist") from None
        if any(m is not mods[0] for m in mods[1:]):
            raise TieError(f"share broken: {', '.join(group)} should be one module instance "
                           "(a block shared across depth) but are distinct copies")


def _storage_key(p: torch.Tensor) -> tuple | None:
    if p.device.type == "meta" or p.numel() == 0:
        return None
    try:
        return (p.device.type, p.device.index, p.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # tensor subclasses without plain storage
        return None


def check_ties(module: nn.Module, expected: Iterable[Iterable[str]] | None = None) -> None:
    """Raise :class:`TieError` unless every tie in ``module`` is one Parameter.

    Checks, in order:
    0. every module share declared with :func:`share_modules` is one module instance;
    1. every tie declared with :func:`tie` is intact (the two modules hold the same object);
    2. every group in ``expected`` (e.g. read back from a checkpoint's config) names one
       Parameter;
    3. no two distinct Parameters alias one storage (a fake tie).
    """
    names = _param_names(module)
    for m in module.modules():
        _check_shares(m)
    for mname, m in module.named_modules():
        for dst_name, spec in getattr(m, _TIES_ATTR, {}).items():
            s = spec.src_module._parameters.get(spec.src_name)
            d = _dst_param(m, dst_name, spec)
            if s is None or s is not d:
                src = names.get(id(s), [spec.src_name])[0]
                raise TieError(
                    f"tie broken: {mname + '.' if mname else ''}{dst_name} should be "
                    f"{'the transpose of ' if spec.transform == 'transpose' else ''}{src} "
                    "(one Parameter) but holds a different tensor"
                )
    by_name = {n: pid for pid, ns in names.items() for n in ns}
    for group in expected or []:
        group = list(group)
        missing = [n for n in group if n not in by_name]
        if missing:
            raise TieError(f"tie expected among {group}, but {missing} not found in the module")
        if len({by_name[n] for n in group}) != 1:
            raise TieError(f"tie broken: {group} should be one Parameter but are distinct")
    seen: dict[tuple, str] = {}
    params = _params_by_id(module)
    for pid, ns in names.items():
        key = _storage_key(params[pid])
        if key is None:
            continue
        if key in seen:
            raise TieError(
                f"fake tie: {seen[key]} and {ns[0]} are distinct Parameters sharing one storage "
                "(two grads, two optimizer states); tie them with tinylm.tie"
            )
        seen[key] = ns[0]


def check_state_dict_ties(module: nn.Module, state_dict: dict, prefix: str = "") -> None:
    """Refuse a state dict whose entries for one tied Parameter hold different values.

    Loading it would leave whichever entry is loaded last, silently.
    """
    for group in tied_groups(module):
        present = [n for n in group if prefix + n in state_dict]
        ref = present[0] if present else None
        for n in present[1:]:
            a, b = state_dict[prefix + ref], state_dict[prefix + n]
            if a.shape != b.shape or not torch.equal(a, b.to(a.dtype)):
                raise TieError(
                    f"state dict disagrees with a tie: {prefix}{ref} and {prefix}{n} are one "
                    "Parameter in the model but hold different values in the state dict"
                )


def _guard_pre_load(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    check_state_dict_ties(module, state_dict, prefix)


def _guard_post_load(module: nn.Module, incompatible_keys) -> None:
    for m in module.modules():  # children hooks ran already; re-join anything left split
        _reconcile_after_load(m, None)
    check_ties(module)


class TieGuarded(nn.Module):
    """Base class for a root module whose ties must survive its whole lifecycle.

    Adds to plain ``nn.Module``: ``load_state_dict`` refuses disagreeing tied entries and checks
    the ties after loading; ``.to()``/``.cuda()``/``.half()`` re-join ties that torch's
    overwrite-on-conversion mode split into copies, then check them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_load_state_dict_pre_hook(_guard_pre_load)
        self.register_load_state_dict_post_hook(_guard_post_load)

    def _apply(self, fn, recurse: bool = True):
        # A pair that was ONE Parameter before the conversion is one after it, whatever the
        # values: ``to_empty`` from meta gives each module its own uninitialised copy (the
        # torchtitan #2252 / accelerate #3668 untie), which must not be compared by value.
        ties = [(m, n, spec) for m in self.modules() for n, spec in getattr(m, _TIES_ATTR, {}).items()]
        intact = [spec.src_module._parameters.get(spec.src_name) is _dst_param(m, n, spec)
                  for m, n, spec in ties]
        out = super()._apply(fn, recurse)
        for (m, dst_name, spec), was_one in zip(ties, intact):
            s = spec.src_module._parameters.get(spec.src_name)
            if was_one and s is not None and s is not _dst_param(m, dst_name, spec):
                _set_dst_param(m, dst_name, spec, s)  # the source's converted copy serves both
                spec.param = s
            _reconcile(m, dst_name, spec)
        check_ties(self)
        return out
