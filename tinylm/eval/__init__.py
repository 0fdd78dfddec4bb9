"""Judging a model: loss, perplexity and bits per byte over a split, in the training loop
(the very module being trained) or on a checkpoint.

May import: common, model, data, checkpoint, infer
"""
