"""Errors of the training pipeline. Each carries a one-line, user-facing message; the CLI prints it
and exits with the code below. Nothing is written to the registry when one is raised.

    PipelineError (exit 1)
    ├── ConfigError (exit 2)   the config file or a command-line override is wrong
    └── DataError (exit 2)     a dataset is missing, malformed or unusable
"""


class PipelineError(Exception):
    exit_code = 1


class ConfigError(PipelineError):
    exit_code = 2


class DataError(PipelineError):
    exit_code = 2
