"""The HTTP face of a real ``diarist run``: a recording uploaded through ``POST /v1/files`` and its RTTM
fetched back; a cloud-routed upload (through the loopback Hub emulator) listed in ``/v1/jobs`` and canceled
with ``DELETE``; ``/metrics`` parsed by prometheus_client's own parser against the ledger; and the dashboard
as Debian's headless Chromium renders it, refreshing itself while the daemon works.

``DIARIST_SCREENSHOT=path`` also saves the dashboard's picture there (the README's docs/dashboard.png).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import SUITE_TOKEN, cut, log_events, wait_until
from hub_emulator import HubEmulator

pytestmark = pytest.mark.slow

API_TOKEN = "dashboard-test-token-5f3a9c1e7b2d"


def chromium() -> str:
    """Debian's headless Chromium (the set-up installs it); Playwright's own download is never used."""
    for candidate in ("/usr/lib/chromium/chromium-headless-shell", "/usr/lib/chromium/chromium"):
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    assert found, "no Chromium: run the README's set-up (it installs chromium-headless-shell)"
    return found


class Client:
    def __init__(self, base: str, token: str = API_TOKEN):
        parts = urlsplit(base)
        self.host, self.port, self.token = parts.hostname or "", parts.port or 80, token

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers={"Authorization": f"Bearer {self.token}", **(headers or {})})
            answer = conn.getresponse()
            return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        status, _, data = self.call(method, path, body, headers)
        assert status < 300, (method, path, status, data[:500])
        return json.loads(data)

    def upload(self, path: Path, query: str) -> dict[str, Any]:
        with open(path, "rb") as f:  # streamed from the file, never read whole here either
            return self.json("POST", f"/v1/files?{query}", f, {"Content-Length": str(path.stat().st_size)})

    def done(self, file_id: int, timeout: float) -> dict[str, Any]:
        wait_until(lambda: self.json("GET", f"/v1/files/{file_id}")["state"] in ("done", "failed"), timeout, "done")
        return self.json("GET", f"/v1/files/{file_id}")


@pytest.fixture
def emu() -> Iterator[HubEmulator]:
    with HubEmulator(token=SUITE_TOKEN, namespace="alice", kill_grace=0.5) as emulator:
        yield emulator


def ledger_count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def test_upload_follow_fetch_cancel_and_watch_it_in_a_browser(
    tmp_path: Path, sample: tuple[Path, Path], emu: HubEmulator, daemon_factory: Any
) -> None:
    from playwright.sync_api import sync_playwright

    inbox, outbox, state = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "state"
    tokens = tmp_path / "api-tokens"
    tokens.write_text(API_TOKEN + "\n")
    config = tmp_path / "diarist.toml"
    config.write_text(
        f'[daemon]\nledger = "{state}/ledger.db"\nhost_id = "web-host"\nlog_format = "json"\n\n'
        f'[api]\nlisten = "127.0.0.1:0"\ntoken_file = "{tokens}"\n\n'
        "[cloud]\npoll_interval = 0.5\nbatch_window = 0\ndaily_budget = 5\n\n"
        f'[[inbox]]\npath = "{inbox}"\noutbox = "{outbox}"\npolling = false\n'
    )
    emu.add_fault(job="stay_scheduling")  # the cloud job waits on the Hub until it is canceled
    clip = cut(sample[0], tmp_path / "clip.wav", 3, 8)
    daemon = daemon_factory(config, {"HF_TOKEN": SUITE_TOKEN, "HF_ENDPOINT": emu.url})
    daemon.start()
    try:
        (address,) = [e["address"] for e in log_events(daemon.text()) if e.get("event") == "api_listening"]
        api = Client(address)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=chromium(),
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
            )
            page = browser.new_page(viewport={"width": 1040, "height": 1400})
            outside: list[str] = []
            page.on("request", lambda r: None if r.url.startswith(address) else outside.append(r.url))
            page.goto(f"{address}/?token={API_TOKEN}")  # sets the cookie, then the dashboard without the token
            assert page.url == f"{address}/"
            assert "healthy" in page.inner_text(".health")

            # 1. a local upload, followed to its result
            meeting = api.upload(sample[0], "name=meeting.wav&user=alice")
            assert meeting["state"] == "claimed"
            doc = api.done(meeting["id"], 300)
            assert doc["state"] == "done" and doc["route"] == "local" and doc["progress"] == 1.0, doc
            status, headers, rttm = api.call("GET", f"/v1/files/{meeting['id']}/result?format=rttm")
            assert status == 200 and headers["content-type"].startswith("text/x-rttm")
            assert rttm == (outbox / "uploads/meeting.rttm").read_bytes()
            assert len({line.split()[7] for line in rttm.decode().splitlines()}) == 2
            status, _, vtt = api.call("GET", f"/v1/files/{meeting['id']}/result", headers={"Accept": "text/vtt"})
            assert status == 200 and vtt.startswith(b"WEBVTT")
            result = api.json("GET", f"/v1/files/{meeting['id']}/result")
            assert result == json.loads((outbox / "uploads/meeting.json").read_text())

            # 2. a cloud upload: listed as bob's job, shown live on the page, then canceled
            cloudy = api.upload(clip, "name=call.wav&force_cloud=true&user=bob")
            wait_until(lambda: api.json("GET", "/v1/jobs?user=bob")["jobs"], 120, "bob's cloud job")
            (job,) = api.json("GET", "/v1/jobs?user=bob")["jobs"]
            assert job["file_ids"] == [cloudy["id"]] and job["stage"] in ("submitting", "SCHEDULING")
            assert api.json("GET", "/v1/jobs?user=alice")["jobs"] == []
            wait_until(lambda: api.json("GET", "/v1/jobs?user=bob")["jobs"][0]["job_id"] in emu.jobs, 60, "job id")
            job_id = api.json("GET", "/v1/jobs?user=bob")["jobs"][0]["job_id"]

            page.locator(".jobs", has_text=job_id).wait_for(timeout=20_000)  # the page refreshed by itself
            in_flight = page.inner_text(".in-flight")
            assert "call.wav" in in_flight and "submitted" in in_flight and "meeting.wav" not in in_flight
            result_block = page.locator(".result", has_text="meeting.wav")
            assert "2 speakers" in result_block.inner_text()
            assert result_block.locator("svg.timeline text.speaker").count() == 2
            assert result_block.locator("svg.timeline rect.turn").count() >= 4
            assert result_block.locator("svg.timeline text.tick").count() >= 3
            assert page.locator("svg.meter line.cap").count() == 1, "today's $5 cap (the month has none)"
            assert "cap 5.00 USD" in page.inner_text("figure:has(svg.meter)")
            assert page.locator("svg.chart text.tick").count() >= 2
            shot = Path(os.environ.get("DIARIST_SCREENSHOT") or tmp_path / "dashboard.png")
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert outside == [], f"the dashboard asked for something elsewhere: {outside}"

            canceled = api.json("DELETE", f"/v1/jobs/{job_id}")
            assert canceled["canceled"] and canceled["files"] == [cloudy["id"]]
            emu.wait_job(job_id, ("CANCELED",), timeout=30)
            fell_back = api.done(cloudy["id"], 240)
            assert fell_back["state"] == "done" and fell_back["route"] == "local", fell_back
            assert "canceled by the user" in json.dumps(api.json("GET", f"/v1/files/{cloudy['id']}/result")["route"])
            page.locator(".result", has_text="call.wav").wait_for(timeout=20_000)
            browser.close()

        # 3. metrics: the ledger's numbers, no file names in labels
        db = state / "ledger.db"
        status, headers, text = api.call("GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(text.decode())}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        assert (
            samples[("diarist_files", (("state", "done"),))]
            == ledger_count(db, "select count(*) from files where state = 'done'")
            == 2
        )
        local_done = ledger_count(db, "select count(*) from files where state = 'done' and route = 'local'")
        assert samples[("diarist_files_finished_total", (("outcome", "done"), ("route", "local")))] == local_done == 2
        assert samples[("diarist_processing_seconds_count", (("route", "local"),))] == 2
        assert samples[("diarist_cloud_cap_usd", (("cap", "daily"),))] == 5.0
        assert samples[("diarist_cloud_jobs_in_flight", ())] == ledger_count(
            db, "select count(*) from jobs where state in ('submitting', 'in-flight')"
        )
        assert samples[("diarist_hook_deliveries", (("state", "given-up"),))] == 0
        ages = {dict(labels)["component"] for (name, labels) in samples if name == "diarist_heartbeat_age_seconds"}
        assert ages == {"intake", "worker", "cloud", "lease", "hooks"}
        labels = {v for (_, lbls) in samples for _, v in lbls}
        assert not [v for v in labels if "meeting" in v or "call" in v or ".wav" in v], labels
        assert api.call("GET", "/healthz")[0] == 200
    finally:
        code = daemon.stop()
    assert code == 0
    assert API_TOKEN not in daemon.text(), "the API token reached the log"
