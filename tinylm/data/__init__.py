"""Text to tokens to batches: corpora (files, folders, python-docs, the Hub), the byte-level BPE
tokenizer, preparation into flat token files, and the batches cut from them. Knows no model.

May import: common
"""
