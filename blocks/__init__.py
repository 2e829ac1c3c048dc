"""Token mixers, channel mixers and norms: torch-only modules built from resolved configs."""
