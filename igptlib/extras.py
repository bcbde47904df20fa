"""The optional packages: those only some of igpt's work needs, each installed by an extra of
pyproject.toml (`pip install 'igptlib[course]'`), so that the core install stays the library and
the `igpt` command.

    require(module, extra, purpose)   import an optional module, or say which extra installs it
"""
from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ModuleNotFoundError, ValueError):
    """An optional package is not installed; the message names the extra that installs it.

    A ValueError too, so that `igpt` reports it as it reports other problems the user can fix: in
    one line, with exit status 2.
    """


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """`module` imported, or MissingExtra: "<purpose> needs <module>, ...: pip install 'igptlib[<extra>]'"."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module.split(".")[0]:
            raise  # the package is there but broken: its own error says more
        raise MissingExtra(f"{purpose} needs {module}, which is not installed: pip install 'igptlib[{extra}]'",
                           name=module) from None
