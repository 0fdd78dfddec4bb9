"""Copy weights out of and into a module by name, without ever sharing memory.

Two modules that share a tensor are not two models: an optimizer step on one moves the other.
So everything here copies. :func:`get_weights` returns detached clones, and :func:`set_weights`
writes values into the module's own tensors with ``copy_`` (keeping the module's dtype and
device), never by assigning a new Parameter. After a copy, training either side leaves the
other alone, whatever the optimizer.

Ties (see ``tinylm.sharing.tying``) are one Parameter reachable under several names, e.g.
``embed_tokens.weight`` and ``lm_head.weight``. Any of those names reads or writes that one
Parameter, so setting ``lm_head.weight`` sets the whole group. Two names of one group given
with different values are refused: there is only one matrix to put them in.

Public API::

    get_weights(module, names=None) -> dict[str, Tensor]
    set_weights(module, weights, strict=False) -> CopyReport
    CopyReport, Copied
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
from torch import nn


@dataclass(frozen=True)
class Copied:
    """One tensor written: from ``source`` (a name in the given weights, or in a teacher) to
    ``target`` (a name in the module written to)."""

    source: str
    target: str
    shape: tuple[int, ...]  # the target's shape
    note: str = ""  # e.g. the tie group it set, or the slice taken


@dataclass
class CopyReport:
    """What a copy did, so nothing is copied or left out silently.

    ``missing`` names module tensors nothing was written to (allowed: partial sets are a
    feature); ``unexpected`` names given tensors the module lacks (ignored unless strict);
    ``skipped`` names source tensors left out on purpose, with why. A shape mismatch is never
    in a report: it raises before anything is written.
    """

    title: str = "copy"
    copied: list[Copied] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source name, why)

    @property
    def set_names(self) -> list[str]:
        """Target names written, in order."""
        return [c.target for c in self.copied]

    def summary(self) -> str:
        return (f"{self.title}: {len(self.copied)} copied, {len(self.skipped)} skipped, "
                f"{len(self.missing)} missing, {len(self.unexpected)} unexpected")

    def __str__(self) -> str:
        """A fixed-width table, one row per tensor: status, source, target, shape, note."""
        rows = [("status", "source", "target", "shape", "note")]
        rows += [("copied", c.source, c.target, _fmt_shape(c.shape), c.note) for c in self.copied]
        rows += [("skipped", name, "-", "", why) for name, why in self.skipped]
        rows += [("missing", "-", name, "", "not given: left as it was") for name in self.missing]
        rows += [("unexpected", name, "-", "", "not in the module: ignored")
                 for name in self.unexpected]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths)) + "  " + r[4]
                 for r in rows]
        return "\n".join([self.summary(), *(line.rstrip() for line in lines)])


def _fmt_shape(shape: Iterable[int]) -> str:
    return str(tuple(int(s) for s in shape))


def named_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer under every name it is reachable by (tie aliases included):
    the names ``state_dict`` uses."""
    out: dict[str, torch.Tensor] = dict(module.named_parameters(remove_duplicate=False))
    out.update(module.named_buffers(remove_duplicate=False))
    return out


def _unknown(name: str, known: Iterable[str], module: nn.Module) -> str:
    match = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {match[0]!r}?)" if match else ""
    return f"{type(module).__name__} has no parameter or buffer {name!r}{hint}"


def get_weights(module: nn.Module, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Detached clones of ``module``'s tensors by name: all of them (every tie alias too, each
    its own clone) or just ``names``. Mutating a result never touches the module, and a result
    is a plain tensor, not a Parameter, so no optimizer can pick it up by accident.

    An unknown name raises ``KeyError`` naming it.
    """
    tensors = named_tensors(module)
    wanted = list(tensors) if names is None else list(names)
    for name in wanted:
        if name not in tensors:
            raise KeyError(f"get_weights: {_unknown(name, tensors, module)}")
    return {name: tensors[name].detach().clone() for name in wanted}


def set_weights(
    module: nn.Module, weights: Mapping[str, torch.Tensor], strict: bool = False
) -> CopyReport:
    """Copy ``weights`` into ``module``'s tensors in place and report what happened.

    Values are copied (``copy_`` under no_grad) into the existing tensors, so each keeps its
    dtype, device and identity: optimizers, ties and hooks holding it stay valid. A partial
    dict is fine; the rest is listed as ``missing``. Names the module lacks are listed as
    ``unexpected``, or raise ``ValueError`` when ``strict``.

    Everything is checked before anything is written, so a failed call leaves the module as it
    was. Raises ``ValueError`` for a shape mismatch (naming the tensor and both shapes), or for
    two names of one tie group given different values.
    """
    tensors = named_tensors(module)
    unexpected = [n for n in weights if n not in tensors]
    if strict and unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ValueError(f"set_weights(strict=True): {_unknown(unexpected[0], tensors, module)}{more}")
    given = [n for n in weights if n in tensors]

    bad = [n for n in given if tuple(weights[n].shape) != tuple(tensors[n].shape)]
    if bad:
        n = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ValueError(f"set_weights: shape mismatch for {n}: given {_fmt_shape(weights[n].shape)}, "
                         f"module has {_fmt_shape(tensors[n].shape)}{more}")

    # Names of one object are one tie group: its members must agree, and one write sets all.
    aliases: dict[int, list[str]] = {}
    for name, t in tensors.items():
        aliases.setdefault(id(t), []).append(name)
    first_given: dict[int, str] = {}
    for n in given:
        key = id(tensors[n])
        if key in first_given:
            ref = first_given[key]
            a, b = weights[ref].detach(), weights[n].detach().to(weights[ref].device)
            if not torch.equal(a, b.to(a.dtype)):
                raise ValueError(f"set_weights: {ref} and {n} are one tied Parameter but were "
                                 "given different values")
        else:
            first_given[key] = n

    report = CopyReport(title="set_weights", unexpected=unexpected)
    with torch.no_grad():
        for n in given:
            target = tensors[n]
            group = aliases[id(target)]
            if first_given[id(target)] == n:
                target.copy_(weights[n].detach())
            note = f"tie group: {', '.join(group)}" if len(group) > 1 else ""
            report.copied.append(Copied(n, n, tuple(target.shape), note))
    written = set(first_given)
    report.missing = [n for n, t in tensors.items() if id(t) not in written]
    return report
