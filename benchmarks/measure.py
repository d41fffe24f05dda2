"""One measurement, in its own process so that its peak RSS is its own: one engine on one file.

    python benchmarks/measure.py --engine diarist|stock AUDIO [--rttm REF] [--device auto]

Prints one JSON line: duration, wall seconds (decode + inference, models already loaded), load seconds,
speakers found, DER (collar 0, overlap scored) when a reference is given, peak RSS in MB, device.
"stock" is pyannote's own ``SpeakerDiarization`` with the same weights, the same clustering settings and
the same batch sizes: exactly what diarist ran before its fast embedding step.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from pathlib import Path


def der(reference: Path, segments: tuple) -> float:
    from pyannote.core import Annotation, Segment
    from pyannote.database.util import load_rttm
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref = next(iter(load_rttm(str(reference)).values()))
    hyp = Annotation()
    for s in segments:
        hyp[Segment(s.start, s.end)] = s.speaker
    return float(DiarizationErrorRate(collar=0.0, skip_overlap=False)(ref, hyp))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("audio", type=Path)
    parser.add_argument("--engine", choices=("diarist", "stock"), required=True)
    parser.add_argument("--rttm", type=Path)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    from diarist.handlers import audio
    from diarist.handlers.engine import LocalEngine
    from diarist.policies.flavor import Task

    engine = LocalEngine(device=args.device, fast=args.engine == "diarist")
    engine.load()
    info = audio.probe(args.audio)
    started = time.perf_counter()
    waveform = audio.decode(args.audio, info.duration)
    decoded = time.perf_counter()
    out = engine.run(waveform, uri=args.audio.stem, task=Task.DIARIZATION)
    wall = time.perf_counter() - started
    result = {
        "engine": args.engine,
        "file": args.audio.name,
        "duration": waveform.size / audio.SAMPLE_RATE,
        "wall": wall,
        "decode": decoded - started,
        "load": engine.load_seconds,
        "speakers": len({s.speaker for s in out.segments}),
        "der": der(args.rttm, out.segments) if args.rttm else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": engine.info.device,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
