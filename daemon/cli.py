"""The ``diarist`` command line. Exit codes: 0 ok, 1 a file or check failed, 2 configuration or usage error."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diarist.daemon import config as cfg
from diarist.daemon.logs import configure as configure_logs
from diarist.handlers.errors import ConfigError, DiaristError, ModelError
from diarist.policies.flavor import Task

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _settings(args: argparse.Namespace) -> cfg.Settings:
    settings = cfg.load_settings(args.config)
    daemon = settings.daemon
    if getattr(args, "ledger", None):
        daemon = replace(daemon, ledger=args.ledger.resolve())
    if getattr(args, "host_id", None):
        daemon = replace(daemon, host_id=args.host_id)
    settings = replace(settings, daemon=daemon)
    if getattr(args, "inbox", None):
        if not args.outbox:
            raise ConfigError("--inbox needs --outbox", hint="e.g. diarist run --inbox ./inbox --outbox ./outbox")
        table: dict[str, Any] = {"path": str(args.inbox), "outbox": str(args.outbox)}
        if args.stability_seconds is not None:
            table["stability_seconds"] = args.stability_seconds
        if args.polling is not None:
            table["polling"] = {"true": True, "false": False}.get(args.polling, args.polling)
        inbox = cfg.parse_settings({"inbox": [table]}, file="command line").inboxes[0]
        settings = replace(settings, inboxes=(inbox,))
    return settings


# -- run ----------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from diarist.daemon.ledger import Ledger
    from diarist.daemon.notify import Notifier
    from diarist.daemon.service import Daemon
    from diarist.daemon.supervisor import Supervisor
    from diarist.daemon.worker import build_engine
    from diarist.handlers.asr import Transcribers

    settings = _settings(args)
    configure_logs(settings.daemon.log_format, settings.daemon.log_level)
    import structlog

    log = structlog.get_logger("diarist")
    if not settings.inboxes:
        raise ConfigError(
            "no [[inbox]] configured",
            file=str(settings.source or "(no config file found)"),
            hint="add an [[inbox]] table with path and outbox, or pass --inbox DIR --outbox DIR",
        )
    engine = build_engine(settings)
    engine.load()
    log.info(
        "models_loaded",
        seconds=round(engine.load_seconds, 2),
        device=engine.info.device,
        models=list(engine.info.models),
    )
    transcribers = Transcribers(settings.transcription, token=settings.hf_token)
    for language in sorted({i.language for i in settings.inboxes if i.task is Task.TRANSCRIBE}):
        recogniser = transcribers.for_language(language)  # an inbox that asks for it: load now, fail at start
        log.info("recogniser_loaded", model=recogniser.model_id, language=language)
    daemon = Daemon(settings, engine=engine, ledger=Ledger(settings.daemon.ledger), transcribers=transcribers)
    supervisor = Supervisor(daemon, Notifier.from_env())
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    reload = threading.Event()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda _s, _f: reload.set())
    daemon.start()
    supervisor.ready()
    log.info("ready", inboxes=len(settings.inboxes), ledger=str(settings.daemon.ledger), host=settings.daemon.host_id)
    while not stop.wait(0.5):
        if reload.is_set():
            reload.clear()
            _reload(args, daemon, supervisor, log)
    supervisor.stopping(
        f"finishing the file in hand (up to {settings.daemon.stop_timeout:g} s); cloud jobs keep running"
    )
    daemon.stop()
    supervisor.close()
    log.info("stopped")
    return EXIT_OK


def _reload(args: argparse.Namespace, daemon: Any, supervisor: Any, log: Any) -> None:
    """SIGHUP: read the configuration again; a broken one is refused and the running one stays."""
    supervisor.reloading()
    try:
        try:
            settings = _settings(args)
        except DiaristError as e:
            log.error("reload_refused", error=str(e), hint="fix the configuration and reload again; nothing changed")
            return
        if not settings.inboxes:
            log.error("reload_refused", error="the new configuration has no [[inbox]]", hint="nothing changed")
            return
        plan = daemon.reload(settings)
        log.info("reloaded", **plan.summary())
        if plan.restart_needed:
            log.warning(
                "reload_partial",
                sections=list(plan.restart_needed),
                hint="these sections are read at start: restart diarist (systemctl restart diarist) to apply them",
            )
    except Exception:  # a reload must never take the daemon down
        log.exception("reload_error")
    finally:
        supervisor.reloaded()


# -- process ------------------------------------------------------------------------------------------


def formats_of(values: list[str] | None) -> tuple[str, ...] | None:
    """``--format srt --format vtt`` or ``--format srt,vtt``; None when not given (the inbox's apply)."""
    from diarist.policies.formats import format_args, parse_formats

    if not values:
        return None
    formats, problem = parse_formats(format_args(values))
    if problem:
        raise ConfigError(f"--format: {problem}")
    return formats


def _language(value: str | None) -> str | None:
    from diarist.policies.sidecar import language_problem

    problem = language_problem(value) if value is not None else None
    if problem:
        raise ConfigError(f"--language {problem}")
    return value


def cmd_process(args: argparse.Namespace) -> int:
    """Local processing through the daemon's own local route, with a throwaway ledger (``process`` keeps
    nothing: no reuse between runs, no state directory needed)."""
    from diarist.daemon.ledger import Ledger
    from diarist.daemon.oneshot import RunRequest, run_files
    from diarist.policies.sidecar import FileRequest

    settings = _settings(args)
    configure_logs(settings.daemon.log_format, "error")  # stdout is for results; what went wrong goes to stderr
    request = FileRequest(
        task=Task(args.task),
        language=_language(args.language),
        formats=formats_of(args.format),
        num_speakers=args.num_speakers,
        min_speakers=args.min_speakers,
        max_speakers=args.max_speakers,
    )
    with tempfile.TemporaryDirectory(prefix="diarist-process-") as state:
        return run_files(
            settings,
            args.files,
            RunRequest(request, local_reason="diarist process runs on this machine"),
            ledger=Ledger(Path(state) / "ledger.db"),
            out=args.out,
            progress=True,
        )


# -- status -------------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from diarist.daemon.ledger import Ledger

    settings = _settings(args)
    if not settings.daemon.ledger.exists():
        print(f"no ledger at {settings.daemon.ledger}: the daemon has not run yet with this configuration")
        return EXIT_OK
    from diarist.daemon.ledger_hooks import DeliveryState

    ledger = Ledger(settings.daemon.ledger)
    rows = ledger.recent(args.limit)
    hooks = ledger.delivery_counts()
    given_up = [
        {"hook": d.hook, "event": d.event, "file": d.payload["file"]["name"], "file_id": d.file_id,
         "attempts": d.attempts, "error": d.last_error}
        for d in ledger.deliveries(state=DeliveryState.GIVEN_UP, limit=10)
    ]  # fmt: skip
    if args.json:
        print(
            json.dumps({"counts": ledger.counts(), "files": rows, "hooks": hooks, "hooks_given_up": given_up}, indent=2)
        )
        return EXIT_OK
    counts = ledger.counts()
    print("files: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
    if hooks:
        print("hooks: " + ", ".join(f"{k} {v}" for k, v in sorted(hooks.items())))
        for d in given_up:
            print(
                f"  given up: hook {d['hook']}, {d['event']} of {d['file']} "
                f"after {d['attempts']} attempts: {d['error']}"
            )
    for r in rows:
        when = datetime.fromtimestamp(r["updated_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        extra = r["error"] or ("reused" if r["reused_from"] else r["route"] or "")
        state = r["state"]
        if state == "queued" and (r["route_reason"] or "").startswith("deferred:"):
            state, extra = "deferred", r["route_reason"].removeprefix("deferred: ")
        print(f"{when}  {state:<10} {r['rel_path']}  {extra}")
    return EXIT_OK


# -- doctor -------------------------------------------------------------------------------------------


def _cloud_check(settings: cfg.Settings) -> tuple[bool, str, str]:
    """The cloud route is optional: off is fine, but a configured one that the Hub refuses is a failure."""
    c = settings.cloud
    if not c.enabled:
        return True, "cloud", "off ([cloud] enabled = false / HF_JOBS_ENABLED=false)"
    if not settings.hf_token:
        return True, "cloud", "off: no HF_TOKEN (files are processed locally)"
    from diarist.daemon.cloud import connect_hub

    try:
        hub = connect_hub(c, settings.hf_token)
    except DiaristError as e:
        return False, "cloud", str(e)
    return (
        True,
        "cloud",
        f"Hugging Face Jobs in {hub.namespace} at {hub.endpoint}, staging {hub.repo}, flavor {c.flavor}",
    )


def cmd_prepare_models(args: argparse.Namespace) -> int:
    """Load the configured models once, so that the next start is quick: the bundled ones are exported for
    ONNX Runtime into the model cache (the set-up runs this; a first start does it too)."""
    from diarist.handlers.bundled_models import cache_root
    from diarist.handlers.engine import LocalEngine

    settings = _settings(args)
    engine = LocalEngine.from_settings(settings.models.engine(), token=settings.hf_token, telemetry=False)
    try:
        engine.load()
    except ModelError as e:
        print(f"diarist: {e}", file=sys.stderr)
        return EXIT_CONFIG
    where = f" (cache: {cache_root()})" if settings.models.pipeline == cfg.BUNDLED_PIPELINE else ""
    print(f"models ready on {engine.info.device} in {engine.load_seconds:.1f} s{where}")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from diarist.daemon.watcher import watch_mode

    settings = _settings(args)
    checks: list[tuple[bool, str, str]] = []
    for tool in ("ffmpeg", "ffprobe"):
        found = shutil.which(tool)
        checks.append((bool(found), tool, found or "missing: apt-get install ffmpeg"))
    if settings.models.pipeline == cfg.BUNDLED_PIPELINE:
        try:
            from diarist.handlers.engine import bundled_model_dir

            checks.append((True, "models", f"bundled offline models in {bundled_model_dir()}"))
        except ModelError as e:
            checks.append((False, "models", str(e)))
    else:
        checks.append((True, "models", f"{settings.models.pipeline} (loaded at start; Hub ids need HF_TOKEN)"))
    checks.append(_recogniser_check(settings))
    checks.append(
        (True, "token", "HF_TOKEN is set" if settings.hf_token else "HF_TOKEN not set (offline default needs none)")
    )
    checks.append(_cloud_check(settings))
    checks.append(_api_check(settings))
    checks.append((True, "config", str(settings.source or "no config file (defaults)")))
    ledger_dir = settings.daemon.ledger.parent
    ledger_ok = os.access(ledger_dir if ledger_dir.exists() else ledger_dir.parent, os.W_OK)
    checks.append((ledger_ok, "ledger", f"{settings.daemon.ledger} ({'writable' if ledger_ok else 'NOT writable'})"))
    for inbox in settings.inboxes:
        readable = inbox.path.is_dir() and os.access(inbox.path, os.R_OK | os.W_OK | os.X_OK)
        checks.append(
            (readable, "inbox", f"{inbox.path} ({'read/write ok' if readable else 'missing or not read/write'})")
        )
        out_parent = inbox.outbox if inbox.outbox.exists() else inbox.outbox.parent
        writable = os.access(out_parent, os.W_OK)
        checks.append((writable, "outbox", f"{inbox.outbox} ({'writable' if writable else 'NOT writable'})"))
        mode = watch_mode(inbox)
        checks.append(
            (
                True,
                "watch",
                f"{inbox.path}: {mode.fstype} -> {'polling' if mode.polling else 'native events'} ({mode.reason})",
            )
        )
    for ok, name, detail in checks:
        print(f"[{'ok' if ok else 'FAIL'}] {name:8} {detail}")
    return EXIT_OK if all(ok for ok, _, _ in checks) else EXIT_FAILED


def _api_check(settings: cfg.Settings) -> tuple[bool, str, str]:
    """Where the HTTP API listens (never its tokens), and whether a daemon answers there now."""
    import urllib.error
    import urllib.request

    api = settings.api
    if api.listen is None:
        return True, "api", "off ([api] listen not set)"
    reach = "this machine only" if api.listen.loopback else "beyond this machine"
    tokens = f"{len(api.tokens)} token(s)" if api.tokens else "no token"
    detail = f"{api.listen.url()} ({reach}, {tokens})"
    if api.listen.unix is None and api.listen.port:
        try:
            with urllib.request.urlopen(f"{api.listen.url()}/healthz", timeout=2) as answer:
                detail += f"; a daemon answers /healthz: {answer.status}"
        except urllib.error.HTTPError as e:
            detail += f"; a daemon answers /healthz: {e.code} (stale threads)"
        except OSError:
            detail += "; nothing answers there now (the daemon binds it at start)"
    return True, "api", detail


def _recogniser_check(settings: cfg.Settings) -> tuple[bool, str, str]:
    """The speech recogniser of task transcribe, loaded (a second) so that a broken install shows here."""
    from diarist.handlers.asr import Transcribers

    try:
        recogniser = Transcribers(settings.transcription, token=settings.hf_token).for_language(
            settings.transcription.language
        )
    except ModelError as e:
        return False, "asr", str(e)
    return True, "asr", f"{recogniser.model_id} ({settings.transcription.language}; task transcribe)"


# -- export -------------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    """Render stored results in other formats, without recomputing anything."""
    from diarist.handlers.exports import render
    from diarist.handlers.results import OutputPaths, atomic_write, read_result, rttm_of
    from diarist.policies.formats import format_args

    formats = formats_of(args.format) or ()
    wanted_rttm = "rttm" in (name.lower() for name in format_args(args.format))
    if not formats and not wanted_rttm:
        raise ConfigError("--format: name at least one of srt, vtt, textgrid, eaf, audacity, csv, rttm")
    failed = 0
    for result in args.results:
        try:
            doc = read_result(result)
        except (OSError, ValueError) as e:
            print(f"diarist: {result}: {e}", file=sys.stderr)
            failed += 1
            continue
        stem = result.name.removesuffix(".json")
        paths = OutputPaths.for_stem((args.out or result.parent).resolve(), stem)
        paths.json.parent.mkdir(parents=True, exist_ok=True)
        if wanted_rttm:
            atomic_write(paths.rttm, rttm_of(doc).encode("utf-8"))
            print(f"{result} -> {paths.rttm}")
        for fmt in formats:
            atomic_write(paths.export(fmt), render(doc, fmt))
            print(f"{result} -> {paths.export(fmt)}")
    return EXIT_FAILED if failed else EXIT_OK


# -- demo ---------------------------------------------------------------------------------------------


def sample_audio() -> tuple[Path, Path]:
    import importlib.util

    spec = importlib.util.find_spec("pyannote.audio")
    assert spec and spec.origin
    folder = Path(spec.origin).parent / "sample"
    return folder / "sample.wav", folder / "sample.rttm"


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the daemon on ./inbox -> ./outbox, drop pyannote's sample, print the result, stop."""
    inbox, outbox = args.inbox.resolve(), args.outbox.resolve()
    inbox.mkdir(parents=True, exist_ok=True)
    outbox.mkdir(parents=True, exist_ok=True)
    sample, _ = sample_audio()
    result = outbox / "sample.json"
    for stale in (result, outbox / "sample.rttm"):
        stale.unlink(missing_ok=True)
    state = Path(tempfile.mkdtemp(prefix="diarist-demo-"))
    cmd = [
        sys.executable,
        "-m",
        "diarist.daemon.cli",
        "run",
        "--inbox",
        str(inbox),
        "--outbox",
        str(outbox),
        "--ledger",
        str(state / "ledger.db"),
        "--stability-seconds",
        "1",
    ]
    print(f"starting: diarist run --inbox {inbox} --outbox {outbox}")
    started = time.monotonic()
    log = open(state / "daemon.log", "wb")
    daemon = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "DIARIST_HOST_ID": "demo"})
    try:
        shutil.copyfile(sample, inbox / ".sample.wav.part")
        os.replace(inbox / ".sample.wav.part", inbox / "sample.wav")
        print(f"dropped {sample.name} into {inbox}; waiting for {result} ...")
        deadline = time.monotonic() + args.timeout
        while not result.exists():
            if daemon.poll() is not None:
                print((state / "daemon.log").read_text()[-3000:], file=sys.stderr)
                print(f"diarist: the daemon exited with code {daemon.returncode}", file=sys.stderr)
                return EXIT_FAILED
            if time.monotonic() > deadline:
                print(f"diarist: no result after {args.timeout:.0f} s; log: {state / 'daemon.log'}", file=sys.stderr)
                return EXIT_FAILED
            time.sleep(0.5)
        elapsed = time.monotonic() - started
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
    doc = json.loads(result.read_text())
    print(f"\n==> {outbox / 'sample.rttm'}")
    print((outbox / "sample.rttm").read_text(), end="")
    speech = sum(s["speech_seconds"] for s in doc["speakers"])
    print(f"\nspeakers: {len(doc['speakers'])} ({', '.join(s['label'] for s in doc['speakers'])})")
    print(f"speech:   {speech:.1f} s of {doc['source']['duration']:.1f} s audio")
    print(f"engine:   {doc['engine']['backend']} on {doc['engine']['device']} ({', '.join(doc['engine']['models'])})")
    print(f"time:     {doc['timings']['total_seconds']:.1f} s inference, {elapsed:.1f} s from start (incl. model load)")
    print(f"archived: {inbox / '.diarist' / 'done' / 'sample.wav'}")
    return EXIT_OK


# -- install-service -------------------------------------------------------------------------------------


def cmd_install_service(args: argparse.Namespace) -> int:
    from diarist.daemon.install import install_service

    return install_service(config=args.config, root=args.root, dry_run=args.dry_run)


# -- parser -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diarist", description="Who spoke when: watch folders, write RTTM + JSON.")
    parser.add_argument(
        "--config", type=Path, help="TOML config (default: /etc/diarist/diarist.toml, else ./diarist.toml)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="TOML config file")
        p.add_argument("--ledger", type=Path, help="ledger database path (overrides [daemon] ledger)")

    run = sub.add_parser("run", help="run the daemon in the foreground (SIGINT/SIGTERM stop it cleanly)")
    common(run)
    run.add_argument("--inbox", type=Path, help="watch this folder instead of the configured inboxes")
    run.add_argument("--outbox", type=Path, help="results folder for --inbox")
    run.add_argument("--stability-seconds", type=float, help="with --inbox: seconds a file must stay unchanged")
    run.add_argument("--polling", choices=["auto", "true", "false"], help="with --inbox: watch mode")
    run.add_argument("--host-id", help="this host's id for claims on a shared inbox (default: hostname)")
    run.set_defaults(func=cmd_run)

    proc = sub.add_parser("process", help="diarize files once, without the daemon")
    common(proc)
    proc.add_argument("files", nargs="+", type=Path)
    proc.add_argument("--task", choices=[t.value for t in Task], default=Task.DIARIZATION.value)
    proc.add_argument("--language", help='spoken language for --task transcribe (default: [transcription], "en")')
    proc.add_argument(
        "--format", action="append", help="also write srt, vtt, textgrid, eaf, audacity, csv (repeat or comma-separate)"
    )
    proc.add_argument("--out", type=Path, help="output folder (default: beside each input)")
    proc.add_argument("--num-speakers", type=int)
    proc.add_argument("--min-speakers", type=int)
    proc.add_argument("--max-speakers", type=int)
    proc.set_defaults(func=cmd_process)

    export = sub.add_parser("export", help="write stored results (JSON) in other formats, without recomputing")
    export.add_argument("results", nargs="+", type=Path, help="result JSON files")
    export.add_argument("--format", action="append", required=True, help="srt, vtt, textgrid, eaf, audacity, csv, rttm")
    export.add_argument("--out", type=Path, help="output folder (default: beside each result)")
    export.set_defaults(func=cmd_export)

    status = sub.add_parser("status", help="recent files and their states from the ledger")
    common(status)
    status.add_argument("--limit", type=int, default=20)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    prepare = sub.add_parser("prepare-models", help="load the models once (the bundled ones into the model cache)")
    common(prepare)
    prepare.set_defaults(func=cmd_prepare_models)

    doctor = sub.add_parser("doctor", help="check ffmpeg, models, token, folders and watch modes")
    common(doctor)
    doctor.set_defaults(func=cmd_doctor)

    def settings_first(fn: Any) -> Any:
        return lambda args: fn(_settings(args), args)

    from diarist.daemon import cli_cloud, cli_voices

    cli_cloud.add_commands(sub, common, settings_first)
    cli_voices.add_commands(sub, common, settings_first)

    demo = sub.add_parser("demo", help="start the daemon, drop pyannote's sample into ./inbox, print the result")
    demo.add_argument("--inbox", type=Path, default=Path("inbox"))
    demo.add_argument("--outbox", type=Path, default=Path("outbox"))
    demo.add_argument("--timeout", type=float, default=600)
    demo.set_defaults(func=cmd_demo)

    service = sub.add_parser("install-service", help="write the systemd unit, its user and /etc/diarist skeletons")
    service.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="the service's config file")
    service.add_argument("--root", type=Path, default=Path("/"), help="install below this folder instead of /")
    service.add_argument("--dry-run", action="store_true", help="print what would be written; write nothing")
    service.set_defaults(func=cmd_install_service)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("num_speakers", "min_speakers", "max_speakers"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            print(f"diarist: --{flag.replace('_', '-')} must be a positive integer", file=sys.stderr)
            return EXIT_CONFIG
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"diarist: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except ModelError as e:
        print(f"diarist: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except DiaristError as e:
        print(f"diarist: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
