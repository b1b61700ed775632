"""The SQL feature store: tables, feature rows and anomalies, the model registry, leases."""
