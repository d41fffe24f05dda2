"""diarist's benchmark: stock pyannote vs diarist's engine in the same run, and the daemon's own overhead.

    .venv/bin/python benchmarks/run.py [--inputs sample,conv30,long4h] [--file AUDIO[:REF.rttm] ...]
                                       [--stock-max-minutes 40] [--device auto] [--no-daemon]
                                       [--oneshot sample,conv5]

Inputs (generated once into benchmarks/.cache/ with tests/audiogen.py, espeak-ng voices, exact references):
  sample   pyannote's own 30 s recording of two real speakers, with its reference
  conv5    a 5-minute conversation of 3 speakers (the length most recordings people drop have)
  conv30   a 30-minute conversation of 4 speakers
  long4h   conv30 going on for 4 hours: the same 4 voices and, for its first 30 minutes, the same turns, so
           that it differs from conv30 in length alone (for memory and for accuracy over length; stock is
           skipped where it would exceed --stock-max-minutes, estimated from its speed on the inputs before)
Each (engine, input) runs in its own process (benchmarks/measure.py) so its peak RSS is its own; wall time
is decoding + inference with the models loaded. The --oneshot inputs are then also run the way a user runs
them, `diarist process` in a fresh process (stock: the same with `[models] fast = false`), start-up included.
Prints Markdown tables (paste into the README).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
PY = sys.executable
#: name: (speakers, seconds, seed); the seed picks the voices, so conv30 and long4h share one. (long4h had
#: seed 5 before: other voices, which the engine told apart less well at any length: its first 30 minutes
#: alone scored DER 0.175 and the whole 4 hours 0.166, against conv30's 0.105.)
GENERATED = {"conv5": (3, 300, 7), "conv30": (4, 1800, 3), "long4h": (4, 4 * 3600, 3)}
DIARIST = Path(sys.executable).parent / "diarist"


@dataclass(frozen=True)
class Input:
    name: str
    audio: Path
    rttm: Path | None
    true_speakers: int | None


def sample_input() -> Input:
    from diarist.daemon.cli import sample_audio

    audio, rttm = sample_audio()
    return Input("sample", audio, rttm, 2)


def generated(name: str) -> Input:
    speakers, seconds, seed = GENERATED[name]
    audio, rttm = CACHE / f"{name}-seed{seed}.wav", CACHE / f"{name}-seed{seed}.rttm"
    if not (audio.exists() and rttm.exists()):
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"generating {name} ({seconds / 60:.0f} min, {speakers} speakers) ...", file=sys.stderr, flush=True)
        cmd = [PY, str(ROOT / "tests/audiogen.py"), str(audio), "--speakers", str(speakers)]
        cmd += ["--seconds", str(seconds), "--seed", str(seed), "--rttm", str(rttm)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return Input(name, audio, rttm, speakers)


def user_input(spec: str) -> Input:
    audio, _, ref = spec.partition(":")
    path = Path(audio).resolve()
    if not path.is_file():
        raise SystemExit(f"benchmarks: {path} does not exist")
    return Input(path.name, path, Path(ref).resolve() if ref else None, None)


def measure(engine: str, item: Input, device: str) -> dict:
    cmd = [PY, str(ROOT / "benchmarks/measure.py"), str(item.audio), "--engine", engine, "--device", device]
    if item.rttm:
        cmd += ["--rttm", str(item.rttm)]
    print(f"running {engine} on {item.name} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmarks: {engine} on {item.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def oneshot(engine: str, item: Input, device: str) -> dict:
    """``diarist process`` on the file in a fresh process, as a user runs it: Python's start, imports, model
    loading, decoding, inference and writing the result, all counted. "stock" is the same command with
    ``[models] fast = false`` (pyannote's own pipeline, same weights)."""
    from measure import der

    from diarist.handlers.results import parse_rttm

    work = Path(tempfile.mkdtemp(prefix="diarist-bench-"))
    try:
        config = work / "diarist.toml"
        config.write_text(f'[models]\ndevice = "{device}"\nfast = {"true" if engine == "diarist" else "false"}\n')
        cmd = [str(DIARIST), "--config", str(config), "process", "--out", str(work), str(item.audio)]
        print(f"running one-shot {engine} on {item.name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        with open(work / "stderr", "wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=work)
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(
                f"benchmarks: one-shot {engine} on {item.name} failed:\n{(work / 'stderr').read_text()[-3000:]}"
            )
        _uri, turns = parse_rttm((work / f"{item.audio.stem}.rttm").read_text())
        doc = json.loads((work / f"{item.audio.stem}.json").read_text())
        return {
            "engine": engine,
            "duration": doc["source"]["duration"],
            "wall": wall,
            "speakers": len({t.speaker for t in turns}),
            "der": der(item.rttm, tuple(turns)) if item.rttm else None,
            "peak_rss_mb": usage.ru_maxrss / 1024,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def engine_table(rows: list[tuple[Input, dict | None, dict | None]], wall: str = "wall s") -> str:
    lines = [
        f"| input | audio | engine | speakers found/true | {wall} | RTF | DER | peak RSS MB | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for item, stock, fast in rows:
        for r in (stock, fast):
            if r is None:
                continue
            ratio = f"{stock['wall'] / fast['wall']:.1f}×" if (r is fast and stock and fast) else ""
            lines.append(
                f"| {item.name} | {r['duration'] / 60:.1f} min | {r['engine']} | "
                f"{r['speakers']}/{item.true_speakers or '?'} | {r['wall']:.1f} | {r['wall'] / r['duration']:.3f} | "
                f"{fmt(r['der'], '.3f')} | {r['peak_rss_mb']:.0f} | {ratio} |"
            )
        if stock is None and fast is not None:
            lines.append(f"| {item.name} | | stock | skipped (see --stock-max-minutes) | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", default="sample,conv5,conv30,long4h")
    parser.add_argument(
        "--oneshot", default="sample,conv5", help="inputs also run as one-shot `diarist process` (cold start)"
    )
    parser.add_argument("--file", action="append", default=[], help="AUDIO or AUDIO:REFERENCE.rttm")
    parser.add_argument("--stock-max-minutes", type=float, default=40.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-daemon", action="store_true", help="skip the daemon overhead and idle measurements")
    args = parser.parse_args(argv)

    items = []
    for name in filter(None, args.inputs.split(",")):
        items.append(sample_input() if name == "sample" else generated(name))
    items += [user_input(spec) for spec in args.file]

    started = time.time()
    rows = []
    stock_rtf = None
    for item in items:
        fast = measure("diarist", item, args.device)
        estimate = stock_rtf * fast["duration"] / 60 if stock_rtf else 0.0
        stock = None
        if estimate <= args.stock_max_minutes:
            stock = measure("stock", item, args.device)
            stock_rtf = max(stock_rtf or 0.0, stock["wall"] / stock["duration"])
        rows.append((item, stock, fast))

    cold = []
    wanted = set(filter(None, args.oneshot.split(",")))
    for item in items:
        if item.name in wanted:
            cold.append((item, oneshot("stock", item, args.device), oneshot("diarist", item, args.device)))

    device = rows[0][2]["device"] if rows else "?"
    print(f"\n### Engines, models loaded ({machine()}, device {device})\n")
    print(engine_table(rows))
    if cold:
        print("\n### One-shot `diarist process`, start-up included (model cache filled by the set-up)\n")
        print(engine_table(cold, wall="wall s (one-shot)"))
    if not args.no_daemon:
        from daemon_bench import daemon_table

        print("\n### Daemon\n")
        print(daemon_table())
    print(f"\n(benchmark took {(time.time() - started) / 60:.1f} min)")
    return 0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
