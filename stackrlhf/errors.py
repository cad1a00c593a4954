"""Errors that stackrlhf raises for bad user input.

Each one carries a single readable line (file, row, field, value where they apply). The command-line entry points
catch `StackRLHFError` and print that line instead of a traceback.
"""


class StackRLHFError(ValueError):
    """Base class: a problem with the user's data, configuration or files, explained in one line."""


class DataError(StackRLHFError):
    """A data file or row that cannot be used (missing field, empty text, wrong type, undecodable line)."""


class ConfigError(StackRLHFError):
    """A configuration that cannot work (conflicting flags, unknown modules, bad paths)."""


def first_line(err: BaseException) -> str:
    """The first line of `err`'s message (its type's name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def one_line(err: BaseException) -> str:
    """`err`'s whole message on one line, whitespace collapsed (its type's name when the message is empty)."""
    return " ".join(str(err).split()) or type(err).__name__
