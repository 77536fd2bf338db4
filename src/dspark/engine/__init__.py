"""The decoding engine: continuous batching over a paged KV cache, one speculative round per step."""
