"""The AIOps anomaly detection service: its shared kernel (``aiops.core``) below every domain."""
