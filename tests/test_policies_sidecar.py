"""Per-file sidecar settings (diarist.policies.sidecar)."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diarist.policies import (
    FileOverride,
    FileRequest,
    Priority,
    RouteSetting,
    SidecarError,
    Task,
    parse_sidecar,
    parse_sidecar_text,
    sidecar_names,
)
from diarist.policies.pricing import FALLBACK_PRICES, JOB_FLAVORS
from diarist.policies.sidecar import MAX_FLAVOR_LENGTH, MAX_USER_LENGTH

ROUTES = "'auto', 'local', 'cloud'"
PRIORITIES = "'cost', 'balanced', 'speed'"
TASKS = "'diarization', 'vad', 'osd', 'full', 'transcribe'"
ALLOWED_KEYS = (
    "flavor, formats, language, max_speakers, min_speakers, num_speakers, priority, route, speakers, task, user,"
    " version"
)
POSITIVE = "positive integer"


class TestSidecarNames:
    @pytest.mark.parametrize(
        ("audio", "expected"),
        [
            ("meeting.wav", ("meeting.wav.diarist.json", "meeting.diarist.json")),
            ("talk.2024-05-01.m4a", ("talk.2024-05-01.m4a.diarist.json", "talk.2024-05-01.diarist.json")),
            ("sub/dir/call.mp3", ("sub/dir/call.mp3.diarist.json", "sub/dir/call.diarist.json")),
            ("noext", ("noext.diarist.json",)),
            (".wav", (".wav.diarist.json",)),
            ("a.b/noext", ("a.b/noext.diarist.json",)),
        ],
    )
    def test_names_in_lookup_order(self, audio: str, expected: tuple[str, ...]) -> None:
        """The full-name sidecar comes first, then the stem one; no stem without an extension."""
        assert sidecar_names(audio) == expected

    @given(st.text(min_size=1))
    def test_every_name_is_a_sidecar_name(self, audio: str) -> None:
        """Each candidate ends in .diarist.json, the first keeps the whole name, and none repeats."""
        names = sidecar_names(audio)
        assert names[0] == audio + ".diarist.json"
        assert all(n.endswith(".diarist.json") for n in names)
        assert len(set(names)) == len(names) in (1, 2)


VALID: list[tuple[str, Any, FileRequest]] = [
    ("empty document", {}, FileRequest()),
    ("version 1", {"version": 1}, FileRequest()),
    *[(f"route {r.value}", {"route": r.value}, FileRequest(route=r)) for r in RouteSetting],
    *[(f"priority {p.value}", {"priority": p.value}, FileRequest(priority=p)) for p in Priority],
    *[(f"task {t.value}", {"task": t.value}, FileRequest(task=t)) for t in Task],
    ("language de", {"task": "transcribe", "language": "de"}, FileRequest(task=Task.TRANSCRIBE, language="de")),
    ("formats", {"formats": ["VTT", "json", "srt"]}, FileRequest(formats=("vtt", "srt"))),
    *[(f"flavor {p.name}", {"flavor": p.name}, FileRequest(flavor=p.name)) for p in FALLBACK_PRICES],
    *[(f"flavor {name}", {"flavor": name}, FileRequest(flavor=name)) for name in ("rtx-pro-6000x8", "cpu-xl")],
    ("user", {"user": "alice"}, FileRequest(user="alice")),
    ("user with spaces and unicode", {"user": "Zoë Ng"}, FileRequest(user="Zoë Ng")),
    ("user of 100 characters", {"user": "u" * 100}, FileRequest(user="u" * 100)),
    ("num_speakers", {"num_speakers": 2}, FileRequest(num_speakers=2)),
    ("min_speakers", {"min_speakers": 1}, FileRequest(min_speakers=1)),
    ("max_speakers", {"max_speakers": 5}, FileRequest(max_speakers=5)),
    ("min and max", {"min_speakers": 2, "max_speakers": 4}, FileRequest(min_speakers=2, max_speakers=4)),
    ("min equals max", {"min_speakers": 3, "max_speakers": 3}, FileRequest(min_speakers=3, max_speakers=3)),
    ("speakers.num", {"speakers": {"num": 2}}, FileRequest(num_speakers=2)),
    ("speakers.min/max", {"speakers": {"min": 2, "max": 4}}, FileRequest(min_speakers=2, max_speakers=4)),
    ("empty speakers", {"speakers": {}}, FileRequest()),
    (
        "flat min with nested max",
        {"min_speakers": 2, "speakers": {"max": 3}},
        FileRequest(min_speakers=2, max_speakers=3),
    ),
    ("same count in both spellings", {"num_speakers": 2, "speakers": {"num": 2}}, FileRequest(num_speakers=2)),
    (
        "everything",
        {
            "version": 1,
            "route": "cloud",
            "flavor": "a10g-small",
            "priority": "speed",
            "task": "full",
            "speakers": {"min": 2, "max": 4},
            "user": "alice",
        },
        FileRequest(
            route=RouteSetting.CLOUD,
            flavor="a10g-small",
            priority=Priority.SPEED,
            task=Task.FULL,
            min_speakers=2,
            max_speakers=4,
            user="alice",
        ),
    ),
]

# (id, document, field at fault, fragments the message must contain)
INVALID: list[tuple[str, Any, str | None, tuple[str, ...]]] = [
    ("list document", [], None, ("JSON object", "got a list")),
    ("string document", "cloud", None, ("JSON object", "got 'cloud'")),
    ("null document", None, None, ("JSON object", "got null")),
    ("number document", 3, None, ("JSON object", "got 3")),
    ("unknown key", {"colour": "red"}, "colour", ("unknown key 'colour'", ALLOWED_KEYS)),
    ("typo gets a suggestion", {"rout": "cloud"}, "rout", ("did you mean 'route'?", ALLOWED_KEYS)),
    ("key with capitals", {"Route": "cloud"}, "Route", ("did you mean 'route'?",)),
    ("singular speaker", {"speaker": {"num": 2}}, "speaker", ("did you mean 'speakers'?",)),
    ("several unknown keys", {"b": 1, "a": 2}, "a", ("'a', 'b'", ALLOWED_KEYS)),
    ("version 2", {"version": 2}, "version", ("must be 1", "got 2")),
    ("version 0", {"version": 0}, "version", ("must be 1", "got 0")),
    ("version as text", {"version": "1"}, "version", ("must be 1", "got '1'")),
    ("version as float", {"version": 1.0}, "version", ("must be 1", "got 1.0")),
    ("version true", {"version": True}, "version", ("must be 1", "got true")),
    ("route unknown", {"route": "gpu"}, "route", (ROUTES, "got 'gpu'")),
    ("route is case-sensitive", {"route": "Cloud"}, "route", (ROUTES, "got 'Cloud'")),
    ("route empty", {"route": ""}, "route", (ROUTES, "got ''")),
    ("route null", {"route": None}, "route", (ROUTES, "got null")),
    ("route list", {"route": ["cloud"]}, "route", (ROUTES, "got a list")),
    ("route deferred is an outcome, not a request", {"route": "deferred"}, "route", (ROUTES,)),
    ("priority unknown", {"priority": "fast"}, "priority", (PRIORITIES, "got 'fast'")),
    ("priority number", {"priority": 1}, "priority", (PRIORITIES, "got 1")),
    ("task unknown", {"task": "translate"}, "task", (TASKS, "got 'translate'")),
    ("task object", {"task": {}}, "task", (TASKS, "got an object")),
    ("language a name", {"language": "English"}, "language", ("ISO 639-1", '"en"', "got 'English'")),
    ("language a number", {"language": 7}, "language", ("ISO 639-1", "got 7")),
    ("formats not a list", {"formats": "srt"}, "formats", ('["srt", "textgrid"]', "got 'srt'")),
    ("formats unknown", {"formats": ["srt", "docx"]}, "formats", ("'docx'", "textgrid")),
    ("flavor uppercase", {"flavor": "A10G-small"}, "flavor", ("'a10g-small'", "lowercase", "got 'A10G-small'")),
    ("flavor empty", {"flavor": ""}, "flavor", ("'cpu-basic'", "got ''")),
    ("flavor with space", {"flavor": "t4 small"}, "flavor", ("'t4-small'", "got 't4 small'")),
    ("flavor with underscore", {"flavor": "t4_small"}, "flavor", ("digits and '-'",)),
    ("flavor too long", {"flavor": "a" * (MAX_FLAVOR_LENGTH + 1)}, "flavor", ("at most 40 characters",)),
    ("flavor number", {"flavor": 4}, "flavor", ("'a10g-small'", "got 4")),
    ("flavor null", {"flavor": None}, "flavor", ("'h200'", "got null")),
    # well-formed, but the Jobs API does not know it: the error lists every valid name
    ("flavor unknown", {"flavor": "b200x8"}, "flavor", ("must be one of cpu-basic", "l40sx1", "got 'b200x8'")),
    ("flavor retired", {"flavor": "h100"}, "flavor", ("rtx-pro-6000x8", "got 'h100'")),
    ("user empty", {"user": ""}, "user", ("non-empty", "at most 100 characters", "got empty")),
    ("user blank", {"user": "   "}, "user", ("non-empty", "got empty")),
    ("user number", {"user": 7}, "user", ("non-empty", "got 7")),
    ("user too long", {"user": "u" * (MAX_USER_LENGTH + 1)}, "user", ("at most 100 characters", "got 101")),
    ("user with newline", {"user": "alice\nbob"}, "user", ("single line", "'alice\\nbob'")),
    *[
        (f"{key} {label}", {key: value}, key, (POSITIVE, shown))
        for key in ("num_speakers", "min_speakers", "max_speakers")
        for label, value, shown in [
            ("zero", 0, "got 0"),
            ("negative", -2, "got -2"),
            ("boolean", True, "got true"),
            ("float", 2.0, "got 2.0"),
            ("string", "2", "got '2'"),
            ("null", None, "got null"),
        ]
    ],
    ("speakers not an object", {"speakers": 2}, "speakers", ('{"min": 2, "max": 4}', "got 2")),
    ("speakers list", {"speakers": [2, 4]}, "speakers", ("object", "got a list")),
    (
        "speakers unknown key",
        {"speakers": {"minimum": 2}},
        "speakers.minimum",
        ("did you mean 'min'?", "max, min, num"),
    ),
    ("speakers flat key inside", {"speakers": {"num_speakers": 2}}, "speakers.num_speakers", ("max, min, num",)),
    ("speakers.num zero", {"speakers": {"num": 0}}, "speakers.num", (POSITIVE, "got 0")),
    ("speakers.min boolean", {"speakers": {"min": False}}, "speakers.min", (POSITIVE, "got false")),
    ("speakers.max float", {"speakers": {"max": 3.5}}, "speakers.max", (POSITIVE, "got 3.5")),
    (
        "num with min",
        {"num_speakers": 2, "min_speakers": 1},
        "num_speakers",
        ("cannot be combined with min_speakers", "exact count", "range"),
    ),
    ("num with max", {"num_speakers": 2, "max_speakers": 3}, "num_speakers", ("cannot be combined with max_speakers",)),
    ("nested num with max", {"speakers": {"num": 2, "max": 3}}, "speakers.num", ("combined with speakers.max",)),
    ("mixed num with min", {"num_speakers": 2, "speakers": {"min": 1}}, "num_speakers", ("with speakers.min",)),
    ("min above max", {"min_speakers": 4, "max_speakers": 2}, "min_speakers", ("larger than max_speakers", "4 > 2")),
    ("nested min above max", {"speakers": {"min": 5, "max": 3}}, "speakers.min", ("speakers.max", "5 > 3")),
    (
        "spellings disagree",
        {"num_speakers": 2, "speakers": {"num": 3}},
        "speakers.num",
        ("is 3 but num_speakers is 2", "once"),
    ),
]


class TestParseSidecar:
    @pytest.mark.parametrize(("doc", "expected"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
    def test_accepts(self, doc: Any, expected: FileRequest) -> None:
        """Every key, in each accepted spelling, lands in the matching FileRequest field."""
        assert parse_sidecar(doc) == expected

    @pytest.mark.parametrize(("doc", "field", "fragments"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
    def test_rejects(self, doc: Any, field: str | None, fragments: tuple[str, ...]) -> None:
        """A bad document raises SidecarError naming the key, the bad value and what is allowed."""
        with pytest.raises(SidecarError) as info:
            parse_sidecar(doc)
        error = info.value
        assert error.field == field
        message = str(error)
        if field is not None:
            assert message.startswith(f"{field}: ")
        for fragment in fragments:
            assert fragment in message

    def test_does_not_mutate_the_document(self) -> None:
        """Parsing leaves the caller's dictionaries as they were."""
        doc = {"route": "cloud", "speakers": {"min": 2}}
        parse_sidecar(doc)
        assert doc == {"route": "cloud", "speakers": {"min": 2}}

    def test_huge_values_give_short_messages(self) -> None:
        """A bad value is shown cut short, so an error message stays readable."""
        with pytest.raises(SidecarError) as info:
            parse_sidecar({"route": "x" * 10_000})
        assert len(str(info.value)) < 200
        with pytest.raises(SidecarError, match="very large number"):
            parse_sidecar({"num_speakers": -(10**5000)})


class TestParseSidecarText:
    def test_decodes_and_validates(self) -> None:
        """Text goes through JSON and then the same validation."""
        text = '{"version": 1, "route": "local", "speakers": {"num": 3}}'
        assert parse_sidecar_text(text) == FileRequest(route=RouteSetting.LOCAL, num_speakers=3)

    def test_ignores_byte_order_mark(self) -> None:
        """A UTF-8 BOM, as Windows Notepad writes, is not an error."""
        assert parse_sidecar_text('\ufeff{"task": "vad"}') == FileRequest(task=Task.VAD)

    @pytest.mark.parametrize(
        ("text", "fragment"),
        [
            ("", "line 1 column 1"),
            ("{", "line 1 column 2"),
            ('{\n  "route": "cloud",\n}', "line 3 column 1"),
            ("{'route': 'cloud'}", "line 1 column 2"),
            ('{"route": "cloud"} trailing', "line 1 column 20"),
        ],
    )
    def test_bad_json_says_where(self, text: str, fragment: str) -> None:
        """Undecodable text raises SidecarError without a field, giving line and column."""
        with pytest.raises(SidecarError) as info:
            parse_sidecar_text(text)
        assert info.value.field is None
        assert str(info.value).startswith("not valid JSON: ")
        assert fragment in str(info.value)

    @pytest.mark.parametrize(
        ("text", "field", "fragment"),
        [
            ("[]", None, "JSON object"),
            ("null", None, "got null"),
            ('{"route": "cloud", "route": "local"}', "route", "given twice"),
            ('{"speakers": {"min": 1, "min": 2}}', "min", "given twice"),
            ('{"route": "clouds"}', "route", ROUTES),
            ('{"num_speakers": 2.0}', "num_speakers", POSITIVE),
            ('{"num_speakers": NaN}', "num_speakers", "got nan"),
            ("1" * 5000, None, "too long"),
            ("[" * 100_000, None, "nested too deeply"),
        ],
    )
    def test_rejects(self, text: str, field: str | None, fragment: str) -> None:
        """Valid JSON that is a bad sidecar, a repeated key, or JSON Python cannot hold raises SidecarError."""
        with pytest.raises(SidecarError) as info:
            parse_sidecar_text(text)
        assert info.value.field == field
        assert fragment in str(info.value)


class TestFileRequest:
    def test_as_override_keeps_the_routing_part(self) -> None:
        """as_override carries route, flavor, priority and task, and nothing about speakers or user."""
        request = FileRequest(
            route=RouteSetting.CLOUD,
            flavor="t4-small",
            priority=Priority.COST,
            task=Task.OSD,
            num_speakers=2,
            user="bob",
        )
        assert request.as_override() == FileOverride(RouteSetting.CLOUD, "t4-small", Priority.COST, Task.OSD)
        assert FileRequest().as_override() == FileOverride()

    @pytest.mark.parametrize(
        ("request_", "expected"),
        [
            (FileRequest(), {}),
            (FileRequest(num_speakers=2, user="x"), {"num_speakers": 2}),
            (FileRequest(min_speakers=1, max_speakers=3), {"min_speakers": 1, "max_speakers": 3}),
        ],
    )
    def test_speakers_only_set_counts(self, request_: FileRequest, expected: dict[str, int]) -> None:
        """speakers() gives pyannote's keyword arguments for the counts that are set."""
        assert request_.speakers() == expected

    def test_to_json_only_set_fields_as_strings(self) -> None:
        """to_json writes set fields under their flat names, enums as plain strings, and is JSON-serializable."""
        request = parse_sidecar({"route": "auto", "task": "full", "speakers": {"max": 4}, "user": "alice"})
        data = request.to_json()
        assert data == {"route": "auto", "task": "full", "max_speakers": 4, "user": "alice"}
        assert all(type(v) in (str, int) for v in data.values())
        assert json.loads(json.dumps(data)) == data
        assert FileRequest().to_json() == {}

    def test_from_json_inverts_to_json(self) -> None:
        """from_json rebuilds the same request, enums included."""
        request = FileRequest(RouteSetting.LOCAL, "l4x1", Priority.BALANCED, Task.DIARIZATION, None, 2, 5, "z")
        again = FileRequest.from_json(request.to_json())
        assert again == request
        assert isinstance(again.route, RouteSetting) and isinstance(again.task, Task)

    def test_from_json_refuses_unknown_fields(self) -> None:
        """A ledger row with a field FileRequest does not have is a bug, not something to drop."""
        with pytest.raises(ValueError, match="speakers"):
            FileRequest.from_json({"speakers": {"num": 2}})


class TestSidecarError:
    def test_is_a_value_error_with_field_and_message(self) -> None:
        """SidecarError is a ValueError; str() prefixes the field when there is one."""
        error = SidecarError("speakers.min", "must be a positive integer")
        assert isinstance(error, ValueError)
        assert (error.field, error.message) == ("speakers.min", "must be a positive integer")
        assert str(error) == "speakers.min: must be a positive integer"
        assert str(SidecarError(None, "not valid JSON")) == "not valid JSON"

    def test_survives_pickling(self) -> None:
        """The error crosses process boundaries intact (worker processes, logging handlers)."""
        error = pickle.loads(pickle.dumps(SidecarError("route", "bad")))
        assert (error.field, error.message, str(error)) == ("route", "bad", "route: bad")


# --- property tests ---------------------------------------------------------------------------------------

flavors = st.sampled_from(JOB_FLAVORS)
users = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=100).filter(str.strip)
counts = st.integers(min_value=1, max_value=64)


@st.composite
def speaker_parts(draw: st.DrawFn) -> dict[str, Any]:
    """A consistent set of speaker counts, each in a randomly chosen spelling."""
    if draw(st.booleans()):
        chosen = {"num": draw(counts)} if draw(st.booleans()) else {}
    else:
        low, high = sorted((draw(counts), draw(counts)))
        chosen = {k: v for k, v in (("min", low), ("max", high)) if draw(st.booleans())}
    doc: dict[str, Any] = {}
    for short, value in chosen.items():
        if draw(st.booleans()):
            doc.setdefault("speakers", {})[short] = value
        else:
            doc[f"{short}_speakers"] = value
    if draw(st.booleans()) and "speakers" not in doc:
        doc["speakers"] = {}
    return doc


valid_docs = st.builds(
    lambda base, speakers: {**base, **speakers},
    st.fixed_dictionaries(
        {},
        optional={
            "version": st.just(1),
            "route": st.sampled_from([r.value for r in RouteSetting]),
            "flavor": flavors,
            "priority": st.sampled_from([p.value for p in Priority]),
            "task": st.sampled_from([t.value for t in Task]),
            "user": users,
        },
    ),
    speaker_parts(),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
# Mostly real keys, so the arbitrary values reach every field's validation rather than the unknown-key check.
sidecar_keys = st.sampled_from(
    ["version", "route", "flavor", "priority", "task", "user", "speakers", "num_speakers", "min_speakers"]
    + ["max_speakers", "num", "min", "max"]
) | st.text(max_size=10)
near_valid_docs = st.dictionaries(
    sidecar_keys, json_values | st.dictionaries(sidecar_keys, json_values, max_size=4), max_size=6
)


class TestProperties:
    @given(valid_docs)
    def test_valid_documents_parse_and_round_trip(self, doc: dict[str, Any]) -> None:
        """Any document built from valid values parses, and to_json/from_json and re-parsing give it back."""
        request = parse_sidecar(doc)
        data = request.to_json()
        assert FileRequest.from_json(data) == request
        assert parse_sidecar(data) == request
        assert parse_sidecar_text(json.dumps(doc)) == request
        nested = doc.get("speakers", {})
        for short in ("num", "min", "max"):
            assert getattr(request, f"{short}_speakers") == doc.get(f"{short}_speakers", nested.get(short))

    @given(json_values | near_valid_docs)
    def test_any_value_parses_or_raises_sidecar_error(self, value: Any) -> None:
        """parse_sidecar returns a FileRequest or raises SidecarError, never another exception."""
        try:
            request = parse_sidecar(value)
        except SidecarError as e:
            assert str(e)
        else:
            assert FileRequest.from_json(request.to_json()) == request

    @given(st.text(max_size=200) | json_values.map(json.dumps) | near_valid_docs.map(json.dumps))
    def test_any_text_parses_or_raises_sidecar_error(self, text: str) -> None:
        """parse_sidecar_text returns a FileRequest or raises SidecarError, never another exception."""
        try:
            parse_sidecar_text(text)
        except SidecarError as e:
            assert str(e)
