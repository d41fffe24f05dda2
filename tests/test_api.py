"""The HTTP API in-process: a real uvicorn server on a loopback port, real HTTP requests, a real ledger and
real folders; the daemon's intake claims uploads on a thread of its own. No inference runs here (the daemon's
worker is not started): tests/test_dashboard.py runs a whole daemon.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from diarist.daemon.api import build_app
from diarist.daemon.api_server import ApiServer
from diarist.daemon.config import parse_settings
from diarist.daemon.ledger import Ledger
from diarist.daemon.service import Daemon
from diarist.handlers.errors import ConfigError
from diarist.policies.listen import ListenError, parse_listen

from conftest import cut, wait_until

TOKEN = "diarist-api-test-token-0123456789"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Api:
    daemon: Daemon
    server: ApiServer
    inbox: Path
    outbox: Path
    ledger: Ledger
    clock: FakeClock

    def call(
        self,
        method: str,
        path: str,
        body: bytes | Iterator[bytes] | None = None,
        *,
        token: str | None = TOKEN,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        host, port = self.server.sock.getsockname()[:2]
        conn = http.client.HTTPConnection(host, port, timeout=60)
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=body, headers=sent, encode_chunked=not isinstance(body, bytes | None))
            answer = conn.getresponse()
            return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: bytes | None = None, **kw: Any) -> tuple[int, Any]:
        status, _, data = self.call(method, path, body, **kw)
        return status, json.loads(data)

    def nothing_left(self) -> None:
        """No trace of a refused upload: no file anywhere under the inbox or outbox, no ledger row."""
        assert [p for p in self.inbox.rglob("*") if p.is_file()] == []
        assert [p for p in self.outbox.rglob("*") if p.is_file()] == []
        assert self.ledger.recent(10) == []


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    inbox, outbox = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    outbox.mkdir()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# one per line\n{TOKEN}\n")
    settings = parse_settings(
        {
            "daemon": {"ledger": str(tmp_path / "l.db"), "host_id": "h1"},
            "api": {"listen": "127.0.0.1:0", "token_file": str(tokens), "max_upload_mb": 1},
            "inbox": [{"path": str(inbox), "outbox": str(outbox), "polling": True}],
        },
        env={},
    )
    ledger = Ledger(settings.daemon.ledger)
    clock = FakeClock()
    daemon = Daemon(settings, engine=None, ledger=ledger, clock=clock)  # type: ignore[arg-type]
    for component in ("intake", "worker", "cloud", "lease", "hooks"):  # as if its threads had just reported
        daemon.heartbeats[component] = clock.now
    server = ApiServer(build_app(daemon.api_context()), settings.api.listen)
    server.start()
    stop = threading.Event()

    def intake() -> None:  # the daemon's intake thread, without the worker
        while not stop.wait(0.05):
            daemon.intake.tick()

    thread = threading.Thread(target=intake, daemon=True)
    thread.start()
    yield Api(daemon, server, inbox, outbox, ledger, clock)
    stop.set()
    thread.join()
    server.stop()


@pytest.fixture(scope="module")
def speech(sample: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cut(sample[0], tmp_path_factory.mktemp("speech") / "speech.wav", 3, 5)


class TestAuth:
    def test_every_route_but_healthz_needs_the_token(self, api: Api) -> None:
        """Each route the app serves (read from its own route table) answers 401 without a token or with a
        wrong one, with a JSON error that says what to send; /healthz answers anyone."""
        paths = []
        for route in api.server.server.config.app.routes:  # type: ignore[union-attr]
            for method in sorted(route.methods - {"HEAD"}):
                paths.append((method, route.path.replace("{file_id}", "1").replace("{job_id}", "j1")))
        assert len(paths) >= 12, paths
        for method, path in paths:
            for token in (None, "wrong-token-wrong-token-wrong"):
                status, headers, body = api.call(method, path, token=token)
                if path == "/healthz":
                    assert status == 200
                    continue
                assert status == 401, (method, path, token)
                assert headers["www-authenticate"] == "Bearer"
                error = json.loads(body)["error"]
                assert error["kind"] == "auth" and "Bearer" in error["hint"]
        status, _, _ = api.call("GET", "/v1/files")
        assert status == 200

    def test_a_browser_logs_in_once_with_the_token_in_the_address(self, api: Api) -> None:
        """/?token=... sets an HttpOnly cookie and redirects to /, so the address bar keeps no token."""
        status, headers, _ = api.call("GET", f"/?token={TOKEN}", token=None)
        assert status == 303 and headers["location"] == "/"
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        status, _, page = api.call("GET", "/", token=None, headers={"Cookie": cookie.split(";")[0]})
        assert status == 200 and b"diarist on h1" in page
        status, _, _ = api.call("GET", "/?token=nope-nope-nope-nope-nope", token=None)
        assert status == 401

    def test_beyond_loopback_a_token_is_required(self, tmp_path: Path) -> None:
        base = {"daemon": {"ledger": str(tmp_path / "l.db")}}
        with pytest.raises(ConfigError, match="no token") as e:
            parse_settings({**base, "api": {"listen": "0.0.0.0:8650"}}, env={})
        assert "token_file" in str(e.value)
        short = tmp_path / "short"
        short.write_text("abc\n")
        with pytest.raises(ConfigError, match="at least 16"):
            parse_settings({**base, "api": {"listen": "127.0.0.1:0", "token_file": str(short)}}, env={})
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "diarist-api-token").write_text(TOKEN)
        settings = parse_settings({**base, "api": {"listen": "[::]:8650"}}, env={"CREDENTIALS_DIRECTORY": str(creds)})
        assert settings.api.tokens == (TOKEN,) and TOKEN not in repr(settings)


@pytest.mark.parametrize(
    ("text", "loopback"),
    [
        ("127.0.0.1:8650", True),
        ("[::1]:0", True),
        ("localhost:8650", True),
        ("0.0.0.0:8650", False),
        ("[::]:8650", False),
        ("192.168.1.4:80", False),
        ("unix:/run/diarist/api.sock", True),
    ],
)
def test_listen_addresses(text: str, loopback: bool) -> None:
    assert parse_listen(text).loopback is loopback


@pytest.mark.parametrize("text", ["8650", "::1:8650", "host:port", "127.0.0.1:70000", "unix:relative.sock", ":80"])
def test_bad_listen_addresses_say_what_to_write(text: str) -> None:
    with pytest.raises(ListenError, match="e.g.|0 to 65535"):
        parse_listen(text)


class TestUploads:
    def test_an_upload_is_claimed_at_once_with_its_options(self, api: Api, speech: Path) -> None:
        """The body lands in the host's processing folder, hashed as sent, with the options checked like a
        sidecar's; the answer is the file's document and its Location."""
        data = speech.read_bytes()
        query = "name=talk.wav&task=vad&user=alice&num_speakers=2&formats=srt,vtt&priority=speed"
        status, headers, body = api.call("POST", f"/v1/files?{query}", data)
        assert status == 201, body
        doc = json.loads(body)
        assert headers["location"] == f"/v1/files/{doc['id']}"
        assert doc["state"] == "claimed" and doc["name"] == "uploads/talk.wav" and doc["user"] == "alice"
        row = api.ledger.get(doc["id"])
        assert row.sha256 == hashlib.sha256(data).hexdigest() and row.size == len(data)
        assert Path(row.claim_path or "").read_bytes() == data
        assert Path(row.claim_path or "").parent == api.inbox / ".diarist/processing/h1/uploads"
        asked = row.request()
        assert asked.task == "vad" and asked.num_speakers == 2 and asked.formats == ("srt", "vtt")
        assert json.loads((api.outbox / "uploads/talk.status.json").read_text())["state"] == "queued"
        # the same name again: its own row, its own outputs
        status, _, body = api.call("POST", "/v1/files?name=talk.wav", iter([data[:1000], data[1000:]]))
        again = json.loads(body)
        assert status == 201 and again["id"] != doc["id"] and again["name"] == "uploads/talk (2).wav"
        assert api.ledger.get(again["id"]).out_name == "uploads/talk (2)", "never the first upload's outputs"
        status, listing = api.json("GET", "/v1/files?user=alice")
        assert status == 200 and [f["id"] for f in listing["files"]] == [doc["id"]]
        status, listing = api.json("GET", "/v1/files?state=claimed")
        assert sorted(f["id"] for f in listing["files"]) == sorted([doc["id"], again["id"]])
        # a recording dropped into the inbox under the same name is another input with outputs of its own
        (api.inbox / "talk.wav").write_bytes(data)
        api.daemon.intake.scan_all()
        wait_until(lambda: any(r["rel_path"] == "talk.wav" for r in api.ledger.recent(10)), 10, "the drop seen")
        api.clock.now += 60  # its stability window
        wait_until(
            lambda: any(r["rel_path"] == "talk.wav" and r["state"] == "claimed" for r in api.ledger.recent(10)),
            10,
            "the drop claimed",
        )
        dropped = next(r for r in api.ledger.recent(10) if r["rel_path"] == "talk.wav")
        assert api.ledger.get(dropped["id"]).out_name == "talk"

    @pytest.mark.parametrize(
        ("query", "status", "says"),
        [
            ("name=../escape.wav", 400, "not a plain file name"),
            ("name=sub/dir.wav", 400, "not a plain file name"),
            ("name=..%5Cwin.wav", 400, "not a plain file name"),
            ("name=..", 400, "not a plain file name"),
            ("name=.hidden.wav", 400, "leading dot"),
            ("name=notes.txt", 415, "audio file extension"),
            ("", 400, "no name"),
            ("name=a.wav&num_speakers=abc", 422, "num_speakers"),
            ("name=a.wav&route=moon", 422, "route"),
            ("name=a.wav&formats=docx", 422, "docx"),
            ("name=a.wav&force_cloud=maybe", 422, "force_cloud"),
            ("name=a.wav&num_speakers=%C2%B2", 422, "num_speakers"),
        ],
    )
    def test_refused_before_a_byte_is_kept(self, api: Api, speech: Path, query: str, status: int, says: str) -> None:
        got, body = api.json("POST", f"/v1/files?{query}", speech.read_bytes())
        assert got == status and says in body["error"]["message"], body
        api.nothing_left()

    def test_an_upload_the_api_stopped_waiting_for_is_still_admitted(self, api: Api, speech: Path) -> None:
        """The API gives up waiting for a busy intake (503: "kept and will still be processed"): the intake
        then claims the staged file all the same, never drops it."""
        from diarist.daemon.inboxes import Upload

        staged = api.inbox / ".diarist/uploads/h1/late.wav.upload"
        staged.parent.mkdir(parents=True)
        staged.write_bytes(speech.read_bytes())
        inbox = api.daemon.settings.inboxes[0]
        done = api.daemon.intake.admit(Upload(inbox, staged, "late.wav", None, "0" * 64, staged.stat().st_size))
        done.cancel()  # what asyncio's timeout did to it before the fix
        wait_until(lambda: api.ledger.recent(1), 10, "the admission")
        (row,) = api.ledger.recent(1)
        assert row["rel_path"] == "uploads/late.wav" and row["state"] == "claimed" and not staged.exists()

    def test_oversized_uploads_are_refused_whether_announced_or_not(self, api: Api) -> None:
        """Over [api] max_upload_mb (1 MB here): refused from Content-Length before reading, or while streaming
        when the client sends chunks without one; neither leaves a file."""
        big = b"\0" * (1024**2 + 1)
        got, body = api.json("POST", "/v1/files?name=big.wav", big)
        assert got == 413 and "larger than the 1 MB" in body["error"]["message"]
        api.nothing_left()
        got, body = api.json("POST", "/v1/files?name=big.wav", iter([big[:600_000], big[600_000:]]))
        assert got == 413
        api.nothing_left()

    def test_what_is_not_audio_is_refused_and_removed(self, api: Api) -> None:
        got, body = api.json("POST", "/v1/files?name=fake.wav", b"this is a text file, not a recording\n" * 50)
        assert got == 415 and "not audio diarist can read" in body["error"]["message"], body
        assert body["error"]["hint"]
        api.nothing_left()
        got, body = api.json("POST", "/v1/files?name=empty.wav", b"")
        assert got == 400 and "empty" in body["error"]["message"]
        api.nothing_left()
        got, body = api.json(
            "POST",
            "/v1/files?name=x.wav",
            b"--b\r\n\r\n--b--",
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
        assert got == 415 and "--data-binary" in body["error"]["hint"]
        api.nothing_left()


class TestForeignPages:
    """A web page elsewhere can make a browser send requests to a loopback API; none gets through."""

    @pytest.mark.parametrize(
        ("headers", "says"),
        [
            ({"Origin": "https://evil.example"}, "cross-origin"),
            ({"Host": "rebind.evil.example"}, "this machine only"),
            ({"Host": "rebind.evil.example:8650", "Origin": "http://rebind.evil.example:8650"}, "this machine only"),
            ({"Sec-Fetch-Site": "cross-site"}, "cross-site"),
        ],
    )
    def test_cross_site_and_rebound_requests_are_refused(
        self, api: Api, speech: Path, headers: dict[str, str], says: str
    ) -> None:
        status, body = api.json(
            "POST",
            "/v1/files?name=x.wav&route=cloud",
            speech.read_bytes(),
            headers={"Content-Type": "text/plain", **headers},
        )
        assert status == 403 and says in body["error"]["message"], body
        api.nothing_left()

    def test_the_dashboards_own_requests_pass(self, api: Api) -> None:
        host, port = api.server.sock.getsockname()[:2]
        same = {"Origin": f"http://{host}:{port}", "Sec-Fetch-Site": "same-origin"}
        assert api.call("GET", "/dashboard/panel", headers=same)[0] == 200
        assert api.call("GET", "/v1/files", headers={"Host": f"localhost:{port}"})[0] == 200


class TestReads:
    def test_unknown_ids_and_results_not_ready(self, api: Api, speech: Path) -> None:
        assert api.json("GET", "/v1/files/999")[0] == 404
        status, body = api.json("GET", "/v1/files/abc")
        assert status == 422
        _, doc = api.json("POST", "/v1/files?name=wait.wav", speech.read_bytes())
        status, body = api.json("GET", f"/v1/files/{doc['id']}/result?format=rttm")
        assert status == 409 and "claimed, not done" in body["error"]["message"]
        status, body = api.json("GET", f"/v1/files/{doc['id']}/result?format=docx")
        assert status == 400 and "rttm" in body["error"]["hint"]
        assert api.json("GET", "/v1/files?state=sleeping")[0] == 400
        assert api.json("DELETE", "/v1/jobs/nope")[0] == 404
        assert api.json("GET", "/v1/nothing")[0] == 404

    def test_usage_matches_the_cli_figures(self, api: Api) -> None:
        status, body = api.json("GET", "/v1/usage?by=user")
        assert status == 200 and body["by"] == "user" and body["total"]["jobs"] == 0
        assert api.json("GET", "/v1/usage?by=planet")[0] == 400
        assert api.json("GET", "/v1/usage?since=yesterday")[0] == 400

    def test_openapi_describes_the_routes(self, api: Api) -> None:
        status, doc = api.json("GET", "/openapi.json")
        assert status == 200
        paths = doc["paths"]
        for path in ("/v1/files", "/v1/files/{file_id}", "/v1/files/{file_id}/result", "/v1/jobs", "/v1/usage"):
            assert path in paths, path
        assert "delete" in paths["/v1/jobs/{job_id}"] and "post" in paths["/v1/files"]
        params = {p["name"] for p in paths["/v1/files"]["post"]["parameters"]}
        assert {"name", "route", "force_cloud", "priority", "flavor", "task", "user", "formats"} <= params


class TestHealth:
    def test_healthz_is_the_watchdog_rule(self, api: Api) -> None:
        """200 while every component's heartbeat is fresh; 503 naming the stale one, exactly as the
        systemd watchdog's check (Daemon.stale) sees it."""
        status, body = api.json("GET", "/healthz", token=None)
        assert (status, body) == (200, {"status": "ok", "stale": []})
        api.clock.now += 31  # past the lease loop's 30 s, within the others'
        status, body = api.json("GET", "/healthz", token=None)
        assert status == 503 and body["stale"] == ["lease"] == api.daemon.stale()
        api.daemon.heartbeats["lease"] = api.clock.now
        assert api.json("GET", "/healthz", token=None)[0] == 200


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def test_a_unix_socket_needs_no_token_and_only_its_group(tmp_path: Path) -> None:
    """``listen = "unix:/path"``: local by nature (file permissions decide, 0660), so no token is required; a
    socket left by a killed run is replaced, and stop removes it."""
    sock = tmp_path / "run" / "api.sock"
    sock.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))  # what a SIGKILLed daemon leaves behind
    stale.close()
    settings = parse_settings(
        {
            "daemon": {"ledger": str(tmp_path / "l.db"), "host_id": "h1"},
            "api": {"listen": f"unix:{sock}"},
            "inbox": [{"path": str(tmp_path / "in"), "outbox": str(tmp_path / "out")}],
        },
        env={},
    )
    daemon = Daemon(settings, engine=None, ledger=Ledger(settings.daemon.ledger))  # type: ignore[arg-type]
    for component in ("intake", "worker", "cloud", "lease", "hooks"):
        daemon.heartbeats[component] = time.monotonic()
    server = ApiServer(build_app(daemon.api_context()), settings.api.listen)
    server.start()
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        conn = UnixHTTPConnection(str(sock))
        conn.request("GET", "/v1/files")
        answer = conn.getresponse()
        assert answer.status == 200 and json.loads(answer.read()) == {"files": []}
        conn.close()
    finally:
        server.stop()
    assert not sock.exists()
