"""Starting flows from the library (the CLI, the web console) without importing them.

Imports go one way: ``flows/`` → ``tasks/`` → ``mailcast``. The library still has to *start*
flows (``mailcast send`` runs ``send-campaign`` in-process), so it looks them up by name in
the ``mailcast.flows`` entry-point group that ``pyproject.toml`` declares, and never names a
module of ``flows/`` or ``tasks/``.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from mailcast.errors import MailcastError

GROUP = "mailcast.flows"


def get_flow(name: str) -> Any:
    """The Prefect flow registered as ``name`` (``send-campaign``, ``export-run``, ...)."""
    found = entry_points(group=GROUP, name=name)
    for ep in found:
        return ep.load()
    raise MailcastError(
        f"no flow named {name!r} is installed",
        where=GROUP,
        hint="reinstall mailcast (`pip install -e .` in a checkout): its flows are registered"
        " as entry points",
    )
