"""The user-facing error type, free of torch and Hydra so that every layer of normexp can raise it."""


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message names the field and what is allowed."""
