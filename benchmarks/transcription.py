"""Who said what, measured: word error rate and speaker-attributed WER on conversations of real voices.

    .venv/bin/python benchmarks/transcription.py [--seeds 3] [--json OUT.json]

Conversations are built from the dev set's single-speaker voices (``voices/``, real people) whose words are in
``transcripts.csv`` (tests/conversations.py: turns alternate, 0.3-0.9 s pauses, exact reference): two speakers
(spk1, spk2: 10 clips) and three (with the LJ Speech voice), each in ``--seeds`` turn orders. Each is run through
``diarize_file(task=transcribe)`` (the code every route runs) with the bundled recogniser, and, to tell
recognition errors from diarization errors, the recogniser alone on the reference turns ("oracle turns").

Columns: WER (all words, in time order), cpWER (each speaker's words concatenated, best speaker mapping;
a word given to the wrong speaker counts), speakers found / in the reference, seconds of diarization and of
speech recognition, and the ASR stage's real-time factor (its seconds per audio second, lower is faster).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
SHARED = ROOT.parent / "shared" / "dev-audio" / "voices"
BUNDLED = ROOT / "tests" / "data" / "dev-audio" / "voices"


def voices() -> Path:
    return SHARED if SHARED.is_dir() else BUNDLED


def oracle(conv: Path, rttm: Path, transcriber) -> tuple[dict[str, list[str]], list[str], float]:
    """The recogniser on the reference turns: (speaker -> texts, texts in order, seconds)."""
    import time

    from diarist.handlers import audio
    from diarist.handlers.engine import Segment
    from diarist.handlers.results import parse_rttm
    from diarist.handlers.transcribe import transcribe_turns

    _, segments = parse_rttm(rttm.read_text())
    started = time.monotonic()
    transcript = transcribe_turns(
        audio.to_float(audio.decode(conv)), [Segment(s.start, s.end, s.speaker) for s in segments], transcriber, "en"
    )
    by: dict[str, list[str]] = {}
    for t in transcript.turns:
        by.setdefault(t.speaker, []).append(t.text)
    return by, [t.text for t in transcript.turns], time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from wer import cpwer, wer

    from diarist.handlers.asr import Transcribers
    from diarist.handlers.engine import LocalEngine
    from diarist.handlers.engine_settings import TranscriptionSettings
    from diarist.handlers.local import diarize_file
    from diarist.policies.flavor import Task

    from conversations import build_conversation, transcripts

    refs = transcripts(voices())
    engine = LocalEngine()
    engine.load()
    transcribers = Transcribers(TranscriptionSettings())
    recogniser = transcribers.for_language("en")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for speakers in (2, 3):
            for seed in range(args.seeds):
                name = f"voices{speakers}-s{seed}"
                conv, rttm = Path(tmp) / f"{name}.wav", Path(tmp) / f"{name}.rttm"
                order = build_conversation(voices(), speakers, conv, rttm, seed=seed, only=set(refs))
                truth = [(s, refs[stem]) for s, stem in order]
                ref_by: dict[str, list[str]] = {}
                for s, words in truth:
                    ref_by.setdefault(s, []).append(words)
                ref_text = " ".join(w for _, w in truth)
                doc = diarize_file(
                    conv,
                    engine=engine,
                    name=conv.name,
                    relative_path=conv.name,
                    sha256="0" * 64,
                    task=Task.TRANSCRIBE,
                    speakers={},
                    route={},
                    transcribers=transcribers,
                )
                hyp_by: dict[str, list[str]] = {}
                for t in doc["turns"]:
                    hyp_by.setdefault(t["speaker"], []).append(t["text"])
                o_by, o_texts, o_seconds = oracle(conv, rttm, recogniser)
                timings = doc["timings"]
                rows.append(
                    {
                        "input": name,
                        "seconds": doc["source"]["duration"],
                        "speakers": f"{len(doc['speakers'])}/{speakers}",
                        "wer": wer(ref_text, " ".join(t["text"] for t in doc["turns"])),
                        "cpwer": cpwer(ref_by, hyp_by),
                        "oracle_wer": wer(ref_text, " ".join(o_texts)),
                        "oracle_cpwer": cpwer(ref_by, o_by),
                        "diarization_s": timings["diarization_seconds"],
                        "asr_s": timings["transcription_seconds"],
                        "asr_rtf": timings["transcription_real_time_factor"],
                        "oracle_asr_rtf": o_seconds / doc["source"]["duration"],
                    }
                )
                print(f"{name}: {doc['transcript']}", file=sys.stderr, flush=True)

    print(f"\nmachine: {platform.machine()}, {platform.processor() or 'cpu'}; recogniser: {recogniser.model_id}\n")
    print(
        "| input | audio s | speakers found/ref | WER | cpWER | oracle-turn WER | oracle cpWER | diarization s |"
        " ASR s | ASR RTF |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['input']} | {r['seconds']:.1f} | {r['speakers']} | {r['wer']:.3f} | {r['cpwer']:.3f} |"
            f" {r['oracle_wer']:.3f} | {r['oracle_cpwer']:.3f} | {r['diarization_s']:.1f} | {r['asr_s']:.1f} |"
            f" {r['asr_rtf']:.3f} |"
        )
    n = len(rows)
    mean = {k: sum(r[k] for r in rows) / n for k in ("wer", "cpwer", "oracle_wer", "oracle_cpwer", "asr_rtf")}
    print(
        f"| **mean** | | | **{mean['wer']:.3f}** | **{mean['cpwer']:.3f}** | {mean['oracle_wer']:.3f} |"
        f" {mean['oracle_cpwer']:.3f} | | | **{mean['asr_rtf']:.3f}** |"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
