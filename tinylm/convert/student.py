"""Build a smaller student from a trained teacher by copying some of its weights.

A student initialised from its teacher's blocks starts far ahead of a random one (DistilBERT
takes one teacher layer in two). :func:`make_student` keeps the teacher's architecture and
copies, in teacher order, the blocks :func:`select_layers` picks, plus the embedding (which
is also the LM head) and the final norm. Everything is copied, nothing shared: the student
gets its own tie, built by ``GPT`` itself, and training it never moves the teacher.

Width reduction (``n_embd`` smaller than the teacher's) is supported by keeping a prefix,
the same prefix everywhere, so that every kept weight still meets the channels it met in the
teacher:

- residual channels: the first ``n_embd`` (embedding columns, both norms, the input columns
  of q/k/v and gate/up, the output rows of o_proj and down);
- attention heads: the first ``n_embd / head_dim`` heads, head_dim unchanged (so rotary sees
  the same frequencies): rows ``[:n_embd]`` of each of q, k and v, columns ``[:n_embd]`` of
  o_proj. ``n_embd`` must therefore be a multiple of the teacher's head_dim;
- MLP units: the first ``hidden`` of gate and, at the same indices, of up and of down's
  columns, where ``hidden`` is what the student's config gives (Llama's 8/3 rule for
  ``mlp_hidden=0``, else the teacher's ``mlp_hidden`` scaled by the width ratio).

A prefix is not the best subset (ranking channels by weight norm or activation would keep
more of the teacher) but it is deterministic, needs no data, and makes the slices easy to
check. It is a starting point for distillation, not a pruned model to ship as is.

:func:`write_student` publishes a student as a checkpoint directory, which a training run
starts from with ``checkpoint.init_from`` (see ``tinylm.checkpoint.format.init_from``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from tinylm.checkpoint.format import TOKENIZER_FILE, load_model, publish_student, resolve_checkpoint
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT
from tinylm.sharing.tying import check_ties, tied_groups
from tinylm.sharing.weights import Copied, CopyReport, set_weights

# -- which layers ----------------------------------------------------------------------------


def _positive_int(text: str, spec: str) -> int:
    try:
        k = int(text)
    except ValueError:
        raise ValueError(f"layers={spec!r}: {text!r} is not an integer") from None
    if k <= 0:
        raise ValueError(f"layers={spec!r}: {k} must be positive")
    return k


def select_layers(spec: str, teacher_layers: int, student_layers: int | None = None) -> list[int]:
    """The teacher block indices a student keeps, in order.

    ``every:k`` keeps 0, k, 2k, ... (the first block always: it reads the raw embeddings);
    ``first:k`` keeps 0..k-1; ``last:k`` keeps the last k; ``0,2,4,7`` is an explicit list,
    which must be strictly increasing (blocks are residual updates applied in order, so a
    shuffled list is almost surely a typo). ``student_layers``, when given, must equal the
    number selected. Every bad spec raises ``ValueError`` naming it.
    """
    if teacher_layers <= 0:
        raise ValueError(f"teacher_layers={teacher_layers} must be positive")
    spec = spec.strip()
    kind, sep, arg = spec.partition(":")
    if sep and kind in ("every", "first", "last"):
        k = _positive_int(arg.strip(), spec)
        if k > teacher_layers:
            raise ValueError(f"layers={spec!r}: {k} exceeds the teacher's {teacher_layers} layers")
        if kind == "every":
            chosen = list(range(0, teacher_layers, k))
        elif kind == "first":
            chosen = list(range(k))
        else:
            chosen = list(range(teacher_layers - k, teacher_layers))
    elif sep:
        raise ValueError(f"layers={spec!r}: expected every:K, first:K, last:K or a list like 0,2,4")
    else:
        parts = [p.strip() for p in spec.split(",")]
        if not spec or any(not p for p in parts):
            raise ValueError(f"layers={spec!r}: expected every:K, first:K, last:K or a list like 0,2,4")
        chosen = []
        for p in parts:
            try:
                chosen.append(int(p))
            except ValueError:
                raise ValueError(f"layers={spec!r}: {p!r} is not a layer index") from None
        for i in chosen:
            if not 0 <= i < teacher_layers:
                raise ValueError(f"layers={spec!r}: layer {i} is out of range for a teacher with "
                                 f"{teacher_layers} layers (0..{teacher_layers - 1})")
        dup = sorted({i for i in chosen if chosen.count(i) > 1})
        if dup:
            raise ValueError(f"layers={spec!r}: layer {dup[0]} is selected more than once")
        if chosen != sorted(chosen):
            raise ValueError(f"layers={spec!r}: indices must be increasing (blocks are copied in "
                             "teacher order)")
    if student_layers is not None and len(chosen) != student_layers:
        raise ValueError(f"layers={spec!r} selects {len(chosen)} layers {chosen} but the student "
                         f"has {student_layers}")
    return chosen


# -- the student's shape -----------------------------------------------------------------------


def student_layer_map(teacher: GPTConfig, chosen: list[int]) -> list[int] | None:
    """The student's layer map for the teacher depths ``chosen``: two chosen depths that run
    one teacher block run one student block (so the student computes what those depths of
    the teacher did), numbered in order of first use; None when nothing is shared."""
    blocks = [teacher.depth_map[d] for d in chosen]
    order = list(dict.fromkeys(blocks))
    return None if len(order) == len(blocks) else [order.index(b) for b in blocks]


def student_config(teacher: GPTConfig, n_layer: int, n_embd: int | None = None,
                   layer_map: list[int] | None = None) -> GPTConfig:
    """The teacher's config with ``n_layer`` depths (sharing blocks as ``layer_map`` says)
    and, optionally, a narrower width (fewer heads of the same head_dim; see the module
    docstring)."""
    teacher = replace(teacher, layer_map=None)  # the teacher's map is over its own depths
    if n_embd is None or n_embd == teacher.n_embd:
        return replace(teacher, n_layer=n_layer, layer_map=layer_map)
    hd = teacher.head_dim
    if teacher.kv_heads != teacher.n_head or teacher.head_size:
        raise ValueError(f"n_embd={n_embd}: narrowing a grouped-query teacher or one whose "
                         "heads are not n_embd/n_head wide (an import) is not supported; keep "
                         "its width, or choose layers only")
    if n_embd > teacher.n_embd:
        raise ValueError(f"n_embd={n_embd}: wider than the teacher's {teacher.n_embd}; a "
                         "student can only keep channels the teacher has")
    if n_embd <= 0 or n_embd % hd:
        raise ValueError(f"n_embd={n_embd}: must be a positive multiple of the teacher's head_dim "
                         f"{hd} (whole heads are kept, head_dim unchanged)")
    hidden = 0
    if teacher.mlp_hidden:
        hidden = max(1, teacher.mlp_hidden * n_embd // teacher.n_embd)
    return replace(teacher, n_layer=n_layer, n_embd=n_embd, n_head=n_embd // hd, mlp_hidden=hidden,
                   layer_map=layer_map)


def _slice(name: str, w: torch.Tensor, t: GPTConfig, s: GPTConfig) -> tuple[torch.Tensor, str]:
    """The part of teacher tensor ``name`` the student keeps (see the module docstring), and a
    note saying which part it is ("" when the whole)."""
    C, c = t.n_embd, s.n_embd
    H, h = t.hidden_dim, s.hidden_dim
    if (C, H) == (c, h):
        return w, ""
    if name.endswith("qkv_proj.weight"):
        part = torch.cat([w[i * C: i * C + c, :c] for i in range(3)])
        return part, f"heads 0..{s.n_head - 1} of q, k, v; input channels 0..{c - 1}"
    if name.endswith("o_proj.weight"):
        return w[:c, :c], f"channels 0..{c - 1}; heads 0..{s.n_head - 1}"
    if name.endswith("gate_up_proj.weight"):
        return torch.cat([w[:h, :c], w[H:H + h, :c]]), f"units 0..{h - 1} of gate and up; channels 0..{c - 1}"
    if name.endswith("down_proj.weight"):
        return w[:c, :h], f"channels 0..{c - 1}; units 0..{h - 1}"
    if name.endswith(("embed_tokens.weight", "lm_head.weight")):
        return w[:, :c], f"channels 0..{c - 1}"
    if name.endswith("norm.weight"):  # input_layernorm, post_attention_layernorm, norm
        return w[:c], f"channels 0..{c - 1}"
    raise ValueError(f"make_student: no width-reduction rule for {name}")


def _student_name(name: str, keep: dict[int, int]) -> str | None:
    """layers.{i}.x -> layers.{keep[i]}.x; None for a block not kept; others unchanged."""
    if not name.startswith("layers."):
        return name
    _, i, rest = name.split(".", 2)
    j = keep.get(int(i))
    return None if j is None else f"layers.{j}.{rest}"


def make_student(teacher: GPT, layers: str, n_embd: int | None = None) -> tuple[GPT, CopyReport]:
    """A new GPT made of the teacher's selected blocks (``layers``, see :func:`select_layers`),
    its embedding/head and final norm, copied; optionally narrower (``n_embd``, see the module
    docstring). Returns the student (train mode, on the teacher's device and dtype) and a report
    with every teacher tensor, copied (teacher name -> student name) or skipped (with why).

    The student's tie is its own Parameter; nothing is shared with the teacher. Over a
    teacher that shares blocks across depth, ``layers`` picks depths: chosen depths that run
    one teacher block share one student block (:func:`student_layer_map`), copied once.
    """
    if not isinstance(teacher, GPT):
        raise TypeError(f"make_student: teacher must be a tinylm GPT, got {type(teacher).__name__}")
    chosen = select_layers(layers, teacher.config.n_layer)
    cfg = student_config(teacher.config, len(chosen), n_embd,
                         student_layer_map(teacher.config, chosen))
    ref = next(teacher.parameters())
    student = GPT(cfg).to(device=ref.device, dtype=ref.dtype)
    keep = {i: j for j, i in enumerate(chosen)}

    title = f"make_student (layers {layers} -> teacher depths {chosen}"
    if teacher.config.n_unique_layers < teacher.config.n_layer:  # say what became of the shares
        title += (f", which run its unique blocks {[teacher.config.depth_map[d] for d in chosen]}, so the "
                  f"student's layer_map is {cfg.layer_map or 'none (nothing shared)'}")
    report = CopyReport(title=title + ")")
    values: dict[str, torch.Tensor] = {}
    groups = {n: g for g in tied_groups(teacher) for n in g}
    copied: dict[int, tuple[str, str]] = {}  # teacher Parameter -> (teacher name, student name)
    for name, p in teacher.named_parameters(remove_duplicate=False):
        target = _student_name(name, keep)
        if target is None:
            report.skipped.append((name, f"block {name.split('.')[1]} not selected"))
            continue
        if id(p) in copied:  # a tie group, or a block shared across depth, is copied once
            first, first_target = copied[id(p)]
            report.copied.append(Copied(name, target, tuple(values[first_target].shape),
                                        f"tied to {first}: copied with it (the student's own tie)"))
            continue
        copied[id(p)] = (name, target)
        part, note = _slice(name, p.detach(), teacher.config, cfg)
        values[target] = part
        if name in groups:
            note = "; ".join(x for x in (note, f"tie group {', '.join(groups[name])}") if x)
        report.copied.append(Copied(name, target, tuple(part.shape), note))

    written = set_weights(student, values, strict=True)
    if written.missing:  # every student tensor must come from the teacher
        raise RuntimeError(f"make_student: student tensors not copied: {written.missing}")
    check_ties(student)
    return student, report


# -- writing a student checkpoint -------------------------------------------------------------


def write_student(teacher_path: str | Path, layers: str, out: Path,
                  n_embd: int | None = None) -> tuple[GPT, GPT, CopyReport]:
    """Build the student of checkpoint ``teacher_path`` (or a run dir's latest) and publish it
    as the checkpoint directory ``out``. Its config keeps the teacher's training config with
    the student's model section, and the teacher's validation split, so evaluate needs no
    data. Returns (teacher, student, copy report)."""
    ckpt = resolve_checkpoint(teacher_path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # before the work
        raise ValueError(f"{out}: exists and is not an empty directory")
    teacher, cfg = load_model(ckpt)
    student, report = make_student(teacher, layers, n_embd)
    train_config = {**cfg.get("train", {}), "model": student.config.to_dict()}
    extra = {k: cfg[k] for k in ("data_dir", "val_tokens", "val_bytes") if k in cfg}
    extra["student_of"] = {"teacher": str(ckpt), "layers": layers,
                           "teacher_layers": select_layers(layers, teacher.config.n_layer),
                           "n_embd": student.config.n_embd}
    publish_student(out, student, train_config, ckpt / TOKENIZER_FILE, extra)
    return teacher, student, report
