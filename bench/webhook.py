"""Benchmark: signed anomaly events per second through the webhook, with durable audit.

    python bench/webhook.py                  # SQLite, then a throwaway PostgreSQL
    python bench/webhook.py --events 2000 --clients 8 --no-postgres

The webhook runs in its own process (``aiops webhook``, uvicorn) on a loopback
port; a bounded load (``--events`` signed events, each a new incident, from
``--clients`` concurrent connections) goes through signature check, dedupe,
incident, policy and the kill switch (default off), every step committed to the
audit table before the answer (SQLite: WAL, ``synchronous=FULL``; the throwaway
PostgreSQL is a test instance without fsync). Prints requests per second and
latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiops.core.signing import signed_headers
from demo.prometheus import free_port, wait_http_ok

SECRET = "bench-secret"
READ_TOKEN = "bench-read-token"


def event(i: int) -> bytes:
    now = time.time()
    return json.dumps(
        {
            "id": f"bench-{i}",
            "metric": "latency_p99",
            "labels": {"namespace": "bench", "app": f"app{i % 50}"},
            "score": 0.7,
            "reasons": [{"reason": "level_shift", "window": "15m", "zscore": 5.0}],
            "value": 1.0,
            "baseline": 0.3,
            "started_at": now - 60,
            "observed_at": now,
            "model_version": "v1",
            "status": "firing",
        }
    ).encode()


def run(database_url: str, events: int, clients: int) -> dict[str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIOPS_", "RUNBOOK_"))}
    env.update(
        AIOPS_DATABASE_URL=database_url,
        RUNBOOK_WEBHOOK_SECRET=SECRET,
        RUNBOOK_RATE_LIMIT="100000",
        RUNBOOK_READ_TOKEN=READ_TOKEN,
        RUNBOOK_AUTOFIX_POLICY="latency_p99:level_shift=rollout_restart",
        AIOPS_LOG_LEVEL="WARNING",
    )
    exe = Path(sys.executable).with_name("aiops")
    proc = subprocess.Popen(
        [str(exe), "webhook", "--host", "127.0.0.1", "--port", str(port)], env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok("webhook", f"{url}/healthz", proc, lambda: "its output is above", 60)
        bodies = [event(i) for i in range(events)]
        latencies: list[float] = []
        errors = 0

        def worker(chunk: list[bytes]) -> tuple[list[float], int]:
            lat, bad = [], 0
            with httpx.Client(timeout=30) as client:
                for body in chunk:
                    t0 = time.perf_counter()
                    r = client.post(
                        f"{url}/anomalies", content=body, headers=signed_headers(SECRET, body)
                    )
                    lat.append(time.perf_counter() - t0)
                    bad += r.status_code != 200
            return lat, bad

        chunks = [bodies[i::clients] for i in range(clients)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            for lat, bad in pool.map(worker, chunks):
                latencies += lat
                errors += bad
        wall = time.perf_counter() - t0
        audit = httpx.get(
            f"{url}/audit",
            params={"n": 5000, "kind": "request"},
            headers={"Authorization": f"Bearer {READ_TOKEN}"},
        ).json()["count"]
    finally:
        proc.terminate()
        proc.wait(30)
    ms = np.array(latencies) * 1000
    return {
        "events": events,
        "rps": events / wall,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "errors": errors,
        "audited": min(audit, events),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lite = run(f"sqlite:///{tmp}/hook.db", args.events, args.clients)
        rows.append(("SQLite (WAL, `synchronous=FULL`)", lite))
        print(rows[-1], flush=True)
    if not args.no_postgres:
        from tests.postgres import postgres_url_or_start

        pg = postgres_url_or_start()
        try:
            rows.append(("PostgreSQL", run(pg.create_database(), args.events, args.clients)))
            print(rows[-1], flush=True)
        finally:
            pg.stop()
    print()
    print(
        f"Webhook benchmark: {args.events} signed events, {args.clients} concurrent clients,"
        f" loopback, {platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    )
    print()
    print("| database | events/s | p50 | p99 | non-200 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in rows:
        print(
            f"| {name} | {r['rps']:.0f} | {r['p50']:.1f} ms | {r['p99']:.1f} ms | {r['errors']} |"
        )


if __name__ == "__main__":
    main()
