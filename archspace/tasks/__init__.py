"""Synthetic and benchmark tasks used to train and evaluate architectures."""
