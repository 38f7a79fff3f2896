"""`aifactory lab up|down|status|exec SITE`, `aifactory lab host destroy|recreate SITE HOST`: the local
lab (docs/lab.md)."""

from __future__ import annotations

import argparse

from aifactory.cli.output import emit_json, table
from aifactory.errors import UsageError
from aifactory.lab import LabStatus, lab_down, lab_exec, lab_status, lab_up
from aifactory.plan import plan_site
from aifactory.spec.reference import resolve_site

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "lab up": "aifactory lab up lab/site.yaml",
    "lab down": "aifactory lab down lab",
    "lab status": "aifactory lab status lab --format json",
    "lab exec": "aifactory lab exec lab -- ansible all -m ansible.builtin.ping",
    "lab host destroy": "aifactory lab host destroy lab lab-cpu-002",
    "lab host recreate": "aifactory lab host recreate lab lab-cpu-002",
}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    lab = subparsers.add_parser(
        "lab", parents=[common], help="the local lab: an air-gapped site in miniature on this machine"
    )
    commands = lab.add_subparsers(dest="lab_command", metavar="COMMAND")
    commands.required = True

    up = commands.add_parser("up", parents=[common], help="build and start the lab of a site spec")
    up.add_argument("site", help="site spec (YAML)")
    up.set_defaults(handler=cmd_up)

    down = commands.add_parser("down", parents=[common], help="remove everything the lab made")
    down.add_argument("site", help="site spec (YAML) or site name")
    down.add_argument(
        "--force",
        action="store_true",
        help="also remove namespaces of this site name made from another state folder",
    )
    down.set_defaults(handler=cmd_down)

    status = commands.add_parser("status", parents=[common], help="hosts, addresses, sshd and BMC state")
    status.add_argument("site", help="site spec (YAML) or site name")
    status.set_defaults(handler=cmd_status)

    execute = commands.add_parser(
        "exec",
        parents=[common],
        help="run a command on a lab host (the control host by default)",
        description="Run CMD inside a lab host with the lab's Ansible config, inventory and ssh config set; "
        "its exit code becomes this command's.",
    )
    execute.add_argument("site", help="site spec (YAML) or site name")
    execute.add_argument("--host", help="lab host to run on (default: the site's control host)")
    execute.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command, after `--`")
    execute.set_defaults(handler=cmd_exec)

    host = commands.add_parser(
        "host", parents=[common], help="lose one host of a running lab, or bring a blank one back"
    )
    host_commands = host.add_subparsers(dest="lab_host_command", metavar="COMMAND")
    host_commands.required = True
    destroy = host_commands.add_parser(
        "destroy",
        parents=[common],
        help="the host dies: its namespace, processes and disk state gone (its BMC stays)",
        description="Remove one host of a running lab as a dead machine: its network namespace, every "
        "process in it (sshd, services) and its folder (host key, /etc, /opt, /var/lib, logs). Its BMC "
        "and the site's storage stay. Bring a blank one back with `lab host recreate` (or `aifactory "
        "replace`, which does it through the lab).",
    )
    recreate = host_commands.add_parser(
        "recreate",
        parents=[common],
        help="a blank host in its place: same name and addresses, a new host key",
        description="Bring a destroyed host back blank: a new namespace with its planned name and "
        "addresses and a new sshd with a NEW host key. The lab's known_hosts is left as it was: the "
        "control host learns the new key with `aifactory replace`, never from the lab.",
    )
    for parser in (destroy, recreate):
        parser.add_argument("site", help="site spec (YAML) or site name")
        parser.add_argument("host", help="the host (a name of the plan; not the control host)")
    destroy.set_defaults(handler=cmd_host_destroy)
    recreate.set_defaults(handler=cmd_host_recreate)


def site_name(argument: str) -> str:
    """The site a SITE argument names (a spec file or a site name; see aifactory.spec.reference)."""
    return resolve_site(argument).name


def cmd_up(args: argparse.Namespace) -> int:
    planned = plan_site(args.site, write_lock=False)
    status = lab_up(planned)
    render(status, args.format)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    status = lab_down(site_name(args.site), force=args.force)
    if args.format == "json":
        emit_json(status.as_dict())
    else:
        print(f"lab {status.site}: down (namespaces, processes, mounts and lab files removed)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = lab_status(site_name(args.site))
    render(status, args.format)
    return 0 if status.state in ("up", "down") else 1


def cmd_exec(args: argparse.Namespace) -> int:
    argv, host = split_exec_argv(list(args.argv), args.host)
    if not argv:
        raise UsageError("lab exec needs a command", hint="aifactory lab exec SITE -- CMD ...")
    result = lab_exec(site_name(args.site), argv, host=host, capture=False)
    return result.returncode


def cmd_host_destroy(args: argparse.Namespace) -> int:
    from aifactory.lab.machines import destroy_host

    status = destroy_host(site_name(args.site), args.host)
    if args.format == "json":
        emit_json({"site": status.site, "host": args.host, "state": "destroyed", "lab": status.state})
    else:
        print(
            f"lab {status.site}: {args.host} destroyed (namespace, processes and disk state gone; BMC kept)"
        )
    return 0


def cmd_host_recreate(args: argparse.Namespace) -> int:
    from aifactory.lab.machines import recreate_host

    site = site_name(args.site)
    public = recreate_host(site, args.host)
    if args.format == "json":
        emit_json({"site": site, "host": args.host, "state": "blank", "host_key": str(public)})
    else:
        print(
            f"lab {site}: {args.host} is back blank with a new host key ({public}); known_hosts unchanged: "
            f"`aifactory replace SITE {args.host}` learns it"
        )
    return 0


def split_exec_argv(argv: list[str], host: str | None) -> tuple[list[str], str | None]:
    """`SITE --host NAME -- CMD`: argparse leaves options after SITE in the remainder; take them here."""
    while argv and argv[0] != "--" and argv[0].startswith("--host"):
        option = argv.pop(0)
        if "=" in option:
            host = option.split("=", 1)[1]
        elif argv:
            host = argv.pop(0)
        else:
            raise UsageError("--host needs a host name")
    if argv and argv[0] == "--":
        argv = argv[1:]
    return argv, host


def render(status: LabStatus, output_format: str) -> None:
    if output_format == "json":
        emit_json(status.as_dict())
        return
    print(f"lab {status.site}: {status.state}")
    if status.leftovers:
        print(
            f"leftovers of an interrupted lab up: {', '.join(status.leftovers)} "
            f"(run `aifactory lab down {status.site}`)"
        )
    if not status.hosts:
        return
    rows = []
    for host in status.hosts:
        addresses = ", ".join(f"{i['name']}={i['address']}" for i in host.interfaces)
        bmc = f"{host.bmc.url} {host.bmc.state}" if host.bmc else "-"
        rows.append((host.name, host.role, host.state, host.sshd_state, addresses, bmc))
    print(table(("host", "role", "state", "sshd", "addresses", "bmc"), rows))
    print(f"\ncontrol host: {status.control_host}  (aifactory lab exec {status.site} -- ansible all -m ping)")
    print(f"inventory: {status.paths.get('inventory')}\nssh config: {status.paths.get('ssh_config')}")
