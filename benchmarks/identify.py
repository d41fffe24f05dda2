"""Names on known voices, measured: enrol each AMI participant from one clip, identify them in the others.

    .venv/bin/python benchmarks/identify.py [--threshold 0.6] [--json OUT.json]

The dev set's AMI clips reuse people across clips (MEE009/MEE012 in dev00-01; MEE067, MEE068, MÉO069, FEO065,
FEO066 in trn00-03; FEE087, FEE088, MEE089, MEO086 in trn07-08; FEE083 in trn06 and trn09). Each clip is
diarized once (the bundled engine: its result's speaker centroids are what identification compares); each
found speaker is mapped to the reference person who has most of its speech. Then, for every clip E and every
person P with at least ``MIN_ENROL`` seconds in E, P is enrolled from E; every other clip is identified
against all enrolled voiceprints (one enrolment per person at a time, rotating), with the single-speaker
``voices/`` recordings as impostors (never enrolled). Reported over a range of thresholds: correct-name rate
(named speaker time with the right name / speaker time of enrolled people), wrong-name rate (speaker time
named wrongly / all named speaker time) and the impostor rate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
SHARED = ROOT.parent / "shared" / "dev-audio"
BUNDLED = ROOT / "tests" / "data" / "dev-audio"


def dev() -> Path:
    return SHARED if (SHARED / "ami").is_dir() else BUNDLED


def diarized(engine, wav: Path) -> dict:
    from diarist.handlers.local import diarize_file
    from diarist.policies.flavor import Task

    return diarize_file(
        wav,
        engine=engine,
        name=wav.name,
        relative_path=wav.name,
        sha256="0" * 64,
        task=Task.DIARIZATION,
        speakers={},
        route={},
    )


def who(doc: dict, rttm: Path | None) -> dict[str, str | None]:
    """Each found label -> the reference person with most overlap (None without a reference)."""
    if rttm is None:
        return {s["label"]: None for s in doc["speakers"]}
    ref = []
    for line in rttm.read_text().splitlines():
        f = line.split()
        ref.append((float(f[3]), float(f[3]) + float(f[4]), f[7]))
    out = {}
    for s in doc["speakers"]:
        overlap: dict[str, float] = {}
        for seg in doc["segments"]:
            if seg["speaker"] != s["label"]:
                continue
            for a, b, person in ref:
                overlap[person] = overlap.get(person, 0.0) + max(0.0, min(b, seg["end"]) - max(a, seg["start"]))
        out[s["label"]] = max(overlap, key=overlap.get) if overlap else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from diarist.handlers.engine import LocalEngine
    from diarist.handlers.results import read_centroids
    from diarist.policies.identify import MIN_ENROL_SECONDS, assign

    engine = LocalEngine()
    engine.load()
    clips = []  # (clip, {label: (person, seconds, vector)})
    for wav in sorted((dev() / "ami").glob("*.wav")) + sorted((dev() / "voices").glob("*.wav")):
        rttm = wav.with_suffix(".rttm")
        doc = diarized(engine, wav)
        vectors = read_centroids(doc)
        people = who(doc, rttm if rttm.exists() else None)
        speech = {s["label"]: s["speech_seconds"] for s in doc["speakers"]}
        clips.append((wav.stem, {k: (people[k] or f"impostor:{wav.stem}", speech[k], vectors[k]) for k in vectors}))
        print(f"{wav.stem}: {[(p, round(t, 1)) for p, t, _ in clips[-1][1].values()]}", file=sys.stderr, flush=True)

    # enrolments: (person, clip, vector) for every person with enough speech in a clip
    enrolments = [
        (person, stem, vec)
        for stem, found in clips
        if not stem.startswith(("ASR_", "TTS_"))
        for person, seconds, vec in found.values()
        if seconds >= MIN_ENROL_SECONDS
    ]
    people = sorted({p for p, _, _ in enrolments})
    thresholds = [round(0.40 + 0.02 * i, 2) for i in range(21)]
    rows = []
    for threshold in thresholds:
        right = wrong = enrolled_time = named_time = impostor_time = impostor_named = 0.0
        # rotate: the k-th enrolment of each person (wrapping), so every enrolment clip is used
        rounds = max(sum(1 for p, _, _ in enrolments if p == q) for q in people)
        for k in range(rounds):
            prints = {}
            for q in people:
                mine = [(s, v) for p, s, v in enrolments if p == q]
                prints[q] = mine[k % len(mine)]
            for stem, found in clips:
                book = {q: v for q, (s, v) in prints.items() if s != stem}  # never identify in the enrolment clip
                names = assign({lab: v for lab, (_, _, v) in found.items()}, book, threshold)
                for label, (person, seconds, _) in found.items():
                    named = names.get(label)
                    if person.startswith("impostor:"):
                        impostor_time += seconds
                        impostor_named += seconds if named else 0.0
                    elif person in book:
                        enrolled_time += seconds
                    if named:
                        named_time += seconds
                        if named[0] == person:
                            right += seconds
                        else:
                            wrong += seconds
        rows.append(
            {
                "threshold": threshold,
                "correct_rate": right / enrolled_time if enrolled_time else 0.0,
                "wrong_rate": wrong / named_time if named_time else 0.0,
                "impostor_named_rate": impostor_named / impostor_time if impostor_time else 0.0,
            }
        )
    print(
        f"\n{len(people)} enrolled people, {len(enrolments)} enrolment clips (>= {MIN_ENROL_SECONDS:g} s of speech)\n"
    )
    print("| threshold | correct-name rate | wrong-name rate | impostors named |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['threshold']:.2f} | {r['correct_rate']:.3f} | {r['wrong_rate']:.3f} |"
            f" {r['impostor_named_rate']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
