"""`aifactory upgrade SITE --bundle FILE --trust ALLOWED_SIGNERS [--batch N|P%] [--dry-run]`,
`aifactory rollback SITE --to VERSION --trust ALLOWED_SIGNERS [--batch N|P%] [--dry-run]` and either
with `--abort`: a rolling change of version gated by health (docs/operations.md). A rollback is the
upgrade's engine run to an older version imported before, authorized by a signed activation record."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifactory.cli import progress
from aifactory.cli.bmc import add_bmc_options, bmc_access, site_secrets
from aifactory.cli.output import emit_json, table
from aifactory.errors import UsageError

if TYPE_CHECKING:
    from aifactory.connection import Connection
    from aifactory.lifecycle.batches import UpgradeHost
    from aifactory.lifecycle.change import Change
    from aifactory.lifecycle.journal import Journal, JournalStore, VersionRef
    from aifactory.lifecycle.reboot import RebootDecision
    from aifactory.lifecycle.records import Kind
    from aifactory.lifecycle.seams import Rebooter
    from aifactory.lifecycle.upgrade import UpgradeParts, UpgradeResult
    from aifactory.plan import PlannedSite
    from aifactory.state import SiteState

Go = Callable[["UpgradeParts"], "UpgradeResult"]
Begin = Callable[[], tuple["Journal", bool]]

EXAMPLES = {
    "upgrade": "aifactory upgrade lab/site.yaml --bundle lab-B.tar --trust allowed_signers --batch 25%\n"
    "  aifactory upgrade lab/site.yaml --abort   # take the upgraded batches back",
    "rollback": "aifactory rollback lab/site.yaml --to 20261201.1 --trust allowed_signers\n"
    "  aifactory rollback lab/site.yaml --abort   # back to the version it left",
}
# 1: the bundle does not verify, or (rollback) no valid activation record authorizes the version.
# 4: a batch failed its deploy or health gate and went back to the previous version.
EXIT_CODES = {"upgrade": (0, 1, 2, 3, 4, 70, 130), "rollback": (0, 1, 2, 3, 4, 70, 130)}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "upgrade",
        parents=[common],
        help="upgrade the site to a new bundle in batches, gated by health, going back on failure",
        description="Verify and import the bundle, show the version and plan change, then upgrade the "
        "hosts in batches: drain in Slurm (jobs past --drain-timeout are requeued and resume from "
        "their checkpoint) and at the front door, deploy the new version beside the old, health gate, "
        "back into service. A batch that fails goes back to the previous version and the upgrade stops "
        "(exit 4). Interrupted, the same command goes on from the journal; --abort takes the upgraded "
        "batches back (docs/operations.md).",
    )
    parser.add_argument("site", help="site spec (YAML); its plan must equal the new bundle's signed plan")
    parser.add_argument("--bundle", metavar="FILE", help="the new bundle (its first part)")
    parser.add_argument("--trust", metavar="ALLOWED_SIGNERS", help="the site's allowed_signers for bundles")
    _rolling_options(parser, "upgraded")
    parser.set_defaults(handler=cmd_upgrade)

    back = subparsers.add_parser(
        "rollback",
        parents=[common],
        help="go back to a version imported before, in batches, gated by health (needs a signed activation)",
        description="Go back to VERSION, imported on this control host before, as an upgrade does: in "
        "batches, drained in Slurm and at the front door, deployed (the older import becomes the bundle "
        "in use; no bundle is imported), health gated, back into service. Only with a valid activation "
        "record for exactly this site and version (aifactory activation authorize); the operator log "
        "records the rollback citing it. --abort takes the batches back to the version it left "
        "(docs/operations.md).",
    )
    back.add_argument("site", help="site spec (YAML)")
    back.add_argument("--to", metavar="VERSION", help="the earlier bundle version (see `aifactory versions`)")
    back.add_argument(
        "--trust", metavar="ALLOWED_SIGNERS", help="the site's allowed_signers, listing the admin's key"
    )
    _rolling_options(back, "rolled back")
    back.set_defaults(handler=cmd_rollback)


def _rolling_options(parser: argparse.ArgumentParser, done: str) -> None:
    parser.add_argument(
        "--batch",
        default="1",
        metavar="N|P%",
        help="hosts per batch: a number or a percentage of the site's hosts (default 1)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long running Slurm jobs may take to finish before they are requeued (default 3600)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="verify, show the change and the batches, stop"
    )
    parser.add_argument(
        "--abort", action="store_true", help=f"take the batches {done} so far back to the previous version"
    )
    parser.add_argument(
        "--no-reboot",
        action="store_true",
        help="a change that needs a reboot (kernel, GPU driver, firmware) does not restart the hosts: "
        "the new kernel or driver runs only after you restart them (the record says so)",
    )
    add_bmc_options(parser, why="to restart hosts")


def cmd_upgrade(args: argparse.Namespace) -> int:
    planned, state = _site(args)  # the spec first: its errors say the most
    if args.drain_timeout < 0:
        raise UsageError(f"--drain-timeout {args.drain_timeout}: seconds cannot be negative")
    if args.abort:
        if args.bundle or args.dry_run:
            raise UsageError("--abort takes no --bundle and no --dry-run")
        return _abort(args, planned, state, "upgrade")
    if not args.bundle or not args.trust:
        raise UsageError("upgrade needs --bundle FILE and --trust ALLOWED_SIGNERS (or --abort)")
    return _upgrade(args, planned, state)


def cmd_rollback(args: argparse.Namespace) -> int:
    planned, state = _site(args)
    if args.drain_timeout < 0:
        raise UsageError(f"--drain-timeout {args.drain_timeout}: seconds cannot be negative")
    if args.abort:
        if args.to or args.dry_run:
            raise UsageError("--abort takes no --to and no --dry-run")
        return _abort(args, planned, state, "rollback")
    if not args.to or not args.trust:
        raise UsageError("rollback needs --to VERSION and --trust ALLOWED_SIGNERS (or --abort)")
    return _rollback(args, planned, state)


@dataclass(frozen=True)
class _Prepared:
    """What an upgrade is about to do, worked out before it takes the site lock."""

    store: JournalStore
    resuming: bool  # a journal of an upgrade is there
    old: VersionRef
    new: VersionRef
    hosts: list[UpgradeHost]
    batches: list[tuple[str, ...]]
    change: Change
    kind: Kind = "upgrade"
    authorized: str = ""  # a rollback: the activation record's verdict, as the admin reads it
    reboot: RebootDecision | None = None
    restart: bool = True  # False under --no-reboot: the admin restarts the hosts

    def reboot_record(self) -> dict[str, Any] | None:
        """What the journal (and the `started` record) keep of a change that needs a reboot."""
        if self.reboot is None or not self.reboot.needed:
            return None
        return {**self.reboot.as_dict(), "restart": self.restart}

    def reboot_line(self) -> str | None:
        if self.reboot is None:
            return None
        if self.reboot.needed and not self.restart:
            return f"{self.reboot.render()}; --no-reboot: it takes effect when you restart the hosts"
        return self.reboot.render()


def _prepare(args: argparse.Namespace, planned: PlannedSite, state: SiteState) -> _Prepared:
    from aifactory.bundle.verify import verify_bundle
    from aifactory.lifecycle.batches import BatchSize, plan_batches, upgrade_hosts
    from aifactory.lifecycle.change import describe_change
    from aifactory.lifecycle.journal import VersionRef

    size = BatchSize.parse(args.batch)
    store, journal, old, old_root = _starting_point(state)
    report = verify_bundle(args.bundle, trust=Path(args.trust), site_state=state)  # a tampered one stops here
    new = VersionRef(str(report.version), str(report.digest))
    hosts = upgrade_hosts(planned.plan)
    batches = [tuple(b) for b in journal.batches] if journal else plan_batches(hosts, size)
    change = describe_change(old, old_root, new, planned.plan)
    assert report.manifest is not None  # a bundle that verifies has one
    reboot = _reboot(args, planned, old_root, report.manifest, batches)
    return _Prepared(
        store,
        journal is not None,
        old,
        new,
        hosts,
        batches,
        change,
        reboot=reboot,
        restart=not args.no_reboot,
    )


def _reboot(
    args: argparse.Namespace,
    planned: PlannedSite,
    old_root: Path,
    target: Any,
    batches: Sequence[Sequence[str]],
) -> RebootDecision:
    """Whether the change needs the hosts restarted; refused up front when it does and a host has no
    BMC to restart it through, unless --no-reboot."""
    from aifactory.lifecycle.reboot import imported_manifest, reboot_decision, require_bmcs

    decision = reboot_decision(imported_manifest(old_root), target)
    if not args.no_reboot:
        require_bmcs(planned.plan, [h for batch in batches for h in batch], decision)
    return decision


def _starting_point(state: SiteState) -> tuple[JournalStore, Journal | None, VersionRef, Path]:
    """The journal store, the change in progress (if any), and the version the hosts run with its
    imported folder: a change in progress started from its journal's `old` (the bundle in use has
    already moved on to its target)."""
    from aifactory.lifecycle.change import installed_version
    from aifactory.lifecycle.journal import JournalStore

    store = JournalStore.for_state(state)
    journal = store.load()
    old, old_root = installed_version(state)
    return store, journal, (journal.old if journal is not None else old), old_root


def _prepare_rollback(args: argparse.Namespace, planned: PlannedSite, state: SiteState) -> _Prepared:
    from aifactory.lifecycle.batches import BatchSize, plan_batches, upgrade_hosts
    from aifactory.lifecycle.change import describe_change
    from aifactory.lifecycle.reboot import imported_manifest
    from aifactory.lifecycle.rollback import rollback_target
    from aifactory.lifecycle.versions import version_history

    size = BatchSize.parse(args.batch)
    store, journal, old, old_root = _starting_point(state)
    target = rollback_target(state, version=args.to, running=old, trust=Path(args.trust))  # refused here
    hosts = upgrade_hosts(planned.plan)
    batches = (
        [tuple(b) for b in journal.batches] if journal else plan_batches(hosts, size, controller_last=True)
    )
    change = describe_change(old, old_root, target.version, planned.plan)
    imported = version_history(state).find(target.version.version)
    manifest = imported_manifest(Path(imported.root)) if imported is not None else None
    if manifest is None:  # checked by rollback_target: the older import is intact
        raise AssertionError(f"no manifest for {target.version.version}")
    reboot = _reboot(args, planned, old_root, manifest, batches)
    return _Prepared(
        store,
        journal is not None,
        old,
        target.version,
        hosts,
        batches,
        change,
        "rollback",
        target.activation.message,
        reboot,
        not args.no_reboot,
    )


def _upgrade(args: argparse.Namespace, planned: PlannedSite, state: SiteState) -> int:
    from aifactory.bundle import import_bundle
    from aifactory.lifecycle.upgrade import begin_upgrade

    ready = _prepare(args, planned, state)

    def begin() -> tuple[Journal, bool]:
        begun = begin_upgrade(
            ready.store,
            site=state.site,
            old=ready.old,
            new=ready.new,
            batches=ready.batches,
            reboot=ready.reboot_record(),
        )
        import_bundle(args.bundle, trust=Path(args.trust), site_state=state)
        return begun

    return _change(args, planned, state, ready, begin)


def _rollback(args: argparse.Namespace, planned: PlannedSite, state: SiteState) -> int:
    from aifactory.lifecycle.rollback import begin_rollback, rollback_target

    ready = _prepare_rollback(args, planned, state)

    def begin() -> tuple[Journal, bool]:
        # checked again under the lock: the record may have been replaced since
        target = rollback_target(state, version=ready.new.version, running=ready.old, trust=Path(args.trust))
        return begin_rollback(
            state,
            ready.store,
            target=target,
            old=ready.old,
            batches=ready.batches,
            reboot=ready.reboot_record(),
        )

    return _change(args, planned, state, ready, begin)


def _change(
    args: argparse.Namespace, planned: PlannedSite, state: SiteState, ready: _Prepared, begin: Begin
) -> int:
    """Show the change; unless it is a dry run (or nothing to do), begin it under the site lock (the
    journal, the bundle in use) and run it batch by batch."""
    from aifactory.lifecycle.upgrade import run_upgrade

    shown: dict[str, Any] = {"change": ready.change.as_dict(), "batches": ready.batches}
    if ready.reboot is not None:
        shown["reboot"] = {**ready.reboot.as_dict(), "restart": ready.reboot.needed and ready.restart}
    if ready.authorized:
        shown["authorized"] = ready.authorized
    if ready.new == ready.old and not ready.resuming:
        _say(args, {**shown, "status": "current"}, f"site already runs {ready.new.version}")
        return 0
    if args.dry_run:
        _say(args, {**shown, "status": "dry-run"}, _plan_text(ready, ready.batches))
        return 0
    with state.lock(ready.kind):
        journal, resumed = begin()
        if args.format != "json":
            print(_plan_text(ready, journal.batches))
            print("resuming from the journal" if resumed else "starting", flush=True)

        def go(parts: UpgradeParts) -> UpgradeResult:
            return run_upgrade(journal, ready.store, parts, drain_timeout_s=args.drain_timeout)

        return _run(args, planned, state, go, ready.kind, restarts=journal.restarts)


def _abort(args: argparse.Namespace, planned: PlannedSite, state: SiteState, kind: Kind) -> int:
    from aifactory.lifecycle.journal import JournalStore
    from aifactory.lifecycle.upgrade import abort_upgrade

    store = JournalStore.for_state(state)

    def go(parts: UpgradeParts) -> UpgradeResult:
        return abort_upgrade(store, parts, drain_timeout_s=args.drain_timeout, kind=kind)

    with state.lock(kind):
        journal = store.load()
        return _run(args, planned, state, go, kind, restarts=journal is not None and journal.restarts)


def _run(
    args: argparse.Namespace,
    planned: PlannedSite,
    state: SiteState,
    go: Go,
    kind: Kind,
    *,
    restarts: bool = False,
) -> int:
    """Build the site's parts (the edge chooses how hosts are reached), run, render the result.
    `restarts`: the change restarts each batch through its BMCs."""
    from aifactory.bundle.import_record import last_import
    from aifactory.lifecycle.journal import VersionRef
    from aifactory.lifecycle.site_parts import parts_for_site
    from aifactory.pipeline.connection import site_connection

    record = last_import(state)
    imported = VersionRef(record.version, record.digest) if record else VersionRef("", "")
    connection = site_connection(planned.plan.name)
    rebooter = _rebooter(args, planned, state, connection) if restarts else None
    with progress.shown(args, kind) as shown:
        parts = parts_for_site(
            planned, connection=connection, state=state, imported=imported, progress=shown, rebooter=rebooter
        )
        result = go(parts)
    data = result.as_dict()
    _say(args, data, _result_text(data))
    return 0


def _rebooter(
    args: argparse.Namespace, planned: PlannedSite, state: SiteState, connection: Connection
) -> Rebooter:
    """The BMCs of the site, reached with --bmc-scheme, --bmc-port and --bmc-ca, their credentials
    from the site's secret store (AIFACTORY_PASSPHRASE_FILE opens it), SSH as Ansible reaches the hosts."""
    from aifactory.lifecycle.bmc_reboot import RedfishRebooter, SshBootIds, bmc_credentials

    credentials = bmc_credentials(planned.plan, site_secrets(state, connection))
    access = bmc_access(args, connection)
    return RedfishRebooter(planned.plan, access, credentials, SshBootIds(planned.plan, connection))


def _site(args: argparse.Namespace) -> tuple[PlannedSite, SiteState]:
    from aifactory.plan import plan_site
    from aifactory.state import SiteState

    planned = plan_site(args.site, write_lock=False)
    return planned, SiteState.for_site(planned.plan.name)


def _say(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.format == "json":
        emit_json(data)
    else:
        print(text)


def _plan_text(ready: _Prepared, batches: Sequence[Sequence[str]]) -> str:
    change = ready.change
    roles = {h.name: _roles(h) for h in ready.hosts}
    lines = [f"{ready.kind}: {change.old.version} -> {change.new.version} (bundle {change.new.digest})"]
    if ready.authorized:
        lines.append(f"authorized: {ready.authorized}")
    lines.append(
        "plan: " + (change.plan.render() if change.plan is not None else "previous plan not available")
    )
    if (reboot := ready.reboot_line()) is not None:
        lines.append(reboot)
    rows = [(index + 1, name, roles.get(name, "")) for index, batch in enumerate(batches) for name in batch]
    lines += [f"{len(batches)} batches:", table(("BATCH", "HOST", "ROLE"), rows)]
    return "\n".join(lines)


def _roles(host: UpgradeHost) -> str:
    found = (["slurmctld"] if host.slurm_controller else []) + (["serving"] if host.serving else [])
    return ", ".join(found) or "-"


def _result_text(data: dict[str, Any]) -> str:
    versions = data["versions"]
    rows = [(host, versions[host], entry["phase"]) for host, entry in sorted(data["hosts"].items())]
    done = "rolled back" if data["kind"] == "rollback" else "upgraded"
    word = done if data["status"] == "done" else "aborted"
    target = data["new"]["version"] if data["status"] == "done" else data["old"]["version"]
    lines = [table(("HOST", "VERSION", "PHASE"), rows), ""]
    lines.append(f"{word}: every host runs {target} ({len(data['batches'])} batches)")
    if data["requeued"]:
        lines.append(
            f"requeued past the drain timeout: {', '.join(data['requeued'])} (they resume from checkpoints)"
        )
    lines.append(f"journal: {data['journal']}")
    return "\n".join(lines)
