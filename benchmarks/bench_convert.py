"""Conversion cost at SmolLM2-135M's shape, both ways: seconds and peak memory of each process.

    python benchmarks/bench_convert.py [--layers 30]

Builds a random LlamaForCausalLM with SmolLM2-135M's config (30 layers, width 576, 9 heads, 3
key/value heads, MLP 1536, vocab 49152, tied) with transformers itself, and a byte-level BPE of
that vocabulary trained on python-docs (offline), then times ``tinylm convert from-hf`` and
``tinylm convert to-hf`` as separate processes: wall seconds, and the child's peak RSS
(``ru_maxrss``), next to the size of the fp32 weights and of a bare ``import tinylm.convert.hf``
process, so what the conversion itself holds is visible. Streaming means one copy of the
weights at most: import reads one HF tensor at a time, export writes views of the loaded model.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                    num_key_value_heads=3, max_position_embeddings=2048, rms_norm_eps=1e-5,
                    rope_theta=100000.0, tie_word_embeddings=True)


def child(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one child process run to its end (its own rusage,
    from wait4: not the maximum over every child so far)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: {' '.join(cmd[2:])} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def build(hf_dir: Path, layers: int) -> None:
    """The random SmolLM2-shaped model and a 49152-token byte-level BPE, saved as HF does."""
    import torch
    from tokenizers import AddedToken
    from transformers import LlamaConfig, LlamaForCausalLM

    from tinylm.data.corpus import build_python_docs, document_texts, load_documents
    from tinylm.data.tokenizer import Tokenizer

    rows = load_documents(str(build_python_docs(hf_dir.parent / "data", progress=False)),
                          data_dir=str(hf_dir.parent))
    tok = Tokenizer.train(document_texts(rows), 49152)
    missing = 49152 - tok.vocab_size  # python-docs is too small for 49152 merges: pad with
    tok._tok.add_special_tokens([AddedToken(f"<|extra_{i}|>", special=True) for i in range(missing)])
    tok = Tokenizer(tok._tok)  # unused special tokens, so the vocabulary is SmolLM2's size
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, num_hidden_layers=layers,
                                         eos_token_id=tok.eot_id, bos_token_id=tok.eot_id,
                                         **SMOLLM2_135M))
    model.save_pretrained(hf_dir)
    tok.save(hf_dir / "tokenizer.json")
    n = sum(p.numel() for p in model.parameters())
    (hf_dir / "n_params.txt").write_text(f"{n} {tok.vocab_size} {torch.__version__}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--build", type=Path, default=None, help=argparse.SUPPRESS)  # the child's job
    args = p.parse_args()
    if args.build:
        return build(args.build, args.layers)
    # This process imports no torch and holds no weights: a child's peak RSS is its own
    work = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    os.environ.setdefault("HF_HOME", str(work / "hf-home"))
    hf_dir, py = work / "hf", sys.executable
    child([py, __file__, "--build", str(hf_dir), "--layers", str(args.layers)])
    n_params, vocab, torch_version = (hf_dir / "n_params.txt").read_text().split()
    bare = child([py, "-c", "import tinylm.convert.hf"])
    imp = child([py, "-m", "tinylm.cli", "convert", "from-hf", str(hf_dir), str(work / "tinylm")])
    exp = child([py, "-m", "tinylm.cli", "convert", "to-hf", str(work / "tinylm"), str(work / "back")])
    weights_mib = int(n_params) * 4 / 2**20
    print(f"\nSmolLM2-135M shape ({args.layers} layers, vocab {vocab}, tied): "
          f"{int(n_params) / 1e6:.1f}M parameters, {weights_mib:.0f} MiB of fp32 weights; "
          f"torch {torch_version}\n")
    print("| step | wall s | peak RSS MiB | peak - bare process MiB |\n|---|---|---|---|")
    print(f"| python -c 'import tinylm.convert.hf' | {bare[0]:.1f} | {bare[1]:.0f} | 0 |")
    for name, (wall, peak) in (("convert from-hf", imp), ("convert to-hf", exp)):
        print(f"| {name} | {wall:.1f} | {peak:.0f} | {peak - bare[1]:.0f} |")


if __name__ == "__main__":
    main()
