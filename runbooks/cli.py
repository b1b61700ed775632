"""``aiops webhook``: the runbook webhook service."""

from __future__ import annotations

from typing import Annotated

import typer

from detector.clikit import ConfigOpt, fail, load
from detector.errors import AiopsError


def webhook(
    host: Annotated[str | None, typer.Option(help="listen address (RUNBOOK_HTTP_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (RUNBOOK_HTTP_PORT)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Run the runbook webhook: Alertmanager and detector events in, guarded fixes out."""
    import uvicorn

    from detector.logs import setup_logging
    from detector.service import StoppableServer
    from feature_store.db import make_engine
    from runbooks.app import create_app
    from runbooks.policy import load_policy
    from sql.migrate import migrate, require_current

    settings = load(config=config, webhook_host=host, webhook_port=port)
    setup_logging(settings.log_level)
    try:
        policy = load_policy(settings.autofix_policy, settings.policy_file)
    except AiopsError as exc:
        raise fail(f"config error: {exc}") from None
    engine = make_engine(settings.database_url)
    try:
        if settings.auto_migrate:
            migrate(engine)
        else:
            require_current(engine)
    except AiopsError as exc:
        raise fail(f"database: {exc}") from None
    except Exception as exc:
        msg = " ".join(str(getattr(exc, "orig", exc)).split())[:200]
        raise fail(f"database unreachable: {msg}", 1) from None
    app = create_app(settings, engine, policy)
    StoppableServer(
        uvicorn.Config(
            app,
            host=settings.webhook_host,
            port=settings.webhook_port,
            log_level="warning",
            access_log=False,
        )
    ).run()
