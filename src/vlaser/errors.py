"""vlaser's own error types: the ones that report a user's mistake rather than a bug in vlaser.

The ``vlaser`` command prints a ``VlaserError`` as one line (``vlaser VERB: error: ...``) and shows the
traceback of anything else, so a bug never passes for a user mistake. Each type also subclasses the
builtin it replaced (``ValueError``, ``ImportError``, ``RuntimeError``) so callers that catch those keep working.
"""

from __future__ import annotations

import importlib


class VlaserError(Exception):
    """Something the user gave vlaser (a path, a file, a flag, a data line, an environment) is wrong; the
    message says what and where."""


class UserInputError(VlaserError, ValueError):
    """A bad path, file, flag, option or data line."""


class MissingDependencyError(VlaserError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


class ExternalServiceError(VlaserError, RuntimeError):
    """A service the user pointed vlaser at (an OpenAI-compatible server) refused or did not answer."""


def require(module: str, extra: str, purpose: str, package: str | None = None):
    """Import an optional dependency by name, or raise a ``MissingDependencyError`` naming the extra that
    installs it (so a missing extra is one clear line, and any other ImportError stays a bug's traceback)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"{purpose} needs {package or module.split('.')[0]}: "
                                     f"pip install 'vlaser[{extra}]'") from e
