"""Artifacts trained before the artifact package existed pickled the reduced linear model under this
module path; unpickling them imports it from here. It lives in :mod:`artifact.linear`."""

from artifact.linear import CalibratedLinearText

__all__ = ["CalibratedLinearText"]
