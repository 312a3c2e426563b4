"""The one base class of every error a user can fix.

Each layer raises its own subclass (:class:`ConfigError`, ``DataError``, ``ModelFolderError``,
...) with a one-line message that names the setting or file and what to do; the command line
prints that line and exits with code 2. Anything else is a bug and keeps its traceback. Standard
library only, so every floor of the package can import it.
"""

from __future__ import annotations


class TextdiffError(Exception):
    """A problem with the user's input, files, settings or machine (never a bug of textdiff).
    Subclasses that report a bad value also derive from ``ValueError``."""


class ConfigError(TextdiffError, ValueError):
    """A configuration value is unknown, mistyped or out of range."""


class ResourceError(TextdiffError, ValueError):
    """A request needs more memory (or another resource) than the machine has."""
