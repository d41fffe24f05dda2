"""diarist's accuracy benchmark: stock pyannote and diarist's engine on real speech, in the same run.

    .venv/bin/python benchmarks/accuracy.py [--inputs ami,sample,voices,generated] [--file AUDIO:REF.rttm ...]
                                            [--no-stock] [--json OUT.json]

Per file, for stock pyannote ``SpeakerDiarization`` (same segmentation-3.0 + CAM++ weights and clustering settings
diarist used before its own clustering) and for diarist's engine, each run without and with the true speaker
count: DER at collar 0 and 0.25 (overlap scored), missed speech / false alarm / confusion (fractions of the
reference speech), speakers found / in the reference (and those who talk 2 s or more). Then, per input group,
the mean DER and the pooled rates (summed over the group's files).

Inputs:
  ami        the 12 real AMI meeting clips (dev set: ``../shared/dev-audio/ami``, else the project's copy)
  sample     pyannote's own 30 s recording of two real speakers
  voices     2- and 3-speaker conversations built from real single-speaker recordings (``voices/``)
  generated  a 3-minute, 3-speaker espeak-ng conversation (tests/audiogen.py): a smoke check, not accuracy
The segmentation and embeddings of a file are computed once per engine; the runs with and without the speaker
count share them (the count only changes the clustering).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
SHARED = ROOT.parent / "shared" / "dev-audio"
BUNDLED = ROOT / "tests" / "data" / "dev-audio"
MIN_TALK = 2.0


@dataclass(frozen=True)
class Item:
    group: str
    name: str
    audio: Path
    rttm: Path


def dev_audio() -> Path:
    """The shared dev set when it is there (all 12 AMI clips), else the project's copy (the tests' subset)."""
    return SHARED if (SHARED / "ami").is_dir() else BUNDLED


def ami_items() -> list[Item]:
    folder = dev_audio() / "ami"
    return [Item("ami", w.stem, w, w.with_suffix(".rttm")) for w in sorted(folder.glob("*.wav"))]


def sample_item() -> Item:
    from diarist.daemon.cli import sample_audio

    audio, rttm = sample_audio()
    return Item("sample", "sample", audio, rttm)


def voices_items() -> list[Item]:
    from conversations import build_conversation

    folder = dev_audio() / "voices"
    CACHE.mkdir(parents=True, exist_ok=True)
    items = []
    for name, speakers, seed in (("voices2", 2, 1), ("voices3", 3, 2)):
        audio, rttm = CACHE / f"{name}.wav", CACHE / f"{name}.rttm"
        if not (audio.exists() and rttm.exists()):
            build_conversation(folder, speakers, audio, rttm, seed=seed)
        items.append(Item("voices", name, audio, rttm))
    return items


def generated_items() -> list[Item]:
    audio, rttm = CACHE / "gen3.wav", CACHE / "gen3.rttm"
    if not (audio.exists() and rttm.exists()):
        CACHE.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(ROOT / "tests/audiogen.py"), str(audio), "--speakers", "3", "--seconds", "180"]
        subprocess.run([*cmd, "--seed", "11", "--rttm", str(rttm)], check=True, stdout=subprocess.DEVNULL)
    return [Item("generated", "gen3", audio, rttm)]


def user_item(spec: str) -> Item:
    audio, _, ref = spec.rpartition(":")
    if not audio or not Path(ref).is_file() or not Path(audio).is_file():
        raise SystemExit(f"accuracy: --file wants AUDIO:REFERENCE.rttm, both existing files (got {spec!r})")
    return Item("files", Path(audio).stem, Path(audio), Path(ref))


def reference(rttm: Path) -> Any:
    from pyannote.database.util import load_rttm

    return next(iter(load_rttm(str(rttm)).values()))


def score(ref: Any, segments: Any) -> dict[str, Any]:
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    hyp = Annotation(uri=ref.uri)
    for s in segments:
        hyp[Segment(s.start, s.end)] = s.speaker
    parts = DiarizationErrorRate(collar=0.0, skip_overlap=False)(ref, hyp, detailed=True)
    total = parts["total"] or 1e-9
    return {
        "der": parts["diarization error rate"],
        "der25": DiarizationErrorRate(collar=0.25, skip_overlap=False)(ref, hyp),
        "missed": parts["missed detection"],
        "false_alarm": parts["false alarm"],
        "confusion": parts["confusion"],
        "total": total,
        "found": len(hyp.labels()),
    }


class Memo:
    """Remembers an engine's segmentation and embeddings per file, so that a second run of the same file with
    another speaker count redoes only the clustering: pyannote's pipeline (stock) by uri, diarist's
    ``Diarizer`` by the samples."""

    def __init__(self, pipeline: Any):
        self.seg: dict[Any, Any] = {}
        self.emb: dict[Any, Any] = {}
        if hasattr(pipeline, "get_segmentations"):
            self._pyannote(pipeline)
        else:
            self._diarizer(pipeline)

    def _pyannote(self, pipeline: Any) -> None:
        get_seg, get_emb = pipeline.get_segmentations, pipeline.get_embeddings

        def segmentations(file: Any, hook: Any = None) -> Any:
            key = (file["uri"], getattr(pipeline._segmentation, "step", None))
            if key not in self.seg:
                self.seg[key] = get_seg(file, hook=hook)
            return self.seg[key]

        def embeddings(file: Any, binary: Any, exclude_overlap: bool = False, hook: Any = None) -> Any:
            if file["uri"] not in self.emb:
                self.emb[file["uri"]] = get_emb(file, binary, exclude_overlap=exclude_overlap, hook=hook)
            return self.emb[file["uri"]].copy()

        pipeline.get_segmentations, pipeline.get_embeddings = segmentations, embeddings

    def _diarizer(self, diarizer: Any) -> None:
        import hashlib

        get_seg, get_emb = diarizer.segment, diarizer.embed

        def key(waveform: Any) -> str:
            return hashlib.sha1(waveform.tobytes()).hexdigest()

        def segment(waveform: Any, hook: Any = None) -> Any:
            k = key(waveform)
            if k not in self.seg:
                self.seg[k] = get_seg(waveform, hook)
            return self.seg[k]

        def embed(waveform: Any, seg: Any, hook: Any = None) -> Any:
            k = key(waveform)
            if k not in self.emb:
                self.emb[k] = get_emb(waveform, seg, hook)
            return self.emb[k].copy()

        diarizer.segment, diarizer.embed = segment, embed


def run_engine(kind: str, items: list[Item], device: str) -> list[dict[str, Any]]:
    from diarist.handlers import audio
    from diarist.handlers.engine import LocalEngine
    from diarist.policies.flavor import Task

    engine = LocalEngine(device=device, fast=kind == "diarist")
    engine.load()
    Memo(engine._pipeline)
    rows = []
    for item in items:
        ref = reference(item.rttm)
        talkers = sum(1 for label in ref.labels() if ref.label_duration(label) >= MIN_TALK)
        waveform = audio.decode(item.audio)
        for mode, speakers in (("auto", None), ("true count", {"num_speakers": len(ref.labels())})):
            print(f"  {kind:7s} {item.name:10s} {mode} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            out = engine.run(waveform, uri=item.name, task=Task.DIARIZATION, speakers=speakers)
            row = {"group": item.group, "file": item.name, "engine": kind, "mode": mode}
            row.update(score(ref, out.segments), true=len(ref.labels()), talkers=talkers)
            row["seconds"] = time.perf_counter() - started
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| input | file | engine | speakers | DER | DER c0.25 | missed | false alarm | confusion | found/true (≥2 s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["total"]
        lines.append(
            f"| {r['group']} | {r['file']} | {r['engine']} | {r['mode']} | {r['der']:.3f} | {r['der25']:.3f} | "
            f"{r['missed'] / t:.3f} | {r['false_alarm'] / t:.3f} | {r['confusion'] / t:.3f} | "
            f"{r['found']}/{r['true']} ({r['talkers']}) |"
        )
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| input | engine | speakers | files | mean DER | mean DER c0.25 | pooled DER | pooled missed | pooled FA "
        "| pooled confusion | count within ±1 (≥2 s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["group"], r["engine"], r["mode"]) for r in rows}, key=lambda k: (k[0], k[2], k[1] != "stock"))
    for group, engine, mode in keys:
        rs = [r for r in rows if (r["group"], r["engine"], r["mode"]) == (group, engine, mode)]
        total = sum(r["total"] for r in rs)
        pooled = {k: sum(r[k] for r in rs) / total for k in ("missed", "false_alarm", "confusion")}
        within = sum(1 for r in rs if abs(r["found"] - r["talkers"]) <= 1)
        lines.append(
            f"| {group} | {engine} | {mode} | {len(rs)} | {np.mean([r['der'] for r in rs]):.3f} | "
            f"{np.mean([r['der25'] for r in rs]):.3f} | {sum(pooled.values()):.3f} | {pooled['missed']:.3f} | "
            f"{pooled['false_alarm']:.3f} | {pooled['confusion']:.3f} | {within}/{len(rs)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", default="ami,sample,voices,generated")
    parser.add_argument("--file", action="append", default=[], help="AUDIO:REFERENCE.rttm")
    parser.add_argument("--no-stock", action="store_true", help="diarist only (no baseline: no comparison)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write every row as JSON here")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    makers = {"ami": ami_items, "sample": lambda: [sample_item()], "voices": voices_items}
    makers["generated"] = generated_items
    items: list[Item] = []
    for name in filter(None, args.inputs.split(",")):
        if name not in makers:
            raise SystemExit(f"accuracy: unknown input {name!r} (choose from {', '.join(makers)})")
        items += makers[name]()
    items += [user_item(spec) for spec in args.file]

    started = time.time()
    rows = []
    for kind in ("diarist",) if args.no_stock else ("stock", "diarist"):
        rows += run_engine(kind, items, args.device)
    rows.sort(key=lambda r: (r["group"], r["file"], r["mode"], r["engine"] != "stock"))
    print(f"\n### Accuracy, per file (collar 0 unless noted; dev audio from {dev_audio()})\n")
    print(table(rows))
    print("\n### Accuracy, per input\n")
    print(summary(rows))
    print(f"\n(accuracy benchmark took {(time.time() - started) / 60:.1f} min)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(ROOT / "tests"))
    sys.exit(main())
