"""`aifactory status` and `aifactory monitoring certs|receive`: the site's telemetry (docs/telemetry.md).

aifactory status SITE [--format json]        hosts, targets, alerts, decisions per second
aifactory monitoring certs SITE              issue the monitoring certificates (missing or expiring)
aifactory monitoring receive SITE --address IP --port N --cert F --key F --ca F
                                             the alert receiver (the monitoring role's service)
aifactory report ops SITE --since 24h -o DIR  the signed operations report (plots of the window)
aifactory monitoring power SITE --targets F --credentials F --address IP --port N --cert F --key F --ca F
                                             the BMC power collector (the monitoring role's service)
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from aifactory.cli.output import emit_json, table
from aifactory.plan import plan_site
from aifactory.state import SiteState
from aifactory.telemetry.certs import PROMETHEUS, issue_monitoring_certificates
from aifactory.telemetry.receiver import AlertReceiver, ReceiverConfig
from aifactory.telemetry.status import ECONOMICS_WINDOW, PROMETHEUS_PORT, PrometheusClient, site_status
from aifactory.trust.certs import service_uri
from aifactory.trust.tokens import TrustFiles

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "status": "aifactory lab exec lab -- aifactory status inventory/lab/site.yaml --format json",
    "monitoring deploy": "aifactory monitoring deploy lab/site.yaml",
    "report ops": "aifactory lab exec lab -- aifactory report ops inventory/lab/site.yaml --since 24h -o ops",
    "monitoring certs": "aifactory monitoring certs lab/site.yaml",
    "monitoring receive": "aifactory monitoring receive lab --address 10.200.0.2 --port 9095 "
    "--cert host.pem --key host.key --ca ca.pem",
    "monitoring power": "aifactory monitoring power lab --targets bmcs.json "
    "--credentials bmc-credentials.json --address 10.200.0.2 --port 9096 "
    "--cert host.pem --key host.key --ca ca.pem",
}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    status = subparsers.add_parser(
        "status",
        parents=[common],
        help="the site at work: hosts, scrape targets, alerts, decisions per second",
    )
    status.add_argument("site", help="site spec (YAML)")
    status.add_argument("--port", type=int, default=PROMETHEUS_PORT, help="Prometheus' port (default 9090)")
    status.add_argument(
        "--window",
        default=ECONOMICS_WINDOW,
        help=f"the window of joules and cost per decision (default {ECONOMICS_WINDOW}; e.g. 90s, 1h)",
    )
    status.add_argument(
        "--at",
        type=float,
        default=None,
        metavar="UNIX_SECONDS",
        help="the economics figures over the window ending at this time (default: now)",
    )
    status.set_defaults(handler=cmd_status)

    report = subparsers.add_parser("report", parents=[common], help="the signed operations report")
    kinds = report.add_subparsers(dest="report_command", metavar="KIND")
    kinds.required = True
    ops = kinds.add_parser(
        "ops",
        parents=[common],
        help="decisions, latency, energy per decision, host power, node states and alerts over a window",
    )
    ops.add_argument("site", help="site spec (YAML)")
    ops.add_argument("--since", default="24h", help="the window, ending now: 90m, 24h, 7d (default 24h)")
    ops.add_argument("--until", help="the window's end, ISO 8601 with zone (default: now)")
    ops.add_argument("-o", "--output", type=Path, required=True, help="report folder to write")
    ops.add_argument("--port", type=int, default=PROMETHEUS_PORT, help="Prometheus' port (default 9090)")
    ops.set_defaults(handler=cmd_report_ops)

    monitoring = subparsers.add_parser(
        "monitoring", parents=[common], help="the monitoring certificates and the alert receiver"
    )
    actions = monitoring.add_subparsers(dest="monitoring_command", metavar="ACTION")
    actions.required = True
    deploy = actions.add_parser(
        "deploy",
        parents=[common],
        help="issue the monitoring certificates, then run the monitoring playbook on every host",
    )
    deploy.add_argument("site", help="site spec (YAML)")
    deploy.set_defaults(handler=cmd_deploy)

    certs = actions.add_parser(
        "certs",
        parents=[common],
        help="issue the hosts' and Prometheus' certificates from the site CA (missing or expiring)",
    )
    certs.add_argument("site", help="site spec (YAML)")
    certs.set_defaults(handler=cmd_certs)

    receive = actions.add_parser(
        "receive",
        parents=[common],
        help="run the alert receiver: Alertmanager's deliveries to the operator log",
    )
    receive.add_argument("site", help="site name")
    receive.add_argument("--address", required=True, help="the control host's management address")
    receive.add_argument("--port", type=int, required=True)
    receive.add_argument("--cert", type=Path, required=True, help="the control host's certificate")
    receive.add_argument("--key", type=Path, required=True)
    receive.add_argument("--ca", type=Path, required=True, help="the site CA (senders' certificates)")
    receive.set_defaults(handler=cmd_receive)

    power = actions.add_parser(
        "power",
        parents=[common],
        help="run the power collector: every BMC's power reading over Redfish, for Prometheus",
    )
    power.add_argument("site", help="site name")
    power.add_argument("--targets", type=Path, required=True, help="the BMCs to poll (JSON, from the role)")
    power.add_argument("--credentials", type=Path, required=True, help="their credentials (JSON, mode 0600)")
    power.add_argument("--address", required=True, help="the control host's management address")
    power.add_argument("--port", type=int, required=True)
    power.add_argument("--cert", type=Path, required=True, help="the control host's certificate")
    power.add_argument("--key", type=Path, required=True)
    power.add_argument("--ca", type=Path, required=True, help="the site CA (scrapers' certificates)")
    power.set_defaults(handler=cmd_power)


def cmd_status(args: argparse.Namespace) -> int:
    plan = plan_site(args.site, write_lock=False).plan
    state = SiteState.for_site(plan.name)
    found = site_status(
        plan, PrometheusClient.for_site(plan, state, port=args.port), state, window=args.window, at=args.at
    )
    if args.format == "json":
        emit_json(found)
        return 0
    print(f"site {found['site']}: Prometheus {found['prometheus']}")
    print(
        table(
            ["host", "role", "address", "node exporter", "slurm"],
            [
                [
                    h["name"],
                    h["role"],
                    h["address"],
                    {True: "up", False: "DOWN", None: "-"}[h["up"]],
                    h["slurm_state"] or "-",
                ]
                for h in found["hosts"]
            ],
        )
    )
    print()
    print(
        table(
            ["job", "host", "health", "last error"],
            [[t["job"], t["host"], t["health"], t["last_error"] or ""] for t in found["targets"]],
        )
    )
    firing = [a for a in found["alerts"] if a["state"] == "firing"]
    print()
    print(
        f"alerts firing: {len(firing)}"
        + "".join(f"\n  {a['name']} {a['host'] or ''}: {a['summary']}" for a in firing)
    )
    print(f"decisions per second: {found['decisions_per_second']}")
    print()
    print(economics_table(found["economics"]))
    return 0


def economics_table(economics: dict[str, Any]) -> str:
    """Joules and cost per decision per model, tenant and energy source (docs/economics.md)."""
    rows = economics["per_decision"]
    if not rows:
        return f"per decision over {economics['window']}: no decisions with an energy figure"
    return f"per decision over {economics['window']}:\n" + table(
        ["model", "tenant", "decisions", "joules", "cost", "energy source"],
        [
            [
                r["model"],
                r["tenant"],
                f"{r['decisions']:.0f}",
                f"{r['joules_per_decision']:.6g}",
                "-" if r["cost_per_decision"] is None else f"{r['cost_per_decision']:.6g} {r['currency']}",
                r["source"],
            ]
            for r in rows
        ],
    )


def cmd_report_ops(args: argparse.Namespace) -> int:
    import time

    from aifactory.audit.model import parse_timestamp
    from aifactory.audit.sign import ALLOWED_SIGNERS
    from aifactory.telemetry.ops_report import Window, gather, parse_since, prometheus_fetch, publish_report

    seconds = parse_since(args.since)
    end = int(parse_timestamp(args.until).timestamp()) if args.until else int(time.time())
    plan = plan_site(args.site, write_lock=False).plan
    state = SiteState.for_site(plan.name)
    window = Window.ending(end, seconds)
    client = PrometheusClient.for_site(plan, state, port=args.port)
    plots = gather(prometheus_fetch(client), window, has_economics=plan.economics is not None)
    files = publish_report(args.output, plan=plan, state=state, window=window, plots=plots)
    if args.format == "json":
        emit_json({"folder": str(args.output), "files": list(files), "plots": [p.key for p in plots]})
        return 0
    drawn = sum(1 for p in plots if any(s.points for s in p.series))
    print(f"{args.output}: {drawn} of {len(plots)} plots with data")
    trust = state.subdir("audit") / ALLOWED_SIGNERS
    print(f"check it: aifactory audit verify {args.output} --trust {trust}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from aifactory.deploy.monitoring import deploy_monitoring  # Ansible: only for this command
    from aifactory.pipeline.connection import site_connection

    planned = plan_site(args.site, write_lock=False)
    result = deploy_monitoring(planned, connection=site_connection(planned.plan.name))
    summary = {
        "hosts": result.hosts,
        "changed": result.changed,
        "certificates_issued": list(result.certificates_issued),
    }
    if args.format == "json":
        emit_json(summary)
        return 0
    print(f"monitoring on {len(result.hosts)} hosts, changed={result.changed}")
    print("see it: aifactory status SITE (on the control host)")
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    planned = plan_site(args.site, write_lock=False)
    state = SiteState.for_site(planned.plan.name)
    with state.lock("monitoring certs"):
        done = issue_monitoring_certificates(TrustFiles(state.path("runtime")), planned.plan)
        if done.issued:
            state.record(
                command="monitoring certs",
                result="issued",
                spec_digest=planned.plan.spec_digest,
                detail={"issued": list(done.issued)},
            )
    if args.format == "json":
        emit_json({"folder": str(done.folder), "issued": list(done.issued), "kept": list(done.kept)})
        return 0
    print(f"{done.folder}: issued {len(done.issued)}, kept {len(done.kept)} (still valid)")
    return 0


def _stop_on_sigterm() -> None:
    def stop(_signal: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # out of the serving loop, as Ctrl-C would; the supervisor's SIGTERM

    signal.signal(signal.SIGTERM, stop)


def cmd_power(args: argparse.Namespace) -> int:
    import threading

    from prometheus_client import CollectorRegistry

    from aifactory.telemetry.power import PowerCollector, read_targets, start_exporter

    interval, targets = read_targets(args.targets, args.credentials)
    registry = CollectorRegistry()
    collector = PowerCollector(targets, interval=interval, registry=registry)
    stop_serving = start_exporter(
        registry, address=args.address, port=args.port, certificate=args.cert, key=args.key, client_ca=args.ca
    )
    _stop_on_sigterm()
    try:
        collector.run(threading.Event())
    except KeyboardInterrupt:
        pass
    finally:
        stop_serving()
    return 0


def cmd_receive(args: argparse.Namespace) -> int:
    state = SiteState.for_site(args.site)
    config = ReceiverConfig(
        site=args.site,
        address=args.address,
        port=args.port,
        certificate=args.cert,
        key=args.key,
        client_ca=args.ca,
        allowed_client=service_uri(args.site, PROMETHEUS),
    )
    receiver = AlertReceiver(state, config)
    _stop_on_sigterm()
    try:
        receiver.serve_forever()
    except KeyboardInterrupt:
        receiver.server.server_close()
    return 0
