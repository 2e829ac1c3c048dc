"""Studies: search spaces, Ray Tune orchestration, MLflow tracking."""
