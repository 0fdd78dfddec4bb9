"""tinylm: small GPT-style language models whose weight sharing is done right.

The names a user needs, importable from the top (``from tinylm import GPT, tie``). They are
loaded on first use (PEP 562), so ``import tinylm`` stays as fast as an empty package and
``tinylm --help`` does not pay for torch. Each lives in one package of the layout; the
packages, bottom to top, are listed in the README's tree and in each ``__init__``'s docstring.
"""

__version__ = "0.2.0"

# module (under tinylm.) -> the public names it defines; one string, read on first use only
_EXPORTS = """
sharing.tying: tie tied_groups check_ties TieError TieGuarded
sharing.weights: get_weights set_weights CopyReport
model.gpt: GPT
model.config: GPTConfig
model.autoencoder: TiedAutoencoder
data.tokenizer: Tokenizer
data.prepare: DataConfig prepare
checkpoint.format: load_model
checkpoint.load: load_for_inference
checkpoint.artifact: pack load_artifact
eval.loss: evaluate_checkpoint
infer.generate: generate
convert.student: make_student
convert.hf: export_to_hf import_from_hf
train.config: TrainConfig load_config
train.trainer: Trainer
"""  # (tinylm.train is the package; a run is Trainer(cfg).fit() or the tinylm command)




def _where() -> dict[str, str]:
    """Public name -> its module, parsed from :data:`_EXPORTS`."""
    pairs = (line.split(":") for line in _EXPORTS.strip().splitlines())
    return {name: module for module, names in pairs for name in names.split()}


def __getattr__(name: str):
    """PEP 562: called for a name this module lacks. Imports the defining module on first
    access and caches the name here; ``__all__`` comes from the same table."""
    if name == "__all__":
        value = sorted(_where())
    elif (module := _where().get(name)) is not None:
        from importlib import import_module  # (here: import tinylm itself imports nothing)

        value = getattr(import_module(f"tinylm.{module}"), name)
    else:
        raise AttributeError(f"module 'tinylm' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_where()})
