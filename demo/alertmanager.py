"""A real Alertmanager (Debian's binary) on a loopback port: for the demo and the tests."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml

from demo.prometheus import free_port, stop_process, wait_http_ok

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


class AlertmanagerProcess:
    def __init__(
        self,
        workdir: Path,
        webhook_url: str,
        token: str,
        *,
        binary: str = ALERTMANAGER,
        port: int | None = None,
    ):
        workdir = Path(workdir).expanduser().resolve()
        self.workdir = workdir
        self.port = port or free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "route": {
                "receiver": "aiops",
                "group_by": ["alertname", "app"],
                "group_wait": "0s",
                "group_interval": "1s",
                "repeat_interval": "1h",
                # a spike (AIOpsSpikeDetected, severity info) is for people, not the
                # webhook: as in dashboards/alertmanager-route.example.yml
                "routes": [{"receiver": "people", "matchers": ['severity="info"']}],
            },
            "receivers": [
                {"name": "people"},
                {
                    "name": "aiops",
                    "webhook_configs": [
                        {
                            "url": webhook_url,
                            "send_resolved": True,
                            "http_config": {"authorization": {"credentials": token}},
                        }
                    ],
                },
            ],
        }
        (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self.args = [
            binary,
            f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # no gossip: notify at once, no peers
            "--log.level=warn",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> AlertmanagerProcess:
        log = (self.workdir / "alertmanager.log").open("wb")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        wait_http_ok("alertmanager", f"{self.url}/-/ready", self.proc, self.log_tail, timeout)
        return self

    def log_tail(self) -> str:
        path = self.workdir / "alertmanager.log"
        return path.read_text(errors="replace")[-1000:] if path.exists() else ""

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        r = httpx.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=5)
        r.raise_for_status()

    def silences(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/api/v2/silences", timeout=5).json()

    def stop(self) -> None:
        stop_process(self.proc, 10)
