"""Retraining, evaluation and promotion of model versions (coming with the model registry)."""
