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
    from taxi_mlops.stack import services, streaming
    from taxi_mlops.stack.process import Supervisor

    report = report or (lambda *_: None)
    step = step or (lambda _text: nullcontext())
    security.ensure_token(settings)
    sup = supervisor or Supervisor(settings)
    hooks = services.after_start(settings)
    champion = None
    ordered = services.all_services(settings)
    kafka_nodes = [s for s in ordered if streaming.is_kafka_node(s.name)]
    for service in ordered:
        if service.name.startswith("model_server"):
            if champion is None:
                champion = services.champion_exists(settings)
            if not champion:
                report(service.name, "waiting", f"no '{settings.serving_alias}' model yet; "
                                                "`taxi-mlops train` registers one and deploys it")
                continue
        if streaming.is_kafka_node(service.name):
            if service is not kafka_nodes[0]:
                continue  # started with node 0: a cluster's nodes start together
            with step(f"starting {', '.join(s.name for s in kafka_nodes)} …"):
                states = streaming.start_kafka(sup, kafka_nodes)
            for node, node_state in zip(kafka_nodes[1:], states[1:]):
                report(node.name, node_state, node.url)
            state = states[0]
        else:
            with step(f"starting {service.name} …"):
                state = sup.start(service)
        report(service.name, state, service.url)
        if service.name in hooks:
            with step(f"setting up after {service.name} …"):
                hooks[service.name]()
            report(service.name, "set up", "Feast repo applied" if service.name.startswith("redis")
                   else "read-only user ready" if service.name == "mlflow" else "topics declared")
