"""The models: GPT (Llama-shaped, embedding and head tied) with its config, rotary positions
and KV cache, and a tied autoencoder. Pure modules: no data, no training, no parallelism.

May import: sharing
"""
