"""Running a model: sampling (temperature, top-k, top-p, stops, streaming) over a KV cache,
and the fixed-shape one-token step (a CUDA graph on GPUs, compiled on CPUs).

May import: model, data
"""
