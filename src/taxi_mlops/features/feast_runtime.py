"""Feast without typeguard's ``@typechecked``: imported before Feast itself.

Feast decorates its definition classes (entities, feature views, sources, services) with
typeguard's ``@typechecked``. The decorator re-parses and recompiles each class's module at
import: about 2.6 of the 4 s an ``import feast`` takes on this machine, paid by every
process and CLI command that reads or writes features (typeguard#468, open). And it checks
the argument types of every call to those classes at run time, on the serving path too
(featurebyte patched it out of Feast for online reads: featurebyte#2363). typeguard's only
switch is ``python -O``, which also drops every ``assert`` of every library, and did not
bring the import time down here anyway. So the decorator is made a no-op for Feast's own
modules, and only for them: any other code's ``@typechecked`` still checks.
"""

from __future__ import annotations

import importlib.util
import sys


def skip_feast_type_checks() -> bool:
    """Install the filter (idempotent); False when it cannot apply: Feast not installed, or
    already imported (its classes are decorated by then)."""
    if "feast" in sys.modules or importlib.util.find_spec("feast") is None:
        return False
    import typeguard

    checked = typeguard.typechecked
    if getattr(checked, "skips_feast", False):
        return True

    def typechecked(target=None, **options):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller == "feast" or caller.startswith("feast."):
            return target if target is not None else (lambda decorated: decorated)
        return checked(target, **options) if target is not None else checked(**options)

    typechecked.skips_feast = True
    typeguard.typechecked = typechecked
    return True
