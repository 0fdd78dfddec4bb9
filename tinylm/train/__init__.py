"""Training under accelerate: the typed config that assembles every section, the trainer and
its loop, one optimizer step, AdamW/Muon and the LR schedule, time budgets, metrics, the
run-dir lock, distillation.

May import: common, sharing, model, data, distributed, checkpoint, eval, infer
"""
