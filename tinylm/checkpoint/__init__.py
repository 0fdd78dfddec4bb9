"""Checkpoints: what one is (files, ties stored once, finding, loading, init_from), the
trainer's collective save / prune / resume, and the resume state (optimizer by parameter
name, RNG per process).

May import: common, sharing, model, data, distributed
"""
