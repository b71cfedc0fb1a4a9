"""The local stack: every service definition (``services``, ``streaming``, ``monitoring``),
the process supervisor (``process``) and the one ``up`` the CLI, the test fixtures and the
benches share."""

from __future__ import annotations

from typing import Callable

from taxi_mlops.settings import Settings


def up(settings: Settings, supervisor=None, report: Callable[[str, str, str], None] | None = None,
       step: Callable[[str], object] | None = None) -> None:
    """Start every service in order (idempotent), each followed by its set-up hook.

    The admin token is generated first (state-changing endpoints need it). A model server
    waits until a champion exists: ``taxi-mlops train`` (or ``deploy``) starts it then.
    ``report(name, state, detail)`` hears of each service; ``step(text)`` returns a context
    manager shown while a slow step runs (the CLI's spinner), or None.
    """
    from contextlib import nullcontext

    from taxi_mlops import security
    from taxi_mlops.stack import services
    from taxi_mlops.stack.process import Supervisor

    report = report or (lambda *_: None)
    step = step or (lambda _text: nullcontext())
    security.ensure_token(settings)
    sup = supervisor or Supervisor(settings)
    hooks = services.after_start(settings)
    champion = None
    for service in services.all_services(settings):
        if service.name.startswith("model_server"):
            if champion is None:
                champion = services.champion_exists(settings)
            if not champion:
                report(service.name, "waiting", f"no '{settings.serving_alias}' model yet; "
                                                "`taxi-mlops train` registers one and deploys it")
                continue
        with step(f"starting {service.name} …"):
            state = sup.start(service)
        report(service.name, state, service.url)
        if service.name in hooks:
            with step(f"setting up after {service.name} …"):
                hooks[service.name]()
            report(service.name, "set up", "Feast repo applied" if service.name == "redis" else "topics declared")
