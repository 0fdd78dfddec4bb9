"""Parallelism kept out of the model (torchtitan's rule): DDP or FSDP2 wrapping that keeps
every tie in one group, and the cross-process check of tied parameters and gradients.

May import: common, sharing
"""
