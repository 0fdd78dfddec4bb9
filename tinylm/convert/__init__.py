"""One checkpoint into another: Hugging Face Llama export and import with the tie guarded,
and a smaller student from a teacher (chosen layers, optionally narrower).

May import: common, sharing, model, data, checkpoint
"""
