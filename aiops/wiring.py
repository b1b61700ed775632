"""How the services are built: the one place that wires the domains together.

``aiops detect``, ``aiops webhook`` (``aiops.cli``) and ``aiops demo up`` (``demo.up``)
build their services here and nowhere else, so the detector always gets its nightly
retrain and the webhook always starts through the fail-closed rule:

- ``detector(settings)``: the detector with its feature store and model registry
  (``detector.cycle.build_detector``);
- ``detector_app(detector)``: its HTTP service (``/metrics``, ``/healthz``, the
  scheduler) with ``training.train.retrain`` as the nightly retrain, so the detector
  never imports the trainer;
- ``webhook_policy(settings)``: the remediation policy judged by
  ``runbooks.startup.check_start`` (a start that would let unauthenticated requests
  run actions raises ``ConfigError``; a dry run with gaps returns its warning line);
- ``webhook_app(settings, policy)``: the webhook on its database (migrated with
  ``AIOPS_AUTO_MIGRATE``, else required current).

It sits between the demo and the domains in the layers (``pyproject.toml``): it
imports the domains, and only the CLI and the demo import it.
"""

from __future__ import annotations

from typing import Any

from aiops.core.settings import Settings


def detector(settings: Settings) -> Any:
    from detector.cycle import build_detector

    return build_detector(settings)


def detector_app(detector: Any) -> Any:
    from detector.service import create_app
    from training.train import retrain

    return create_app(detector, retrain=retrain)


def serve_detector(detector: Any, *, host: str, port: int) -> None:
    """Run the detector service until SIGTERM/SIGINT."""
    from detector.service import make_server

    make_server(detector_app(detector), host=host, port=port).run()


def webhook_policy(settings: Settings) -> tuple[Any, str | None]:
    from runbooks.startup import checked_policy

    return checked_policy(settings)


def webhook_app(settings: Settings, policy: Any) -> Any:
    from runbooks.app import create_app
    from sql.migrate import open_database

    return create_app(settings, open_database(settings), policy)
