"""tinylm: small GPT-style language models whose weight sharing is done right.

The names a user needs, importable from the top (``from tinylm import GPT, tie``). They are
loaded on first use (PEP 562), so ``import tinylm`` stays as fast as an empty package and
``tinylm --help`` does not pay for torch. Each lives in one package of the layout; the
packages, bottom to top, are listed in the README's tree and in each ``__init__``'s docstring.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    # weight sharing (tinylm.sharing)
    "tie": "sharing.tying", "tied_groups": "sharing.tying", "check_ties": "sharing.tying",
    "TieError": "sharing.tying", "TieGuarded": "sharing.tying",
    "get_weights": "sharing.weights", "set_weights": "sharing.weights",
    "CopyReport": "sharing.weights",
    # models (tinylm.model)
    "GPT": "model.gpt", "GPTConfig": "model.config", "TiedAutoencoder": "model.autoencoder",
    # data (tinylm.data)
    "Tokenizer": "data.tokenizer", "DataConfig": "data.prepare", "prepare": "data.prepare",
    # checkpoints (tinylm.checkpoint)
    "load_model": "checkpoint.format", "load_for_inference": "checkpoint.format",
    # evaluation and inference (tinylm.eval, tinylm.infer)
    "evaluate_checkpoint": "eval.loss", "generate": "infer.generate",
    # conversions (tinylm.convert)
    "make_student": "convert.student", "export_to_hf": "convert.hf",
    "import_from_hf": "convert.hf",
    # training (tinylm.train)
    # (``tinylm.train`` is the package; its entry point is ``Trainer(cfg).fit()``)
    "TrainConfig": "train.config", "load_config": "train.config", "Trainer": "train.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import the defining module on first access; cache the name in this module."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tinylm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tinylm.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
