"""The formats people open results in, each a pure rendering of a stored result document.

SRT and WebVTT (subtitle players), Praat TextGrid and ELAN EAF (annotation tools: one tier per speaker),
Audacity labels and CSV (spreadsheets). RTTM and JSON are written always (``results``); these only on request.
Cues and intervals carry the words of a turn when the result has a transcript (task transcribe), and the
speaker's name when known voices were identified and names are the labels.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from diarist.policies.formats import EXPORT_FORMATS

#: format name -> file extension
EXTENSIONS = {
    "srt": "srt",
    "vtt": "vtt",
    "textgrid": "TextGrid",
    "eaf": "eaf",
    "audacity": "audacity.txt",
    "csv": "csv",
}
assert tuple(EXTENSIONS) == EXPORT_FORMATS


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    speaker: str
    text: str


def label_names(doc: dict[str, Any]) -> dict[str, str]:
    """Generic label -> the label to show: the identified name when the result says names are the labels."""
    if doc.get("identify", {}).get("labels") != "names":
        return {}
    return {s["label"]: s["identity"]["name"] for s in doc.get("speakers", []) if s.get("identity")}


def cues(doc: dict[str, Any]) -> list[Cue]:
    """One cue per speaker turn: the transcript's turns when there are, else the exclusive segments (one
    speaker at a time, as subtitles are read), else the segments."""
    names = label_names(doc)
    rows = doc.get("turns") or doc.get("exclusive_segments") or doc.get("segments") or []
    return [
        Cue(float(r["start"]), float(r["end"]), names.get(r["speaker"], r["speaker"]), str(r.get("text", "")))
        for r in sorted(rows, key=lambda r: (r["start"], r["end"]))
        if float(r["end"]) > float(r["start"])
    ]


def tiers(doc: dict[str, Any]) -> dict[str, list[Cue]]:
    """Per speaker, that speaker's stretches in time order (overlapping ones of one speaker merged)."""
    names = label_names(doc)
    rows = doc.get("turns") or doc.get("segments") or []
    out: dict[str, list[Cue]] = {names.get(s["label"], s["label"]): [] for s in doc.get("speakers", [])}
    for r in sorted(rows, key=lambda r: (r["start"], r["end"])):
        speaker = names.get(r["speaker"], r["speaker"])
        tier = out.setdefault(speaker, [])
        cue = Cue(float(r["start"]), float(r["end"]), speaker, str(r.get("text", "")))
        if tier and cue.start < tier[-1].end:
            last = tier[-1]
            tier[-1] = Cue(last.start, max(last.end, cue.end), speaker, " ".join(t for t in (last.text, cue.text) if t))
        elif cue.end > cue.start:
            tier.append(cue)
    return out


def _clock(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(doc: dict[str, Any]) -> str:
    blocks = []
    for n, c in enumerate(cues(doc), 1):
        text = f"{c.speaker}: {c.text}" if c.text else c.speaker
        blocks.append(f"{n}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n{text}\n")
    return "\n".join(blocks)


def vtt(doc: dict[str, Any]) -> str:
    blocks = ["WEBVTT\n"]
    for c in cues(doc):
        voice = c.speaker.replace(">", "").replace("&", "&amp;").replace("<", "")
        body = escape(c.text) if c.text else escape(c.speaker)
        blocks.append(f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n<v {voice}>{body}\n")
    return "\n".join(blocks)


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def textgrid(doc: dict[str, Any]) -> str:
    """Praat's long TextGrid format: an interval tier per speaker, gaps filled with empty intervals."""
    by = tiers(doc)
    xmax = max([float(doc["source"]["duration"])] + [c.end for t in by.values() for c in t])
    lines = [
        'File type = "ooTextFile"',
        'Object class = "TextGrid"',
        "",
        "xmin = 0",
        f"xmax = {xmax:.3f}",
        "tiers? <exists>",
        f"size = {len(by)}",
        "item []:",
    ]
    for i, (speaker, tier) in enumerate(by.items(), 1):
        intervals: list[tuple[float, float, str]] = []
        at = 0.0
        for c in tier:
            if c.start > at:
                intervals.append((at, c.start, ""))
            intervals.append((max(c.start, at), c.end, c.text or speaker))
            at = c.end
        if at < xmax or not intervals:
            intervals.append((at, xmax, ""))
        lines += [
            f"    item [{i}]:",
            '        class = "IntervalTier"',
            f"        name = {_quoted(speaker)}",
            "        xmin = 0",
            f"        xmax = {xmax:.3f}",
            f"        intervals: size = {len(intervals)}",
        ]
        for j, (a, b, text) in enumerate(intervals, 1):
            lines += [
                f"        intervals [{j}]:",
                f"            xmin = {a:.3f}",
                f"            xmax = {b:.3f}",
                f"            text = {_quoted(text)}",
            ]
    return "\n".join(lines) + "\n"


def eaf(doc: dict[str, Any]) -> str:
    """ELAN's EAF 3.0: a time slot per boundary, a tier per speaker, one annotation per stretch."""
    by = tiers(doc)
    # time slots in time order (ELAN expects them so); each annotation has its own two
    times = sorted(
        (round(t * 1000), speaker, n, end)
        for speaker, tier in by.items()
        for n, c in enumerate(tier)
        for end, t in ((0, c.start), (1, c.end))
    )
    slots = [ms for ms, *_ in times]
    slot_of = {(speaker, n, end): i for i, (_, speaker, n, end) in enumerate(times, 1)}
    annotations = {
        speaker: [(slot_of[speaker, n, 0], slot_of[speaker, n, 1], c.text or speaker) for n, c in enumerate(tier)]
        for speaker, tier in by.items()
    }
    media = escape(doc["source"]["name"])
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<ANNOTATION_DOCUMENT AUTHOR="diarist" DATE="1970-01-01T00:00:00Z" FORMAT="3.0" VERSION="3.0" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:noNamespaceSchemaLocation="http://www.mpi.nl/tools/elan/EAFv3.0.xsd">',
        '  <HEADER MEDIA_FILE="" TIME_UNITS="milliseconds">',
        f'    <MEDIA_DESCRIPTOR MEDIA_URL="file:///{media}" RELATIVE_MEDIA_URL="./{media}"/>',
        "  </HEADER>",
        "  <TIME_ORDER>",
        *(f'    <TIME_SLOT TIME_SLOT_ID="ts{i}" TIME_VALUE="{ms}"/>' for i, ms in enumerate(slots, 1)),
        "  </TIME_ORDER>",
    ]
    n = 0
    for speaker in by:
        out.append(f'  <TIER LINGUISTIC_TYPE_REF="default-lt" TIER_ID={quoteattr(speaker)}>')
        for a, b, text in annotations.get(speaker, []):
            n += 1
            out += [
                "    <ANNOTATION>",
                f'      <ALIGNABLE_ANNOTATION ANNOTATION_ID="a{n}" TIME_SLOT_REF1="ts{a}" TIME_SLOT_REF2="ts{b}">',
                f"        <ANNOTATION_VALUE>{escape(text)}</ANNOTATION_VALUE>",
                "      </ALIGNABLE_ANNOTATION>",
                "    </ANNOTATION>",
            ]
        out.append("  </TIER>")
    out += [
        '  <LINGUISTIC_TYPE GRAPHIC_REFERENCES="false" LINGUISTIC_TYPE_ID="default-lt" TIME_ALIGNABLE="true"/>',
        "</ANNOTATION_DOCUMENT>",
    ]
    return "\n".join(out) + "\n"


def audacity(doc: dict[str, Any]) -> str:
    """Audacity's label track (File > Import > Labels): start, end and label, tab-separated."""
    return "".join(
        f"{c.start:.6f}\t{c.end:.6f}\t{(c.speaker + ': ' + c.text) if c.text else c.speaker}\n" for c in cues(doc)
    )


def csv_text(doc: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["start", "end", "speaker", "duration", "text"])
    for c in cues(doc):
        writer.writerow([f"{c.start:.3f}", f"{c.end:.3f}", c.speaker, f"{c.end - c.start:.3f}", c.text])
    return buf.getvalue()


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "srt": srt,
    "vtt": vtt,
    "textgrid": textgrid,
    "eaf": eaf,
    "audacity": audacity,
    "csv": csv_text,
}


def render(doc: dict[str, Any], fmt: str) -> bytes:
    """The bytes of ``doc`` in format ``fmt`` (one of ``EXPORT_FORMATS``); raises ``KeyError`` for another."""
    return RENDERERS[fmt](doc).encode("utf-8")
