"""User-facing errors: one line that says what is wrong and what to do, never a traceback."""


class OracleKDError(Exception):
    """Base class for errors that the CLI prints as a single line (exit code 2)."""


class ConfigError(OracleKDError):
    """A config key or value is unknown, of the wrong type, or out of range."""


class DatasetError(OracleKDError):
    """A dataset folder is missing or malformed, or a data file is unsafe to read."""


class CheckpointError(OracleKDError):
    """A checkpoint is missing, unsafe, or does not fit the architecture it is loaded into."""


class TrainingError(OracleKDError):
    """A run cannot go on (a non-finite loss): it stopped with its last good checkpoint kept."""


def require(ok: bool, key: str, value: object, rule: str) -> None:
    """Raise `ConfigError("<key>=<value> <rule>")` unless `ok`: the one-line form every check uses."""
    if not ok:
        raise ConfigError(f"{key}={value!r} {rule}")


def choice(key: str, value: object, allowed: "list[str] | tuple[str, ...]") -> None:
    """`value` must be one of `allowed`; the message lists them."""
    require(value in allowed, key, value, f"is not one of: {', '.join(allowed)}")
