"""The one error root, its domain subclasses and the documented exit codes.

Errors are values with context: a short kebab-case reference, the message, where it happened
(file:line:column and the field path) and a hint. The console edge (aifactory.console), which every
entry point goes through, turns them into one plain message and an exit code; the traceback is
shown only with --debug. Every exception class of the package lives here (a test keeps it so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: the pipeline imports this module
    from aifactory.pipeline.runner import StageOutcome


class ExitCode(IntEnum):
    """Exit codes shared by every command (documented in docs/cli.md)."""

    OK = 0
    INVALID = 1  # validation failure or policy deny
    USAGE = 2  # bad command line
    CANNOT_EVALUATE = 3  # engine down, prerequisite missing, cannot decide
    HOSTS_FAILED = 4  # some hosts failed or were unreachable
    INCIDENT = 5  # more hosts failed than the health gate's drain budget: a site-wide incident
    INTERNAL = 70  # a bug: an error aifactory did not expect (sysexits' EX_SOFTWARE)
    INTERRUPTED = 130


@dataclass(frozen=True)
class Location:
    """Where a problem is: a file, a 1-based line and column, and a field path."""

    file: str | None = None
    line: int | None = None
    column: int | None = None
    path: str | None = None

    def prefix(self) -> str:
        parts: list[str] = []
        if self.file:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            parts.append(where)
        if self.path:
            parts.append(self.path)
        return ": ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column, "path": self.path}


@dataclass(frozen=True)
class Problem:
    """One finding inside a larger error (a validation error lists many)."""

    code: str
    message: str
    location: Location = field(default_factory=Location)
    hint: str | None = None

    def render(self) -> str:
        prefix = self.location.prefix()
        text = f"{prefix}: {self.message}" if prefix else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "hint": self.hint, **self.location.as_dict()}


class AifactoryError(Exception):
    """Root of every error aifactory raises on purpose."""

    code: str = "error"
    exit_code: ExitCode = ExitCode.INVALID

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        location: Location | None = None,
        hint: str | None = None,
        problems: list[Problem] | None = None,
        exit_code: ExitCode | None = None,
        omitted_problems: int = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if exit_code is not None:
            self.exit_code = exit_code
        self.location = location or Location()
        self.hint = hint
        self.problems = list(problems or [])
        self.omitted_problems = omitted_problems  # found but not listed (a cap keeps output bounded)

    def render(self) -> str:
        head = Problem(self.code, self.message, self.location, self.hint).render()
        lines = [f"error[{self.code}]: {head}"]
        lines += [f"  - {p.render()}" for p in self.problems]
        if self.omitted_problems:
            lines.append(f"  ... and {self.omitted_problems} more problems")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "hint": self.hint,
                "exit_code": int(self.exit_code),
                **self.location.as_dict(),
                "problems": [p.as_dict() for p in self.problems],
                "omitted_problems": self.omitted_problems,
            }
        }


class SpecError(AifactoryError):
    """The site spec cannot be read or is invalid."""

    code = "invalid-spec"
    exit_code = ExitCode.INVALID


class UsageError(AifactoryError):
    code = "usage"
    exit_code = ExitCode.USAGE


class PlanFormatError(UsageError):
    """A serialized plan (plan.json, given as --plan or read from a bundle) that is not one
    `SitePlan.to_dict()` could have written, or that cannot be read: the argument is wrong (exit 2)."""

    code = "invalid-plan"


class PrerequisiteError(AifactoryError):
    """A tool, engine or file the command needs is missing or not answering."""

    code = "missing-prerequisite"
    exit_code = ExitCode.CANNOT_EVALUATE


class PolicyDenied(AifactoryError):
    code = "policy-denied"
    exit_code = ExitCode.INVALID


class PolicyEngineError(AifactoryError):
    """The policy engine could not answer: fail closed."""

    code = "policy-cannot-evaluate"
    exit_code = ExitCode.CANNOT_EVALUATE


class StateError(AifactoryError):
    code = "state"
    exit_code = ExitCode.CANNOT_EVALUATE


class SiteLocked(StateError):
    code = "site-locked"


class SecretError(AifactoryError):
    code = "secret"
    exit_code = ExitCode.CANNOT_EVALUATE


class ChainError(AifactoryError):
    """A hash-chained log does not verify."""

    code = "chain-broken"
    exit_code = ExitCode.INVALID


class LogLineError(ChainError):
    """One line of a JSON-lines log that is not one JSON object (the message says why, in words a
    verification report can quote: duplicate key, not UTF-8, not JSON)."""

    code = "log-line"


class BundleError(AifactoryError):
    code = "bundle-invalid"
    exit_code = ExitCode.INVALID


class SignatureError(AifactoryError):
    """A signature is malformed or does not match the data it signs."""

    code = "bad-signature"


class SignerUntrusted(SignatureError):
    """The signature is sound, but the trust file does not grant its key for this principal,
    namespace and time (or cannot be read, or has a line OpenSSH would stop at)."""

    code = "signer-untrusted"


class LabError(AifactoryError):
    code = "lab"
    exit_code = ExitCode.CANNOT_EVALUATE


class DeployError(AifactoryError):
    code = "deploy"
    exit_code = ExitCode.HOSTS_FAILED


class UnsafeValueError(AifactoryError):
    """A value a renderer cannot write safely in its format (a newline in a unit file, a space in
    an exports(5) path, a template delimiter in an inventory key): refused, never mangled."""

    code = "unsafe-value"
    exit_code = ExitCode.INVALID


class ProvisionError(AifactoryError):
    code = "provision"
    exit_code = ExitCode.CANNOT_EVALUATE


class RuntimeDenied(AifactoryError):
    code = "runtime-denied"
    exit_code = ExitCode.INVALID


class TokenRejected(RuntimeDenied):
    """A token did not verify; `reason` is the code a client sees (never more than that)."""

    code = "token-rejected"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, hint=f"reason code: {reason}")
        self.reason = reason


class ModelRegistryError(AifactoryError):
    """The model registry cannot be read or written as asked (a version or alias that is not there)."""

    code = "model-registry"


class ModelRefused(ModelRegistryError):
    """A model version a server must not load; `reason` is the short code reported and counted:
    `unsigned`, `bad-signature`, `not-promoted`, `bad-promotion`, `no-model-trust`."""

    code = "model-refused"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, hint=f"reason code: {reason}")
        self.reason = reason


class DatasetError(AifactoryError):
    """A training dataset is missing, damaged or not what its manifest says."""

    code = "dataset-invalid"


class SchedulerError(AifactoryError):
    """The cluster's scheduler is not ready to take the pipeline's job."""

    code = "scheduler-not-ready"
    exit_code = ExitCode.HOSTS_FAILED


class HealthError(AifactoryError):
    """A health run cannot be made or read (the threshold table, a host's report, the evidence)."""

    code = "health-error"
    exit_code = ExitCode.CANNOT_EVALUATE


class HealthGateFailed(HealthError):
    """Some hosts failed their health run (or could not be checked): they take no work."""

    code = "health-gate-failed"
    exit_code = ExitCode.HOSTS_FAILED


class ToolOutputError(HealthError):
    """A tool's output a health parser does not know (nvidia-smi, dcgmi): the check has no value."""

    code = "tool-output-unreadable"


class TelemetryError(AifactoryError):
    """Prometheus cannot be reached or answered what the status view cannot read."""

    code = "telemetry-unavailable"
    exit_code = ExitCode.CANNOT_EVALUATE


class PipelineFailed(AifactoryError):
    """`aifactory up` stopped at a stage: that stage's error, with every stage's outcome so far."""

    def __init__(self, outcomes: Sequence[StageOutcome], error: AifactoryError) -> None:
        super().__init__(
            error.message,
            code=error.code,
            location=error.location,
            hint=error.hint,
            problems=error.problems,
            exit_code=error.exit_code,
        )
        self.outcomes = list(outcomes)
        self.error = error

    @property
    def stage(self) -> str:
        return next((o.name for o in self.outcomes if o.status == "failed"), "?")


class BackupError(AifactoryError):
    """A backup file that cannot be made or restored as asked: not a backup, damaged, not signed by a
    trusted key, or holding something a state folder never holds (a link, a device, a path out of it)."""

    code = "backup-invalid"
    exit_code = ExitCode.INVALID


class ActivationError(AifactoryError):
    """A signed activation record (the admin's authorization to go back to an older bundle version)
    that cannot be made, or does not authorize what was asked: another site or version, altered bytes,
    too old, or not signed by a key the site trusts for activations."""

    code = "activation-invalid"
    exit_code = ExitCode.INVALID


class RotationError(AifactoryError):
    """A key or certificate rotation that cannot go on: its record in the state folder is damaged or
    hostile, it contradicts the files it describes, or a host of its rollout failed (re-run the same
    command to resume)."""

    code = "rotation"
    exit_code = ExitCode.INVALID


class AuditError(AifactoryError):
    code = "audit"
    exit_code = ExitCode.INVALID


class DatasetVersionError(AifactoryError):
    """A dataset version cannot be made, read or erased as asked (a history that does not verify, a
    version that is not there, a subject id that is not one)."""

    code = "dataset-version"


class FeedbackError(RuntimeDenied):
    """Feedback on a past decision cannot be taken as given; `reason` is the code a client sees
    (`bad-input`, `bad-decision-id`, `feedback-exists`)."""

    code = "feedback-refused"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, hint=f"reason code: {reason}")
        self.reason = reason


class ProxyHeaderRefused(RuntimeDenied):
    """A PROXY protocol v2 header that is not one the server takes (docs/runtime.md, "Front door");
    `reason` is the short code logged and counted: `bad-signature`, `bad-version`, `bad-command`,
    `bad-family`, `too-long`, `too-short`, `bad-tlv`, `truncated`, `timeout`."""

    code = "proxy-header-refused"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, hint=f"reason code: {reason}")
        self.reason = reason


class FrontDoorError(AifactoryError):
    """HAProxy's runtime API (the front door's admin socket) cannot be reached or refused a command."""

    code = "front-door"
    exit_code = ExitCode.CANNOT_EVALUATE


class EvaluationReportError(AifactoryError):
    """An evaluation report (docs/loop.md) cannot be read or is not one: the file and the field say why."""

    code = "evaluation-report-invalid"


class UpgradeError(AifactoryError):
    """An upgrade that cannot start or go on as asked: batches the site cannot have, a journal of
    another upgrade in the way, an abort with nothing to abort."""

    code = "upgrade"
    exit_code = ExitCode.USAGE


class UpgradeFailed(UpgradeError):
    """A batch failed its deploy or health gate: it went back to the previous version and the upgrade
    stopped. The message says which host runs which version and which check failed."""

    code = "upgrade-failed"
    exit_code = ExitCode.HOSTS_FAILED


class ResizeError(AifactoryError):
    """A resize that cannot start or go on as asked: no record of the deployed plan to compare with,
    hosts whose addresses changed (not a resize), another resize of a different plan in progress."""

    code = "resize"
    exit_code = ExitCode.USAGE


class ResizeFailed(ResizeError):
    """A step of a resize failed (the deploy, or the health gate of the added hosts): the resize stops
    where it is, on record as open; the same command goes on from there."""

    code = "resize-failed"
    exit_code = ExitCode.HOSTS_FAILED


class ReplaceError(AifactoryError):
    """A replacement that cannot start or go on as asked: another host's replacement in progress, no
    channel to prove the new machine's host key, a key that does not match the proven fingerprint
    (refused: the machine answering is not the one provisioned)."""

    code = "replace"
    exit_code = ExitCode.INVALID


class ReplaceFailed(ReplaceError):
    """The deploy or the health gate of the new machine failed: the replacement stops where it is, on
    record as open; the same command goes on from there."""

    code = "replace-failed"
    exit_code = ExitCode.HOSTS_FAILED


class LoopError(AifactoryError):
    """A turn of the closed loop (docs/loop.md) cannot go on: a training manifest that does not verify,
    an evaluation set in the training data, a job that failed, a sign-off that is not one."""

    code = "loop"


class TurnRunning(LoopError):
    """Another `aifactory loop run` of the same model holds its turn lock (docs/loop.md, "The timer")."""

    code = "turn-running"
    exit_code = ExitCode.CANNOT_EVALUATE


class LineageBroken(LoopError):
    """A link of a decision's lineage (docs/loop.md) does not verify; the message names the link."""

    code = "lineage-broken"
