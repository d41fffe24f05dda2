"""Hooks: the pure rules, the configuration, deliveries made in-process against a real loopback receiver and
real programs, and a whole daemon that is SIGKILLed between a file's end and its delivery.

The receiver verifies each webhook with the README's own snippet and keeps a dedup table by Idempotency-Key,
as a real receiver would.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from diarist.daemon.config import parse_settings
from diarist.daemon.hooks import HookPlanner, HookWorker
from diarist.daemon.ledger import Ledger, State
from diarist.daemon.ledger_hooks import DeliveryState
from diarist.handlers.errors import ConfigError
from diarist.handlers.results import OutputPaths
from diarist.policies.hooks import BACKOFF_CAP, idempotency_key, retry_at, sign, wants

from conftest import cut, log_events, wait_until

SECRET = "webhook-test-secret-8c1f2e9a"
README = Path(__file__).resolve().parent.parent / "README.md"


def readme_verifier() -> Any:
    """The verification snippet as the README prints it."""
    text = README.read_text()
    block = re.search(r"<!-- webhook-verify.*?-->\n```python\n(.*?)```", text, re.S)
    assert block, "the README's webhook verification snippet is missing"
    scope: dict[str, Any] = {}
    exec(block.group(1), scope)  # noqa: S102 - our own README
    return scope["verified"]


class Receiver:
    """A webhook endpoint: refuses the first ``fail_first`` attempts of each delivery with 503, checks every
    signature, and files each delivery once under its Idempotency-Key. ``hang`` never answers."""

    def __init__(self, fail_first: int = 0, hang: bool = False):
        self.fail_first, self.hang = fail_first, hang
        self.verified = readme_verifier()
        self.attempts: dict[str, int] = {}
        self.dedup: dict[str, dict[str, Any]] = {}
        self.bad_signatures = 0
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.hang:
                    receiver.release.wait(60)
                    return
                if not receiver.verified(SECRET, dict(self.headers), body):
                    receiver.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                key = self.headers["Idempotency-Key"]
                receiver.attempts[key] = receiver.attempts.get(key, 0) + 1
                if receiver.attempts[key] <= receiver.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    self.wfile.write(b"try later")
                    return
                receiver.dedup.setdefault(key, json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[tuple[str, str]]:
        return sorted((d["file"]["name"], d["event"]) for d in self.dedup.values())


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=2)
    yield r
    r.close()


# -- the rules ---------------------------------------------------------------------------------------------


def test_filters() -> None:
    assert wants(("done",), None, None, event="done", inbox="/in", user=None)
    assert not wants(("done",), None, None, event="failed", inbox="/in", user=None)
    assert not wants(("done",), "/other", None, event="done", inbox="/in", user=None)
    assert not wants(("done",), None, "alice", event="done", inbox="/in", user="bob")
    assert wants(("done", "failed"), "/in", "alice", event="failed", inbox="/in", user="alice")


def test_backoff_doubles_and_is_capped() -> None:
    assert [retry_at(n, 0.0) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert retry_at(30, 100.0) == 100.0 + BACKOFF_CAP


def test_keys_are_per_delivery_and_the_signature_covers_the_timestamp() -> None:
    assert idempotency_key("ab", "done", 7) == idempotency_key("ab", "done", 7) != idempotency_key("ab", "done", 8)
    body = b'{"event": "done"}'
    verified = readme_verifier()
    now = int(time.time())
    headers = {"X-Diarist-Timestamp": str(now), "X-Diarist-Signature": sign(SECRET, now, body)}
    assert verified(SECRET, headers, body)
    assert not verified(SECRET, {**headers, "X-Diarist-Timestamp": str(now + 1)}, body), "timestamp is signed"
    assert not verified(SECRET, headers, body + b" "), "body is signed"
    assert not verified("another-secret-entirely!", headers, body)
    old = {"X-Diarist-Timestamp": str(now - 3600), "X-Diarist-Signature": sign(SECRET, now - 3600, body)}
    assert not verified(SECRET, old, body), "a replay an hour later is refused"


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"on": ["done"]}, "exactly one of exec"),
        ({"exec": ["/bin/true"], "url": "http://x"}, "exactly one of exec"),
        ({"exec": ["true"]}, "absolute path"),
        ({"exec": []}, "non-empty list"),
        ({"url": "ftp://x"}, "http:// or https://"),
        ({"url": "https://x.example"}, "signed"),
        ({"exec": ["/bin/true"], "on": ["finished"]}, "events are done, failed, deferred, waiting"),
        ({"url": "https://user:pw@x.example", "secret_file": "/dev/null"}, "must not carry a user or password"),
        ({"url": "http://x.example:abc/", "secret_file": "/dev/null"}, "port that is not a number"),
    ],
)
def test_bad_hooks_are_config_errors_that_say_what_to_write(tmp_path: Path, table: dict, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)) as e:
        parse_settings({"daemon": {"ledger": str(tmp_path / "l.db")}, "hook": [table]}, env={})
    assert "hook[0]" in str(e.value)


def test_several_hooks_need_names(tmp_path: Path) -> None:
    """Pending deliveries find their hook by name: with two hooks, a name that follows the order would send them
    elsewhere after a reordering."""
    hooks = [{"exec": ["/bin/true"]}, {"exec": ["/bin/false"], "name": "b"}]
    with pytest.raises(ConfigError, match="each needs a name"):
        parse_settings({"daemon": {"ledger": str(tmp_path / "l.db")}, "hook": hooks}, env={})


def test_the_secret_comes_from_a_file_or_the_credential_and_is_never_shown(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET + "\n")
    base = {"daemon": {"ledger": str(tmp_path / "l.db")}}
    settings = parse_settings({**base, "hook": [{"url": "https://x.example", "secret_file": str(tmp_path / "secret")}]})
    assert settings.hooks[0].secret == SECRET and SECRET not in repr(settings)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "diarist-webhook-secret").write_text(SECRET)
    settings = parse_settings(
        {**base, "hook": [{"url": "https://x.example"}]}, env={"CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert settings.hooks[0].secret == SECRET and settings.hooks[0].name == "hook-1"


# -- in-process: a ledger, the planner, the worker, a fake wall clock ------------------------------------------


class Wall:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def setting_up(tmp_path: Path, hooks: list[dict[str, Any]]) -> tuple[Ledger, HookPlanner, HookWorker, Wall, Any]:
    (tmp_path / "secret").write_text(SECRET)
    for h in hooks:
        if "url" in h:
            h.setdefault("secret_file", str(tmp_path / "secret"))
    settings = parse_settings(
        {
            "daemon": {"ledger": str(tmp_path / "l.db")},
            "inbox": [{"path": str(tmp_path / "in"), "outbox": str(tmp_path / "out")}],
            "hook": hooks,
        },
        env={},
    )
    wall = Wall()
    ledger = Ledger(settings.daemon.ledger, clock=wall)
    planner = HookPlanner(lambda: settings.hooks, ledger, "h1", wall)
    worker = HookWorker(ledger, lambda: settings.hooks, wall=wall)
    return ledger, planner, worker, wall, settings


def finish(ledger: Ledger, planner: HookPlanner, settings: Any, name: str, state: State = State.DONE) -> int:
    inbox = settings.inboxes[0]
    file_id = ledger.discover(str(inbox.path), name)
    ledger.transition(file_id, State.CLAIMED, sha256="ab" * 32, route="local", out_name=name.removesuffix(".wav"))
    row = ledger.get(file_id)
    paths = OutputPaths.for_stem(inbox.outbox, row.out_name or "")
    event = "done" if state is State.DONE else "failed"
    details = (
        {"doc": {"speakers": [{}, {}]}}
        if state is State.DONE
        else {"error": {"kind": "bad-input", "message": "no audio", "hint": "drop audio"}}
    )
    ledger.transition(file_id, state, deliveries=planner.plan(event, row, user="alice", paths=paths, **details))
    return file_id


def test_a_webhook_that_fails_twice_is_delivered_once_and_verified(tmp_path: Path, receiver: Receiver) -> None:
    ledger, planner, worker, wall, settings = setting_up(tmp_path, [{"url": receiver.url, "on": ["done", "failed"]}])
    finish(ledger, planner, settings, "a.wav")
    finish(ledger, planner, settings, "b.wav", State.FAILED)
    assert worker.tick(wait=True) == 2  # both refused once
    assert worker.tick(wait=True) == 0, "nothing due before the backoff"
    wall.now += 5
    worker.tick(wait=True)
    wall.now += 10
    worker.tick(wait=True)
    assert receiver.events() == [("a.wav", "done"), ("b.wav", "failed")]
    assert sorted(receiver.attempts.values()) == [3, 3] and receiver.bad_signatures == 0
    done = next(d for d in receiver.dedup.values() if d["event"] == "done")
    assert done["file"]["user"] == "alice" and done["result"]["speakers"] == 2 and done["cost_usd"] == "0"
    assert done["result"]["rttm"].endswith("out/a.rttm") and done["attempt"] == 3
    failed = next(d for d in receiver.dedup.values() if d["event"] == "failed")
    assert failed["error"]["message"] == "no audio" and failed["error"]["error_json"].endswith("out/b.error.json")
    assert ledger.delivery_counts() == {"delivered": 2}
    wall.now += 3600
    assert worker.tick(wait=True) == 0, "delivered once, never again"


def test_a_hook_that_keeps_failing_is_given_up_and_listed(tmp_path: Path) -> None:
    broken = Receiver(fail_first=10**6)
    try:
        ledger, planner, worker, wall, settings = setting_up(
            tmp_path, [{"name": "crm", "url": broken.url, "give_up_after": 60}]
        )
        finish(ledger, planner, settings, "a.wav")
        for _ in range(5):
            worker.tick(wait=True)
            wall.now += 20
        assert ledger.delivery_counts() == {"given-up": 1}
        (gone,) = ledger.deliveries(state=DeliveryState.GIVEN_UP)
        assert gone.last_error == "HTTP 503" and gone.attempts >= 3
    finally:
        broken.close()
    config = tmp_path / "c.toml"
    config.write_text(f'[daemon]\nledger = "{tmp_path / "l.db"}"\n')
    out = subprocess.run(
        [sys.executable, "-m", "diarist.daemon.cli", "--config", str(config), "status"], capture_output=True, text=True
    ).stdout
    assert "hooks: given-up 1" in out and "given up: hook crm, done of a.wav after" in out and "HTTP 503" in out


def test_an_exec_hook_gets_the_documented_variables_and_its_failure_is_not_fatal(tmp_path: Path) -> None:
    record = tmp_path / "env.json"
    script = tmp_path / "hook.py"
    script.write_text(
        "import json, os, sys\n"
        f"open({str(record)!r}, 'a').write(json.dumps(dict(os.environ)) + '\\n')\n"
        "print('hello from the hook'); sys.exit(int(os.environ['FAIL']) if 'FAIL' in os.environ else 3)\n"
    )
    ledger, planner, worker, wall, settings = setting_up(
        tmp_path, [{"name": "prog", "exec": [sys.executable, str(script), "--flag"], "timeout": 20}]
    )
    finish(ledger, planner, settings, "a.wav")
    assert worker.tick(wait=True) == 1  # ran, exited 3: a failure, retried later, nothing raised
    (pending,) = ledger.deliveries()
    assert pending.state is DeliveryState.PENDING and pending.last_error == "exit 3"
    env = json.loads(record.read_text().splitlines()[0])
    expected = {
        "DIARIST_EVENT": "done",
        "DIARIST_FILE": "a.wav",
        "DIARIST_SHA256": "ab" * 32,
        "DIARIST_USER": "alice",
        "DIARIST_ROUTE": "local",
        "DIARIST_COST_USD": "0",
    }
    assert {k: env[k] for k in expected} == expected
    assert env["DIARIST_RESULT_JSON"].endswith("out/a.json") and env["DIARIST_RTTM"].endswith("out/a.rttm")
    assert env["DIARIST_IDEMPOTENCY_KEY"] == idempotency_key("ab" * 32, "done", pending.id)
    assert json.loads(env["DIARIST_EVENT_JSON"])["file"]["name"] == "a.wav"
    assert not [k for k in env if "TOKEN" in k or k.startswith("HF_")], "the daemon's secrets stay with it"


def test_redirects_and_garbage_answers_are_failed_attempts_with_backoff(tmp_path: Path) -> None:
    """A redirected POST would reach its target as a GET without the event: not a delivery. A server that
    answers something that is not HTTP is a failed attempt too, retried after the backoff, never in a loop."""
    import socket

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    redirecting = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=redirecting.serve_forever, daemon=True).start()
    garbage = socket.socket()
    garbage.bind(("127.0.0.1", 0))
    garbage.listen()

    def babble() -> None:
        while True:
            try:
                conn, _ = garbage.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            conn.close()

    threading.Thread(target=babble, daemon=True).start()
    try:
        ledger, planner, worker, wall, settings = setting_up(
            tmp_path,
            [
                {"name": "moved", "url": f"http://127.0.0.1:{redirecting.server_address[1]}/hook"},
                {"name": "babble", "url": f"http://127.0.0.1:{garbage.getsockname()[1]}/hook"},
            ],
        )
        finish(ledger, planner, settings, "a.wav")
        assert worker.tick(wait=True) == 2
        assert worker.tick(wait=True) == 0, "both wait for their backoff"
        errors = {d.hook: d.last_error for d in ledger.deliveries()}
        assert errors["moved"] == "HTTP 302" and "BadStatusLine" in (errors["babble"] or ""), errors
        assert ledger.delivery_counts() == {"pending": 2}
    finally:
        redirecting.shutdown()
        garbage.close()


def test_a_delivery_read_before_its_attempt_ended_is_not_attempted_again(tmp_path: Path, receiver: Receiver) -> None:
    """The loop may hold a row it read before another attempt finished: the ledger refuses to hand it out
    twice, and a late outcome never overwrites a newer one."""
    receiver.fail_first = 0
    ledger, planner, worker, wall, settings = setting_up(tmp_path, [{"url": receiver.url}])
    finish(ledger, planner, settings, "a.wav")
    (stale,) = ledger.due_deliveries(wall())
    worker.tick(wait=True)
    assert ledger.delivery_counts() == {"delivered": 1}
    assert not ledger.claim_delivery(stale, wall() + 60)
    ledger.delivery_attempted(stale, DeliveryState.PENDING, error="late")
    assert ledger.delivery_counts() == {"delivered": 1} and len(receiver.dedup) == 1


def test_a_hook_that_never_answers_times_out(tmp_path: Path) -> None:
    silent = Receiver(hang=True)
    try:
        ledger, planner, worker, wall, settings = setting_up(tmp_path, [{"url": silent.url, "timeout": 0.5}])
        finish(ledger, planner, settings, "a.wav")
        started = time.monotonic()
        worker.tick(wait=True)
        assert time.monotonic() - started < 10
        (pending,) = ledger.deliveries()
        assert pending.state is DeliveryState.PENDING and "timed out" in (pending.last_error or "")
    finally:
        silent.close()


# -- a whole daemon ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_end_is_delivered_once_across_a_sigkill_and_a_silent_hook_delays_nothing(
    tmp_path: Path, sample: tuple[Path, Path], receiver: Receiver, daemon_factory: Any
) -> None:
    """A real ``diarist run`` with two hooks: a webhook that refuses each delivery twice, and one that never
    answers. The daemon kills itself (SIGKILL) as it is about to make its first delivery, after the file's
    end was recorded; restarted, it delivers everything once. Results never wait for the silent hook.
    Under journald the log lines carry their syslog priority."""
    silent = Receiver(hang=True)
    inbox, outbox, state = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "state"
    inbox.mkdir()
    (tmp_path / "secret").write_text(SECRET)
    config = tmp_path / "diarist.toml"
    config.write_text(
        f'[daemon]\nledger = "{state}/ledger.db"\nhost_id = "hook-host"\nlog_format = "json"\n\n'
        f'[[inbox]]\npath = "{inbox}"\noutbox = "{outbox}"\npolling = false\nstability_seconds = 0.5\n\n'
        f'[[hook]]\nname = "crm"\nurl = "{receiver.url}"\nsecret_file = "{tmp_path / "secret"}"\n\n'
        f'[[hook]]\nname = "silent"\nurl = "{silent.url}"\nsecret_file = "{tmp_path / "secret"}"\ntimeout = 30\n'
    )
    clip = cut(sample[0], tmp_path / "talk.wav", 3, 6)
    try:
        first = daemon_factory(config, {"DIARIST_CRASH_AT": "hook_deliver"}).start()
        (inbox / "talk.wav").write_bytes(clip.read_bytes())
        assert first.proc is not None and first.proc.wait(300) == -signal.SIGKILL
        assert (outbox / "talk.json").exists() and receiver.dedup == {}, "recorded, then killed before delivering"

        log = tmp_path / "daemon-1.log"  # where daemon_factory's second daemon writes
        log.touch()
        journal = {"JOURNAL_STREAM": f"{log.stat().st_dev}:{log.stat().st_ino}"}  # as systemd sets it
        second = daemon_factory(config, journal)
        assert second.log == log
        second.start()
        (inbox / "bad.wav").write_text("not a recording\n" * 100)
        (inbox / "again.wav").write_bytes(clip.read_bytes()[:-2000])  # another file, processed while hooks wait
        wait_until(lambda: (outbox / "again.json").exists() and (outbox / "bad.error.json").exists(), 300, "results")
        assert not silent.dedup, "the results landed while the silent hook still had them all"
        wanted = [("again.wav", "done"), ("bad.wav", "failed"), ("talk.wav", "done")]
        wait_until(lambda: receiver.events() == wanted, 120, "three deliveries to the crm hook")
        assert second.stop() == 0
    finally:
        silent.close()
    assert receiver.bad_signatures == 0 and all(n == 3 for n in receiver.attempts.values()), receiver.attempts
    conn = sqlite3.connect(state / "ledger.db")
    by_state = dict(conn.execute("select state, count(*) from deliveries where hook = 'crm' group by state").fetchall())
    conn.close()
    assert by_state == {"delivered": 3}

    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines and all(re.match(r"<[2-7]>\{", line) for line in lines), lines[:3]
    priority = {json.loads(line[3:])["event"]: line[1] for line in lines}
    assert priority["ready"] == "6" and priority["done"] == "6"
    assert priority["hook_failed"] == "4" and priority["failed"] == "4"
    assert {e["event"] for e in log_events(log.read_text())} >= {"ready", "done", "hook_delivered", "hook_failed"}
