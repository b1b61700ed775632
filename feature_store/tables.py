"""SQLAlchemy Core descriptions of the tables that ``sql/migrations`` create.

The migrations own the schema (``aiops migrate``); these objects only describe
it for queries. ``tests/feature_store/test_migrations.py`` checks that the two agree.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import BYTEA, JSONB

metadata = MetaData()

Json = JSON().with_variant(JSONB(), "postgresql")
Blob = LargeBinary().with_variant(BYTEA(), "postgresql")

features = Table(
    "aiops_features",
    metadata,
    Column("series", Text, primary_key=True),
    Column("ts", Float, primary_key=True),
    Column("metric", Text, nullable=False),
    Column("value", Float),
    Column("baseline", Float),
    Column("scale", Float),
    Column("features", Json, nullable=False),
)

models = Table(
    "aiops_models",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series", Text, nullable=False),
    Column("metric", Text, nullable=False),
    Column("labels", Json, nullable=False),
    Column("version", Integer, nullable=False),
    Column("state", Text, nullable=False),
    Column("artifact", Blob, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("sklearn_version", Text, nullable=False),
    Column("feature_names", Json, nullable=False),
    Column("params", Json, nullable=False),
    Column("train_start", Float, nullable=False),
    Column("train_end", Float, nullable=False),
    Column("n_samples", Integer, nullable=False),
    Column("evaluation", Json, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("promoted_at", Float),
    Column("note", Text),
)

anomalies = Table(
    "aiops_anomalies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series", Text, nullable=False),
    Column("metric", Text, nullable=False),
    Column("labels", Json, nullable=False),
    Column("ts", Float, nullable=False),
    Column("started_at", Float),
    Column("score", Float),
    Column("value", Float),
    Column("baseline", Float),
    Column("reasons", Json, nullable=False),
    Column("model_version", Text, nullable=False),
)

audit = Table(
    "runbooks_audit",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ts", Float, nullable=False),
    Column("kind", Text, nullable=False),
    Column("incident_id", Text),
    Column("alertname", Text),
    Column("metric", Text),
    Column("namespace", Text),
    Column("app", Text),
    Column("action", Text),
    Column("result", Text),
    Column("actor", Text),
    Column("details", Json),
)

locks = Table(
    "aiops_locks",
    metadata,
    Column("name", Text, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

deliveries = Table(
    "runbooks_deliveries",
    metadata,
    Column("dedup_key", Text, primary_key=True),
    Column("received_at", Float, nullable=False),
    Column("source", Text, nullable=False),
    Column("incident_id", Text),
)

incidents = Table(
    "runbooks_incidents",
    metadata,
    Column("id", Text, primary_key=True),
    Column("subject", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("opened_at", Float, nullable=False),
    Column("resolved_at", Float),
    Column("events", Integer, nullable=False),
    Column("actions", Integer, nullable=False),
    Column("self_healed", Integer, nullable=False),
    Column("escalated", Integer, nullable=False),
    Column("alertname", Text),
    Column("metric", Text),
    Column("namespace", Text),
    Column("app", Text),
    Column("cause", Text),
    Column("chain", Text),
)

incident_members = Table(
    "runbooks_incident_members",
    metadata,
    Column("incident_id", Text, primary_key=True),
    Column("subject", Text, primary_key=True),
    Column("service", Text),
)

actions = Table(
    "runbooks_actions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ts", Float, nullable=False),
    Column("app", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("incident_id", Text),
    Column("dry_run", Integer, nullable=False),
)

guard_locks = Table(
    "runbooks_guard_locks",
    metadata,
    Column("app", Text, primary_key=True),
)

approvals = Table(
    "runbooks_approvals",
    metadata,
    Column("id", Text, primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("state", Text, nullable=False),
    Column("incident_id", Text),
    Column("app", Text),
    Column("namespace", Text),
    Column("target", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("params", Json, nullable=False),
    Column("request", Json, nullable=False),
    Column("decided_by", Text),
    Column("decided_at", Float),
)

halts = Table(
    "runbooks_halts",
    metadata,
    Column("scope", Text, primary_key=True),
    Column("halted_at", Float, nullable=False),
    Column("actor", Text, nullable=False),
    Column("reason", Text, nullable=False),
)

webhook_outbox = Table(
    "aiops_webhook_outbox",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("queued_at", Float, nullable=False),
    Column("body", Text, nullable=False),
)

changes = Table(
    "aiops_changes",
    metadata,
    Column("id", Text, primary_key=True),
    Column("at", Float, nullable=False),
    Column("service", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("received_at", Float, nullable=False),
)

feedback = Table(
    "aiops_feedback",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series", Text, nullable=False),
    Column("metric", Text, nullable=False),
    Column("labels", Json, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("verdict", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("note", Text, nullable=False),
    Column("reasons", Json, nullable=False),
    Column("score", Float),
    Column("value", Float),
    Column("baseline", Float),
    Column("features", Json),
    Column("given_at", Float, nullable=False),
)
