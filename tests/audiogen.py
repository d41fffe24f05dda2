"""Generate multi-speaker test conversations with espeak-ng, with a reference RTTM.

Each speaker is an espeak-ng voice with its own variant, pitch and speed; turns are synthesised one by
one, resampled to 16 kHz mono with sox and concatenated with short pauses (and optional overlaps), so the
reference is exact. Used by the tests and by ``benchmarks/``.

    python tests/audiogen.py out.wav --speakers 3 --seconds 60 [--seed 1] [--rttm out.rttm]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
import wave
from array import array
from dataclasses import dataclass
from pathlib import Path

SAMPLE_RATE = 16000

# espeak-ng voices all come from one synthesiser and sound alike to a speaker-embedding model; a sox
# pitch shift (which also moves the formants, like a longer or shorter vocal tract) spreads them apart.
# (espeak-ng voice + variant, espeak pitch 0-99, words per minute, sox pitch shift in cents)
VOICES = [
    ("en-us+m3", 35, 165, -500),
    ("en-gb+f3", 70, 175, 300),
    ("en-us+m7", 20, 150, -200),
    ("en-gb+f5", 85, 185, 600),
    ("en-us+croak", 45, 160, -800),
    ("en-gb+klatt2", 60, 170, 100),
]

SENTENCES = [
    "I think we should move the release to next week so the team has time to test it properly.",
    "That works for me, but marketing already announced the date, so we need to tell them today.",
    "Can someone check whether the new build passes on the older machines in the lab?",
    "The numbers from last quarter look better than we expected, especially in the north region.",
    "Let us keep the meeting short, I have another call at half past three.",
    "We could also ask the support team what customers complained about most this month.",
    "I disagree, the budget is already tight and this adds two more weeks of work.",
    "Fine, I will write a summary and send it to everyone before the end of the day.",
    "Did anybody read the report about the storage costs? It was surprisingly high.",
    "Yes, most of it comes from old recordings that nobody has deleted in years.",
    "Then we should set up a policy that archives anything older than one year.",
    "Good idea. Who wants to own that? I can help with the scripts if needed.",
    "The customer asked for a demo on Thursday morning, is anyone free at nine?",
    "I can do it, but I will need the latest slides and access to the test account.",
]


@dataclass(frozen=True)
class Turn:
    speaker: str
    start: float
    end: float


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not installed: apt-get install {'espeak-ng' if tool == 'espeak-ng' else tool}")
    return path


def synthesise(text: str, voice: tuple[str, int, int, int], workdir: Path) -> array:
    """One utterance as 16 kHz mono int16 samples."""
    name, pitch, speed, shift = voice
    raw = workdir / "raw.wav"
    out = workdir / "utt.wav"
    subprocess.run(
        [_require("espeak-ng"), "-v", name, "-p", str(pitch), "-s", str(speed), "-w", str(raw), text],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [_require("sox"), str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out), "pitch", str(shift)],
        check=True,
        capture_output=True,
    )
    with wave.open(str(out), "rb") as w:
        samples = array("h")
        samples.frombytes(w.readframes(w.getnframes()))
    return samples


def conversation(
    path: Path, speakers: int = 2, seconds: float = 60.0, seed: int = 0, overlap_rate: float = 0.0
) -> list[Turn]:
    """Write a conversation WAV to ``path`` and return its reference turns."""
    if not 1 <= speakers <= len(VOICES):
        raise ValueError(f"speakers must be in 1..{len(VOICES)}")
    rng = random.Random(seed)
    voices = rng.sample(VOICES, speakers)
    cache: dict[tuple[int, int], array] = {}
    mix = array("h")
    turns: list[Turn] = []
    cursor = int(0.5 * SAMPLE_RATE)
    previous = -1
    with tempfile.TemporaryDirectory() as tmp:
        while cursor < seconds * SAMPLE_RATE:
            choices = [s for s in range(speakers) if s != previous] or [0]
            spk = rng.choice(choices)
            sentence = rng.randrange(len(SENTENCES))
            key = (spk, sentence)
            if key not in cache:
                cache[key] = synthesise(SENTENCES[sentence], voices[spk], Path(tmp))
            utt = cache[key]
            start = cursor
            if turns and rng.random() < overlap_rate:
                start = max(0, cursor - int(rng.uniform(0.3, 1.0) * SAMPLE_RATE))
            end = start + len(utt)
            if len(mix) < end:
                mix.extend([0] * (end - len(mix)))
            for i, s in enumerate(utt):
                mix[start + i] = max(-32768, min(32767, mix[start + i] + s))
            turns.append(Turn(f"spk{spk}", start / SAMPLE_RATE, end / SAMPLE_RATE))
            previous = spk
            cursor = end + int(rng.uniform(0.3, 0.9) * SAMPLE_RATE)
    mix.extend([0] * int(0.5 * SAMPLE_RATE))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(mix.tobytes())
    return turns


def write_rttm(turns: list[Turn], uri: str, path: Path) -> None:
    lines = [f"SPEAKER {uri} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n" for t in turns]
    path.write_text("".join(lines))


def slices(src: Path, folder: Path, n: int, seconds: float, first: int = 0, hop: float = 0.17) -> list[Path]:
    """n distinct clips of a 16-bit mono WAV, ``clip{i:03}.wav``, each ``seconds`` long from a different offset
    (clip i starts at ``i * hop * seconds`` s, wrapped around the recording), so each has its own hash."""
    folder.mkdir(parents=True, exist_ok=True)
    with wave.open(str(src)) as w:
        rate, width, frames = w.getframerate(), w.getsampwidth(), w.readframes(w.getnframes())
    length = int(seconds * rate)
    span = len(frames) // width - length
    made = []
    for i in range(first, first + n):
        start = int(i * hop * seconds * rate) % span * width
        path = folder / f"clip{i:03}.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(width)
            out.setframerate(rate)
            out.writeframes(frames[start : start + length * width])
        made.append(path)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--speakers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overlap-rate", type=float, default=0.0)
    parser.add_argument("--rttm", type=Path, help="also write the reference RTTM here")
    args = parser.parse_args(argv)
    turns = conversation(args.out, args.speakers, args.seconds, args.seed, args.overlap_rate)
    if args.rttm:
        write_rttm(turns, args.out.stem, args.rttm)
    print(f"{args.out}: {len(turns)} turns, {turns[-1].end:.1f} s, {args.speakers} speakers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
