"""Demo workload: simulated web apps exposing SLO and business metrics, with fault injection."""

from demo.server import DemoServer, serve
from demo.workload import (
    APPS,
    BUCKETS,
    CODES,
    DEFAULT_MAGNITUDE,
    FAULT_KINDS,
    Fault,
    Workload,
    WorkloadCollector,
)

__all__ = [
    "APPS",
    "BUCKETS",
    "CODES",
    "DEFAULT_MAGNITUDE",
    "FAULT_KINDS",
    "DemoServer",
    "Fault",
    "Workload",
    "WorkloadCollector",
    "serve",
]
