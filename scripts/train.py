"""Train a tinylm GPT.

    accelerate launch [accelerate flags] scripts/train.py [CONFIG.yaml] [dotted.key=value ...]

CONFIG defaults to configs/default.yaml; overrides use dotted keys (model.n_layer=6,
run_dir=runs/x, checkpoint.resume=auto). Also runs as plain `python scripts/train.py`.
"""

import signal
import sys

from tinylm.checkpoint import CheckpointError
from tinylm.config import ConfigError, load_config
from tinylm.corpus import DataError
from tinylm.distill import TokenizerMismatchError
from tinylm.sync_check import TiedSyncError
from tinylm.train import TrainingDiverged, train
from tinylm.tying import TieError


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    config_path = argv[0] if argv and "=" not in argv[0] else None
    overrides = argv[1:] if config_path else argv
    try:
        cfg = load_config(config_path, overrides)
        summary = train(cfg)
    except (ConfigError, DataError, CheckpointError, TokenizerMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (TrainingDiverged, TiedSyncError, TieError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if summary["stopped_by"]:
        return 128 + signal.Signals[summary["stopped_by"]].value
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
