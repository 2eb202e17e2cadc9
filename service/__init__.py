"""Switchyard's prediction service: loads one verified model version and answers ``POST /predict``."""
