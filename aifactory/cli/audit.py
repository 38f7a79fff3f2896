"""`aifactory audit report|verify|diff|scan|verify-log`: signed reports for auditors, and their checks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aifactory.audit.diff import diff_reports
from aifactory.audit.evidence.logs import verify_any_log
from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, WAIVED
from aifactory.audit.report import ReportOptions, produce_report
from aifactory.audit.verify import verify_report
from aifactory.cli.output import emit_json, table
from aifactory.errors import ExitCode
from aifactory.plan import PlannedSite, plan_site

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "audit report": "aifactory audit report lab/site.yaml -o reports/2026-12",
    "audit verify": "aifactory audit verify reports/2026-12",
    "audit diff": "aifactory audit diff reports/2026-11 reports/2026-12",
    "audit verify-log": "aifactory audit verify-log ~/.local/state/aifactory/lab/operator.log.jsonl",
    "audit scan": "aifactory audit scan lab --waivers lab/scap-waivers.yaml --format json",
}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    audit = subparsers.add_parser(
        "audit", parents=[common], help="signed audit reports (HTML, JSON, OSCAL) and their checks"
    )
    commands = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    commands.required = True

    report = commands.add_parser("report", parents=[common], help="gather evidence and write a signed report")
    report.add_argument("site", help="site spec (YAML)")
    report.add_argument("-o", "--output", required=True, help="report folder to write")
    report.add_argument(
        "--timestamp",
        help="the report's time, ISO 8601 with zone (default: now); the same "
        "inputs and timestamp give the same bytes",
    )
    report.add_argument(
        "--key",
        help="Ed25519 OpenSSH private key to sign with (default: the site's audit "
        "key; passphrase from AIFACTORY_AUDIT_KEY_PASSPHRASE)",
    )
    report.add_argument("--identity", help="signer identity for allowed_signers (default: the key's comment)")
    report.add_argument(
        "--decision-log",
        action="append",
        default=[],
        metavar="LOG",
        help="a runtime decision log to include (repeatable; those under the site's state "
        "folder are always included)",
    )
    report.add_argument("--waivers", help="waivers file (default: <spec stem>.waivers.yaml beside the spec)")
    report.add_argument(
        "--scap-waivers", help="SCAP waivers file (default: <spec stem>.scap-waivers.yaml beside the spec)"
    )
    report.add_argument("--engine", choices=("embedded", "opa"), default="embedded", help="policy engine")
    report.add_argument("--opa-url", help="OPA server URL for --engine opa (loopback or the lab only)")
    report.add_argument("--bundle-trust", help="allowed_signers to verify the imported bundle against")
    report.add_argument("--strict", action="store_true", help="exit 1 when any control fails")
    report.add_argument(
        "--collect-heads",
        action="store_true",
        help="first pull every node's signed decision-log heads into the state folder (runs "
        "`aifactory deploy SITE --tags runtime_heads`; needs the control host's Ansible)",
    )
    report.set_defaults(handler=cmd_report)

    verify = commands.add_parser(
        "verify", parents=[common], help="check a report's signature, files and logs"
    )
    verify.add_argument("folder", help="report folder")
    verify.add_argument(
        "--trust",
        help="allowed_signers you trust, got separately from the report (without it the signer is "
        "not checked and verify exits 1, unless --no-trust-check)",
    )
    verify.add_argument(
        "--no-trust-check",
        action="store_true",
        help="without --trust: check only that the folder is self-consistent (anyone can re-sign a report)",
    )
    verify.add_argument(
        "--require-logs", action="store_true", help="fail when a log the report cites is not on this machine"
    )
    verify.set_defaults(handler=cmd_verify)

    diff = commands.add_parser(
        "diff", parents=[common], help="controls and findings that changed between audits"
    )
    diff.add_argument("old", help="older report folder (or its report.json)")
    diff.add_argument("new", help="newer report folder (or its report.json)")
    diff.set_defaults(handler=cmd_diff)

    scan = commands.add_parser(
        "scan",
        parents=[common],
        help="scan every host with OpenSCAP (the bundle's content, the pools' profiles), offline",
    )
    scan.add_argument("site", help="site name (its imported bundle's plan names the hosts)")
    scan.add_argument("--waivers", help="reviewed SCAP waivers to weigh the results against")
    scan.add_argument("--bundle-trust", help="allowed_signers to verify the imported bundle against")
    scan.set_defaults(handler=cmd_scan)

    verify_log = commands.add_parser("verify-log", parents=[common], help="check a hash-chained log")
    verify_log.add_argument("log", help="a decision log or the operator log (JSON lines)")
    verify_log.add_argument("--heads", help="signed heads file (default: the one beside the log)")
    verify_log.add_argument(
        "--trust",
        help="allowed_signers for the signed heads (use the copy the control host collected: "
        "<state>/heads/<host>/allowed_signers; default: the one beside the log, which its host can change)",
    )
    verify_log.add_argument(
        "--collected",
        action="append",
        default=[],
        metavar="HEADS",
        help="signed heads collected off the node (<state>/heads/<host>/<log>.heads.jsonl; repeatable): "
        "a log shorter than them was truncated",
    )
    verify_log.add_argument(
        "--retention-days",
        type=int,
        help="how long segments must be kept (default: the signed heads' value, else 183)",
    )
    verify_log.set_defaults(handler=cmd_verify_log)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _collect_heads(planned: PlannedSite) -> None:
    """Pull the nodes' signed heads before gathering evidence (docs/audit.md, "Logs that cannot be
    rewritten"); hosts it cannot reach keep what was collected before, and the report says so."""
    from aifactory.deploy import DeployOptions, deploy_site  # the control host's extra: only when asked
    from aifactory.pipeline.connection import site_connection

    connection = site_connection(planned.plan.name)
    result = deploy_site(planned, connection=connection, options=DeployOptions(tags=("runtime_heads",)))
    missed = [h["host"] for h in result.hosts if h.get("status") not in ("ok", "changed")]
    if missed:
        print(f"warning: signed heads not collected from {', '.join(missed)}", file=sys.stderr)


def _model_registry(planned: PlannedSite) -> dict[str, Any]:
    """The models on mounted storage (the lab's storage folders when a lab of the site is up here) and
    the site's model-signing public key: the report's signed-models evidence; the datasets' folders: the
    dataset versions and erasures it lists."""
    from aifactory.pipeline.models import model_dir, on_storage
    from aifactory.state import SiteState
    from aifactory.trust.issuing.models import ModelKey

    plan = planned.plan
    return {
        "models": tuple((m.name, model_dir(plan, m)) for m in plan.models if m.host_path),
        "datasets": tuple(
            (d.name, on_storage(plan, d.storage, d.path)) for d in plan.datasets if d.host_path
        ),
        "model_trust": ModelKey(SiteState.for_site(plan.name).path("runtime")).trust.public_key,
    }


def cmd_report(args: argparse.Namespace) -> int:
    planned = plan_site(args.site, write_lock=False)
    if args.collect_heads:
        _collect_heads(planned)
    options = ReportOptions(
        timestamp=args.timestamp,
        key=_path(args.key),
        identity=args.identity,
        decision_logs=tuple(Path(p) for p in args.decision_log),
        waivers=_path(args.waivers),
        scap_waivers=_path(args.scap_waivers),
        engine=args.engine,
        opa_url=args.opa_url,
        bundle_trust=_path(args.bundle_trust),
        **_model_registry(planned),
    )
    written = produce_report(planned, Path(args.output), options)
    report = written.report
    totals = report.totals()
    if args.format == "json":
        emit_json(
            {
                "folder": str(written.folder),
                "id": report.report_id,
                "files": list(written.files),
                "signer": report.signer,
                "classification": report.classification,
                "totals": totals,
                "findings": len(report.findings),
            }
        )
    else:
        print(
            table(
                ["family", "controls", PASS, FAIL, WAIVED, "not assessed"],
                [
                    [
                        f"{r['family']} {r['title']}",
                        r["controls"],
                        r[PASS],
                        r[FAIL],
                        r[WAIVED],
                        r[NOT_ASSESSED],
                    ]
                    for r in report.summary()
                ],
            )
        )
        print(
            f"\n{len(report.controls)} controls: {totals[PASS]} pass, {totals[FAIL]} fail, "
            f"{totals[WAIVED]} waived, {totals[NOT_ASSESSED]} not assessed; "
            f"{len(report.findings)} findings"
        )
        print(
            f"wrote {', '.join(written.files)} in {written.folder}, signed by "
            f"{written.identity}; check with: aifactory audit verify {written.folder} --trust "
            "ALLOWED_SIGNERS (the signer's, got separately)"
        )
    return int(ExitCode.INVALID) if args.strict and totals[FAIL] else int(ExitCode.OK)


def cmd_verify(args: argparse.Namespace) -> int:
    result = verify_report(
        Path(args.folder),
        trust=_path(args.trust),
        require_logs=args.require_logs,
        trust_check=not args.no_trust_check,
    )
    if args.format == "json":
        emit_json(result.as_dict())
    else:
        verdict = f"verifies (signed by {result.signer})" if result.ok else "DOES NOT VERIFY"
        print(
            f"{result.folder}: {verdict}; {len(result.files)} files, {len(result.logs)} logs; "
            f"trust {result.trust}"
        )
        for problem in result.problems:
            print(f"  problem: {problem}")
        for warning in result.warnings:
            print(f"  warning: {warning}")
    return int(ExitCode.OK if result.ok else ExitCode.INVALID)


def cmd_diff(args: argparse.Namespace) -> int:
    drift = diff_reports(Path(args.old), Path(args.new))
    if args.format == "json":
        emit_json(drift.as_dict())
        return int(ExitCode.OK)
    print(f"{drift.old['generated']} -> {drift.new['generated']} (site {drift.new['site']})")
    if not drift.drifted:
        print("no drift: every control and finding is as before")
    if drift.controls:
        print(
            table(
                ["control", "title", "was", "now"],
                [[c["id"], c["title"], c["old"], c["new"]] for c in drift.controls],
            )
        )
    for label, items in (("added", drift.added), ("resolved", drift.resolved), ("changed", drift.changed)):
        for finding in items:
            print(f"finding {label}: {finding['rule']} on {finding['resource']} ({finding['status']})")
    return int(ExitCode.OK)


def cmd_scan(args: argparse.Namespace) -> int:
    import datetime as dt

    from aifactory.audit import scap
    from aifactory.deploy.scan import scan_site
    from aifactory.pipeline.connection import site_connection

    run = scan_site(args.site, connection=site_connection(args.site), trust=_path(args.bundle_trust))
    waivers = scap.load_waivers(Path(args.waivers)) if args.waivers else []
    assessed = scap.assess(run.scans, waivers, today=dt.datetime.now(dt.UTC).date())
    if args.format == "json":
        emit_json({**run.as_json(), "folder": str(run.folder), "assessment": assessed.as_json()})
        return int(ExitCode.OK if assessed.ok else ExitCode.INVALID)
    print(f"scan {run.run_id}: {len(run.scans)} hosts, results in {run.folder}")
    if run.skipped_rules:
        print(f"left out by the site's connection: {', '.join(run.skipped_rules)}")
    rows = [
        [
            h.host,
            h.profile,
            str(h.applicable),
            str(h.passed),
            f"{100 * h.pass_ratio:.1f}%",
            str(len(h.waived)),
            str(len(h.unwaived)),
        ]
        for h in assessed.hosts
    ]
    print(table(["host", "profile", "applicable", "passed", "pass rate", "waived", "unwaived"], rows))
    for host in assessed.hosts:
        for rule in host.unwaived:
            print(f"  failing, not waived: {host.host}: {rule}")
    for waiver in assessed.stale:
        print(f"  stale waiver (the rule passes): {waiver.rule} (line {waiver.line})")
    for waiver in assessed.expired:
        print(f"  expired waiver: {waiver.rule} expired {waiver.expires} (line {waiver.line})")
    return int(ExitCode.OK if assessed.ok else ExitCode.INVALID)


def cmd_verify_log(args: argparse.Namespace) -> int:
    check = verify_any_log(
        Path(args.log),
        heads=_path(args.heads),
        trust=_path(args.trust),
        collected=tuple(Path(p) for p in args.collected),
        retention_days=args.retention_days,
    )
    if args.format == "json":
        emit_json(check.detail)
    else:
        chain = check.chain
        verdict = "verifies" if check.ok else "DOES NOT VERIFY"
        files = f" in {len(chain.segments)} files" if len(chain.segments) > 1 else ""
        print(f"{args.log}: {verdict}: {chain.records} records{files}, head seq {chain.head.seq}")
        for problem in chain.problems:
            print(f"  problem: {problem}")
        for problem in check.retention:
            print(f"  retention: {problem}")
        for warning in check.detail.get("warnings") or []:
            print(f"  warning: {warning}")
    return int(ExitCode.OK if check.ok else ExitCode.INVALID)
