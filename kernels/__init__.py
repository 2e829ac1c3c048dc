"""Sequence-mixing kernels: a token-by-token reference and a chunked PyTorch path for each op."""
