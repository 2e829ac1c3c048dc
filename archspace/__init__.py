"""archspace: declarative architecture search for memory-based sequence models."""
__version__ = "0.1.0"
