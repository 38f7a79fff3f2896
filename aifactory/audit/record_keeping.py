"""What each field of a runtime decision record is for, read against the EU AI Act's record-keeping
article (Regulation (EU) 2024/1689, Art. 12) and the NIST AI RMF 1.0 subcategories of MEASURE and
MANAGE. One table, used by the audit report's AI section and checked against docs/loop.md,
docs/audit.md and the records the server writes (tests/audit/test_ai_evidence.py,
tests/runtime/test_canary.py).

The mapping is aifactory's reading, not a legal opinion. What is cited:

    Art. 12(1)      the system technically allows the automatic recording of events (logs) over its
                    lifetime
    Art. 12(2)(a)   events relevant for identifying situations that may result in the system
                    presenting a risk, or in a substantial modification
    Art. 12(2)(b)   events relevant for facilitating post-market monitoring (Art. 72)
    Art. 12(2)(c)   events relevant for monitoring the operation of the system (Art. 26(5))
    Art. 12(3)(a)   the period of each use; Art. 12(3) applies only to remote biometric
                    identification systems (Annex III, point 1(a))
    MEASURE 2.4     the functionality and behaviour of the system are monitored in production
    MEASURE 2.7     security and resilience are evaluated and documented
    MEASURE 2.8     risks of transparency and accountability are examined and documented
    MANAGE 4.1      post-deployment monitoring plans are implemented (capturing input from users,
                    change management, incident response)
"""

from __future__ import annotations

from dataclasses import dataclass

DISCLAIMER = "The mapping is aifactory's reading of the texts, not a legal opinion."

# When a field is written (a record holds the fields of every case it is in).
EVERY = "every record"
INFERENCE = "an inference decision"
CANARY = "an allowed inference while a canary runs"
FEEDBACK = "a feedback decision"
RATE_LIMITED = "the summary of rate-limited requests"


@dataclass(frozen=True)
class FieldMapping:
    """One field of a decision record (a dotted path: `request.model_digest`) and what it serves."""

    field: str
    written: str  # when the server writes it (one of the constants above)
    meaning: str
    eu_ai_act: tuple[str, ...]
    nist_ai_rmf: tuple[str, ...]


DECISION_RECORD_FIELDS: tuple[FieldMapping, ...] = (
    FieldMapping("seq", EVERY, "the record's place in the hash chain", ("Art. 12(1)",), ("MEASURE 2.8",)),
    FieldMapping(
        "prev",
        EVERY,
        "the previous record's hash: nothing removed unnoticed",
        ("Art. 12(1)",),
        ("MEASURE 2.8",),
    ),
    FieldMapping(
        "canon", EVERY, "how the record was canonicalised for hashing", ("Art. 12(1)",), ("MEASURE 2.8",)
    ),
    FieldMapping(
        "hash",
        EVERY,
        "this record's hash; signed heads cover it",
        ("Art. 12(1)",),
        ("MEASURE 2.7", "MEASURE 2.8"),
    ),
    FieldMapping(
        "time",
        EVERY,
        "when it was decided (UTC, milliseconds)",
        ("Art. 12(1)", "Art. 12(2)(c)", "Art. 12(3)(a)"),
        ("MEASURE 2.4", "MANAGE 4.1"),
    ),
    FieldMapping("host", EVERY, "the node that decided", ("Art. 12(2)(c)",), ("MEASURE 2.4",)),
    FieldMapping(
        "component",
        EVERY,
        "the program that decided (server, training)",
        ("Art. 12(2)(c)",),
        ("MEASURE 2.4",),
    ),
    FieldMapping(
        "decision_id",
        EVERY,
        "the id the answer, the receipt, feedback and lineage carry",
        ("Art. 12(2)(b)",),
        ("MEASURE 2.8", "MANAGE 4.1"),
    ),
    FieldMapping(
        "tenant",
        EVERY,
        "who asked (from a verified token or certificate)",
        ("Art. 12(2)(c)",),
        ("MEASURE 2.8",),
    ),
    FieldMapping(
        "identity", EVERY, "how the caller was identified", ("Art. 12(2)(c)",), ("MEASURE 2.7", "MEASURE 2.8")
    ),
    FieldMapping("token_id", EVERY, "the token used (never the token)", ("Art. 12(2)(c)",), ("MEASURE 2.8",)),
    FieldMapping(
        "certificate",
        EVERY,
        "the client certificate presented (serial, SHA-256)",
        ("Art. 12(2)(c)",),
        ("MEASURE 2.8",),
    ),
    FieldMapping(
        "action", EVERY, "what was asked (infer, contribute, train)", ("Art. 12(2)(c)",), ("MEASURE 2.4",)
    ),
    FieldMapping("resource", EVERY, "the model or dataset asked for", ("Art. 12(2)(c)",), ("MEASURE 2.4",)),
    FieldMapping("allow", EVERY, "the decision", ("Art. 12(2)(a)", "Art. 12(2)(c)"), ("MEASURE 2.8",)),
    FieldMapping(
        "reasons", EVERY, "the policy's reason codes (why denied)", ("Art. 12(2)(a)",), ("MEASURE 2.8",)
    ),
    FieldMapping(
        "controls", EVERY, "the controls the reasons stand for", ("Art. 12(2)(a)",), ("MEASURE 2.8",)
    ),
    FieldMapping(
        "request.id", INFERENCE, "the server's request number", ("Art. 12(2)(c)",), ("MEASURE 2.4",)
    ),
    FieldMapping("request.peer", INFERENCE, "the client's address", ("Art. 12(2)(c)",), ("MEASURE 2.7",)),
    FieldMapping(
        "request.model_digest",
        INFERENCE,
        "the signed model version that answered (lineage starts here)",
        ("Art. 12(2)(a)", "Art. 12(2)(b)"),
        ("MEASURE 2.4", "MEASURE 2.8", "MANAGE 4.1"),
    ),
    FieldMapping(
        "request.model_role",
        CANARY,
        "champion or canary: which side of a change answered",
        ("Art. 12(2)(a)", "Art. 12(2)(b)"),
        ("MEASURE 2.4", "MANAGE 4.1"),
    ),
    FieldMapping(
        "request.feedback_on",
        FEEDBACK,
        "the decision the feedback is about",
        ("Art. 12(2)(b)",),
        ("MANAGE 4.1",),
    ),
    FieldMapping(
        "request.suppressed",
        RATE_LIMITED,
        "how many denied requests were shed, not recorded one by one",
        ("Art. 12(1)", "Art. 12(2)(a)"),
        ("MEASURE 2.7",),
    ),
    FieldMapping(
        "request.window_start", RATE_LIMITED, "when the shed window began", ("Art. 12(1)",), ("MEASURE 2.7",)
    ),
    FieldMapping(
        "request.window_seconds",
        RATE_LIMITED,
        "how long the shed window was",
        ("Art. 12(1)",),
        ("MEASURE 2.7",),
    ),
)


def as_rows() -> list[dict[str, str]]:
    """The table as report.json carries it (one row per field, in the table's order)."""
    return [
        {
            "field": m.field,
            "written": m.written,
            "meaning": m.meaning,
            "eu_ai_act": ", ".join(m.eu_ai_act),
            "nist_ai_rmf": ", ".join(m.nist_ai_rmf),
        }
        for m in DECISION_RECORD_FIELDS
    ]


def markdown_table() -> str:
    """The table as docs/loop.md and docs/audit.md hold it, byte for byte."""
    lines = [
        "| decision record field | written on | what it records | EU AI Act | NIST AI RMF |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| `{r['field']}` | {r['written']} | {r['meaning']} | {r['eu_ai_act']} | {r['nist_ai_rmf']} |"
        for r in as_rows()
    ]
    return "\n".join(lines) + "\n"


def field_paths(record: dict[str, object]) -> set[str]:
    """The dotted paths of a record's fields, one level into `request` (what the table names)."""
    paths = set(record)
    request = record.get("request")
    if isinstance(request, dict):
        paths |= {f"request.{key}" for key in request}
    return paths
