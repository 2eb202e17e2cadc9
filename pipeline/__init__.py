"""Switchyard's training pipeline: a CSV and a config in, a versioned, verified artifact out."""
