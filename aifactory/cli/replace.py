"""`aifactory replace SITE HOST [--host-key-fingerprint SHA256:...] [--dry-run]`: a new machine in a
dead host's place, its host key proven, deployed, health-gated and back at work (docs/operations.md,
"Replacing a dead host")."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifactory.cli import progress
from aifactory.cli.bmc import add_bmc_options, bmc_access, site_secrets
from aifactory.cli.output import emit_json
from aifactory.errors import ExitCode, PrerequisiteError, ReplaceError, UsageError

if TYPE_CHECKING:
    from aifactory.connection import Connection
    from aifactory.lifecycle.journal import VersionRef
    from aifactory.lifecycle.replace_parts import Reprovision
    from aifactory.plan import PlannedSite
    from aifactory.state import SiteState

EXAMPLES = {
    "replace": "aifactory replace lab/site.yaml lab-cpu-002 --dry-run\n"
    "  aifactory replace site.yaml site-h100-007 --host-key-fingerprint SHA256:Vb2Xk...",
}
# 1: no proof of the new machine's host key, or the key it shows is not the proven one (refused); the
#    hosts do not all run the imported bundle's version (an unfinished or aborted upgrade).
# 3: no bundle imported, no known_hosts file, a BMC credential that does not resolve.
# 4: the deploy or the health gate of the new machine failed (the same command goes on from there).
EXIT_CODES = {"replace": (0, 1, 2, 3, 4, 70, 130)}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "replace",
        parents=[common],
        help="a new machine in a dead host's place: same name and addresses, a proven host key, "
        "deployed, gated, back at work",
        description="Drain the host in Slurm and at the front door (a dead host counts as drained, and "
        "the log says so), boot the new machine through its BMC into the site's installer, learn its "
        "SSH host key only when its fingerprint is the one proven by the provisioning record or given "
        "with --host-key-fingerprint (never on first use), deploy the version in use to it, run the "
        "health gate, and put it back to work. Every step is journaled: interrupted or failed, the "
        "same command goes on.",
    )
    parser.add_argument("site", help="site spec (YAML)")
    parser.add_argument("host", help="the host to replace (its name in the plan)")
    parser.add_argument(
        "--host-key-fingerprint",
        metavar="SHA256:...",
        help="the new machine's ed25519 host key fingerprint, as `ssh-keygen -lf "
        "/etc/ssh/ssh_host_ed25519_key.pub` prints it on its console (read through the BMC); needed "
        "where the site's provisioning does not record the key",
    )
    parser.add_argument(
        "--known-hosts",
        type=Path,
        metavar="FILE",
        help="the known_hosts file the deploy checks hosts with (default: the site connection's)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long running Slurm jobs on a host that still answers may take before they are "
        "requeued (default 3600)",
    )
    add_bmc_options(parser, why="to reinstall the host")
    parser.add_argument(
        "--dry-run", action="store_true", help="show the steps (and where a replacement stands)"
    )
    parser.set_defaults(handler=cmd_replace)


def cmd_replace(args: argparse.Namespace) -> int:
    from aifactory.lifecycle.replace import ReplaceStore, check_fingerprint, describe
    from aifactory.plan import plan_site
    from aifactory.state import SiteState

    if args.drain_timeout < 0:
        raise UsageError(f"--drain-timeout {args.drain_timeout}: seconds cannot be negative")
    fingerprint = check_fingerprint(args.host_key_fingerprint) if args.host_key_fingerprint else None
    planned = plan_site(args.site, write_lock=False)
    _check_host(planned, args.host)
    state = SiteState.for_site(planned.plan.name)
    if args.dry_run:
        data = describe(ReplaceStore(state).load(), args.host)
        _say(args, data, "\n".join(f"{n}. {line}" for n, line in enumerate(data["steps"], 1)))
        return 0
    with state.lock("replace"):
        return _run(args, planned, state, fingerprint)


def _check_host(planned: PlannedSite, host: str) -> None:
    plan = planned.plan
    if host not in {h.name for h in plan.hosts}:
        raise ReplaceError(
            f"{host!r} is not a host of site {plan.name!r}",
            code="replace-unknown-host",
            exit_code=ExitCode.USAGE,
            hint=f"`aifactory plan {plan.name}` lists its hosts; a host the site does not have yet is "
            "added with `aifactory resize`",
        )
    if host == plan.control_host:
        raise ReplaceError(
            f"{host} is the site's control host: it holds the site's keys, state and evidence",
            code="replace-control-host",
            hint="a control host is restored onto a new machine from backup: aifactory backup, then "
            "aifactory restore on the new one (docs/operations.md)",
        )


def _run(args: argparse.Namespace, planned: PlannedSite, state: SiteState, fingerprint: str | None) -> int:
    from aifactory.bundle.import_record import last_import
    from aifactory.lifecycle.journal import VersionRef
    from aifactory.lifecycle.replace import ReplaceRequest, ReplaceStore, run_replace
    from aifactory.lifecycle.replace_parts import replace_parts
    from aifactory.pipeline.connection import lab_is_up, site_connection

    record = last_import(state)
    if record is None:
        raise PrerequisiteError(
            f"site {planned.plan.name!r} has no bundle imported: nothing to deploy to the new machine",
            code="replace-no-bundle",
            hint="import the site's bundle first: aifactory bundle import",
        )
    imported = VersionRef(record.version, record.digest)
    _check_site_runs(state, imported)
    site = planned.plan.name
    on_lab = lab_is_up(site)  # the edge's one choice: on the lab, the lab brings the blank host up
    connection = site_connection(site, lab=on_lab)
    known = args.known_hosts or connection.known_hosts
    if known is None:
        raise PrerequisiteError(
            "no known_hosts file to learn the new host key into",
            code="replace-known-hosts",
            hint="give the known_hosts file the deploy checks hosts with: --known-hosts FILE",
        )
    request = ReplaceRequest(site, args.host, imported, fingerprint, args.drain_timeout)
    with progress.shown(args, "replace") as shown:
        parts = replace_parts(
            planned,
            connection=connection,
            state=state,
            imported=imported,
            provisioner=_provisioner(args, planned, state, connection, on_lab=on_lab),
            known=Path(known),
            progress=shown,
        )
        result = run_replace(request, ReplaceStore(state), parts)
    data = result.as_dict()
    _say(args, data, _result_text(data))
    return 0


def _check_site_runs(state: SiteState, imported: VersionRef) -> None:
    """The new machine gets the imported bundle in full (deploy installs only its payload): that must
    be the version the other hosts run. An unfinished upgrade, or an abort that left the hosts on the
    version before the imported one, would leave the site on two versions: refused, saying how on."""
    from aifactory.lifecycle.journal import JournalStore

    journals = JournalStore.for_state(state)
    if journals.load() is not None:
        raise ReplaceError(
            f"an upgrade of site {state.site!r} is unfinished: its hosts do not all run one version",
            code="replace-upgrade-unfinished",
            hint="resume the upgrade (run it again) or take it back (aifactory upgrade --abort), then "
            "replace the host",
        )
    running = journals.running()
    if running is not None and running != imported:
        raise ReplaceError(
            f"the hosts run version {running.version}, not the imported bundle's {imported.version}: "
            "the new machine would get another version than the site",
            code="replace-version-mismatch",
            hint=f"import the bundle of version {running.version} again (aifactory bundle import), or "
            f"upgrade the site to {imported.version} first",
        )


def _provisioner(
    args: argparse.Namespace, planned: PlannedSite, state: SiteState, connection: Connection, *, on_lab: bool
) -> Reprovision:
    """The host's BMC (its credential from the site's secret store), then the blank machine's
    bring-up: the lab's (it makes the host and records its key) or a real site's installer."""
    from aifactory.lifecycle.replace_parts import InstallerBoot, RedfishReinstall, Reprovision
    from aifactory.provision.redfish import BmcCredentials

    planned_host = planned.plan.host(args.host)
    bmc = None
    if planned_host.bmc is not None:
        reference = planned_host.bmc.credentials
        value = site_secrets(state, connection).resolve(reference, host=args.host).value
        bmc = RedfishReinstall(
            planned.plan,
            bmc_access(args, connection),
            {args.host: BmcCredentials.parse(value, reference=reference)},
        )
    if on_lab:
        from aifactory.lab.machines import LabBlankHost

        return Reprovision(bmc, LabBlankHost(planned.plan.name), "the lab's provisioning record")
    return Reprovision(bmc, InstallerBoot())


def _say(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.format == "json":
        emit_json(data)
    else:
        print(text)


def _result_text(data: dict[str, Any]) -> str:
    lines = [
        f"replaced {data['host']} ({'resumed ' if data['resumed'] else ''}run {data['run']}):",
        "  drained: "
        + ("yes" if data["reachable"] else "it did not answer (a dead host counts as drained; recorded)"),
    ]
    if data["system"]:
        system = data["system"]
        lines.append(f"  new machine: UUID {system.get('uuid')}, serial {system.get('serial') or '-'}")
    lines.append(f"  host key: {data['host_key']} (proven by {data['host_key_proven_by']})")
    if data["old_host_keys"]:
        lines.append(f"  dropped from known_hosts: {', '.join(data['old_host_keys'])}")
    if data["requeued"]:
        lines.append(f"  requeued: {', '.join(data['requeued'])}")
    lines.append(f"  deployed {data['version']}, health gate passed, back in Slurm and at the front door")
    if data["deploy"].get("event_log"):
        lines.append(f"  deploy event log: {data['deploy']['event_log']}")
    return "\n".join(lines)
