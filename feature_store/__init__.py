"""SQL feature store and model registry (coming next)."""
