"""Judging a model: loss, perplexity and bits per byte over a split; downstream tasks
(multiple choice, cloze) scored as lm-eval-harness scores them, and lm-eval itself on a model
in memory; in the training loop (the very module being trained) or on a checkpoint; the
run's report card.

May import: common, model, data, checkpoint, infer
"""
