"""User-facing errors: one line that says what is wrong and what to do, never a traceback."""


class OracleKDError(Exception):
    """Base class for errors that the CLI prints as a single line (exit code 2)."""


class ConfigError(OracleKDError):
    """A config key or value is unknown, of the wrong type, or out of range."""


class DatasetError(OracleKDError):
    """A dataset folder is missing or malformed, or a data file is unsafe to read."""


class CheckpointError(OracleKDError):
    """A checkpoint is missing, unsafe, or does not fit the architecture it is loaded into."""
