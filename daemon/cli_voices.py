"""``diarist voices``: enrol, list and remove known voices (README: Known voices)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from diarist.daemon import config as cfg
from diarist.handlers.errors import ConfigError

EXIT_OK, EXIT_FAILED = 0, 1
MAX_NAME = 64
#: a name is a label in RTTM, TextGrid and ELAN tiers and subtitle voices: one printable line
_NAME = re.compile(r"[^\x00-\x1f\x7f<>&\"]{1,64}")


def _name(value: str) -> str:
    name = value.strip()
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f'voice name {value!r} is not usable: give 1-{MAX_NAME} characters on one line, without < > & or "'
        )
    return name


def _ledger(settings: cfg.Settings) -> Any:
    from diarist.daemon.ledger import Ledger

    return Ledger(settings.daemon.ledger)


def cmd_add(settings: cfg.Settings, args: argparse.Namespace) -> int:
    from diarist.daemon.voices import VoiceBook
    from diarist.handlers import enrol

    name = _name(args.name)
    if args.from_result and args.audio:
        raise ConfigError("give recordings of the person or --from RESULT.json --speaker LABEL, not both")
    if args.from_result:
        if not args.speaker:
            raise ConfigError("--from needs --speaker (the label in that result, e.g. SPEAKER_01)")
        got = enrol.from_result(args.from_result, args.speaker)
    else:
        if not args.audio:
            raise ConfigError("give one or more recordings of the person, or --from RESULT.json --speaker LABEL")
        missing = [p for p in args.audio if not p.is_file()]
        if missing:
            raise ConfigError(f"no such file: {', '.join(map(str, missing))}")
        from diarist.daemon.worker import build_engine

        engine = build_engine(settings)
        engine.load()
        got = enrol.from_audio(engine, list(args.audio))
    VoiceBook(_ledger(settings)).add(name, got.model, got.vector, got.speech_seconds, got.clips)
    print(f"enrolled {name}: {got.speech_seconds:.1f} s of speech from {got.clips} clip(s) ({got.model})")
    return EXIT_OK


def cmd_list(settings: cfg.Settings, args: argparse.Namespace) -> int:
    from diarist.daemon.voices import VoiceBook

    prints = VoiceBook(_ledger(settings)).all()
    if not prints:
        print("no voices enrolled (diarist voices add NAME RECORDING...)")
        return EXIT_OK
    for v in prints:
        print(f"{v.name}\t{v.speech_seconds:.1f} s of speech, {v.clips} clip(s)\t{v.model}")
    return EXIT_OK


def cmd_remove(settings: cfg.Settings, args: argparse.Namespace) -> int:
    from diarist.daemon.voices import VoiceBook

    removed = VoiceBook(_ledger(settings)).remove(args.name)
    if not removed:
        print(f"diarist: no voice named {args.name!r} (diarist voices list)", file=sys.stderr)
        return EXIT_FAILED
    print(f"removed {args.name} ({removed} voiceprint(s))")
    return EXIT_OK


def add_commands(sub: Any, common: Any, wrap: Any) -> None:
    voices = sub.add_parser("voices", help="known voices: enrol, list, remove (names instead of SPEAKER_xx)")
    actions = voices.add_subparsers(dest="voices_action", required=True)
    add = actions.add_parser("add", help="enrol NAME from recordings of that person, or from a result's speaker")
    common(add)
    add.add_argument("name")
    add.add_argument("audio", nargs="*", type=Path, help="recordings of this one person")
    add.add_argument("--from", dest="from_result", type=Path, help="a result JSON whose speaker this is")
    add.add_argument("--speaker", help="with --from: the speaker's label in that result (e.g. SPEAKER_01)")
    add.set_defaults(func=wrap(cmd_add))
    listing = actions.add_parser("list", help="enrolled voices (names, speech, model; never the vectors)")
    common(listing)
    listing.set_defaults(func=wrap(cmd_list))
    remove = actions.add_parser("remove", help="delete NAME's voiceprints")
    common(remove)
    remove.add_argument("name")
    remove.set_defaults(func=wrap(cmd_remove))
