"""Artifacts trained before the artifact package existed pickled the rule model under this module
path; unpickling them imports it from here. It lives in :mod:`artifact.rules`."""

from artifact.rules import KeywordRuleModel

__all__ = ["KeywordRuleModel"]
