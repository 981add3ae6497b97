"""Errors that mean "bad input": the CLI prints them as one line and exits non-zero, with no traceback."""


class LmforgeError(Exception):
    """A problem with what the user gave us (a file, a record, a key), not a bug in lmforge."""

    exit_code = 2


class ConfigError(LmforgeError):
    """A config file or override that does not fit the schema."""


class DataError(LmforgeError):
    """An input file or record that cannot be read or used."""
