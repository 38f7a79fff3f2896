"""`aifactory-serve`: run the policy-guarded inference server.

Settings come from the command line, or from the runtime configuration deploy writes
(`--config /etc/aifactory/runtime.yaml`; keys: plan, host, state_dir, storage_root, models,
serve.{address, port, tls_cert, tls_key, tls_client_ca, tls_client_auth, forward_cpus,
front_door.{port, addresses}} and the
limits in `LIMITS` (serve.max_connections, ...), decision_log.{sign_every, sign_interval,
head_copies, rotate_bytes, retention_days, disk_warn_free, disk_shed_free}); a command-line option wins
over the file.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from aifactory.console import DEBUG_HELP, UsageParser, run_console
from aifactory.errors import AifactoryError, ExitCode, Location, UsageError
from aifactory.runtime.cpus import CpuSplit, parse_cpu_list
from aifactory.state import SiteState
from aifactory.trust.decisionlog import DEFAULT_RETENTION_DAYS, DISK_SHED_FREE, DISK_WARN_FREE

if TYPE_CHECKING:  # torch: the server module is imported only when it runs
    from aifactory.runtime.server import InferenceServer

# The server's limits against hostile clients: (option and runtime.yaml `serve.` key, type, default, help).
# Defaults are those of `runtime.http.HttpLimits` and `runtime.server.ServerConfig` (docs/runtime.md).
LIMITS: tuple[tuple[str, type, float, str], ...] = (
    ("max_connections", int, 1024, "open connections in all; past it a new one gets 503 and is closed"),
    ("max_connections_per_peer", int, 256, "open connections from one address; past it 503 and closed"),
    (
        "header_timeout",
        float,
        10.0,
        "seconds from a request's first byte (or the connection) to its headers' end",
    ),
    (
        "body_timeout",
        float,
        30.0,
        "seconds for the body after the headers, and for a client to read an answer",
    ),
    ("idle_timeout", float, 30.0, "seconds a keep-alive connection may wait between requests"),
    ("max_header_bytes", int, 16384, "bytes of request line and headers (431 past it)"),
    ("max_path", int, 2048, "bytes of the request target (414 past it)"),
    ("max_body", int, 1 << 20, "bytes of a request body (413 past it)"),
    ("denials_per_peer", int, 20, "recorded denials per address and window; then 429 until it ends"),
    ("denials_total", int, 1000, "recorded denials per window for all addresses together; then 429"),
    ("denial_window", float, 10.0, "seconds of the denial windows; what got 429 is recorded once per window"),
)


def _parser() -> argparse.ArgumentParser:
    parser = UsageParser(prog="aifactory-serve", description="Serve a model of the site over HTTP(S).")
    parser.add_argument("--config", type=Path, help="runtime configuration (runtime.yaml, written by deploy)")
    parser.add_argument("--plan", type=Path, help="the site plan (plan.json)")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="a model to serve (repeatable; default: every model the plan lets this host serve)",
    )
    parser.add_argument("--host-name", help="this host's name in the plan (default: the hostname)")
    parser.add_argument("--listen", "--host", dest="listen", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8600; 0 picks a free one)")
    parser.add_argument(
        "--front-door-port",
        type=int,
        help="also listen on this port for the front door: PROXY v2 from --front-door addresses only",
    )
    parser.add_argument(
        "--front-door",
        action="append",
        help="an address of the front door (HAProxy) that may send PROXY v2 headers; repeatable",
    )
    parser.add_argument("--storage-root", type=Path, help="prefix in front of planned storage paths")
    parser.add_argument(
        "--runtime-dir",
        type=Path,
        help="trust files and decision log (default: the site's state folder, runtime/)",
    )
    parser.add_argument(
        "--max-batch", type=int, default=32, help="rows per forward pass, at most (default 32)"
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long the batcher waits to fill a batch (default 5 ms)",
    )
    parser.add_argument(
        "--authz-threads",
        type=int,
        default=2,
        help="authorization threads, each with its own policy engine (default 2; 0: the event loop decides)",
    )
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument(
        "--forward-cpus",
        help="run the forward pass on these CPUs (e.g. 0 or 0-3) and the server's other threads on the "
        "rest (default: the OS places every thread)",
    )
    parser.add_argument(
        "--gil-switch-ms",
        type=float,
        default=0.5,
        help="how long a thread waiting for Python's GIL waits before asking for it (default 0.5 ms; "
        "Python's own is 5 ms, which stalls the batcher behind the event loop)",
    )
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM) issued by the site CA")
    parser.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        help="verify client certificates against this CA, the site CA (mTLS); a certificate names its tenant",
    )
    parser.add_argument(
        "--tls-client-auth",
        choices=("required", "optional"),
        help="with --tls-client-ca: every client needs a certificate (required, the default), or a "
        "token alone will do (optional)",
    )
    parser.add_argument("--sign-every", type=int, help="sign the log head every N records (100)")
    parser.add_argument("--sign-interval", type=float, help="... or every S seconds (5)")
    parser.add_argument(
        "--head-copy",
        type=Path,
        action="append",
        help="also append signed heads to this file (storage off this host); repeatable",
    )
    parser.add_argument(
        "--policy-time-limit",
        type=float,
        default=0.5,
        help="deny (engine-timeout) when one policy evaluation takes longer (default 0.5 s)",
    )
    parser.add_argument(
        "--reload-interval", type=float, default=2.0, help="seconds between checkpoint checks"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds to finish requests on stop"
    )
    parser.add_argument(
        "--no-feedback",
        dest="feedback",
        action="store_const",
        const=False,
        help="no receipts of decisions, no feedback (serve.feedback: false); the same on every node",
    )
    limits = parser.add_argument_group("limits against hostile clients (runtime.yaml: serve.<name>)")
    for name, kind, default, text in LIMITS:
        limits.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{text} (default {default})")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_console(_serve, argv, log_format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _serve(arguments: list[str]) -> int:
    args = _parser().parse_args(arguments)
    try:
        if args.gil_switch_ms <= 0:
            raise UsageError("--gil-switch-ms must be more than 0")
        # The batcher thread takes the GIL back after every forward pass (and the authorization and log
        # threads after each call); with the event loop busy, each such wait lasts up to this interval.
        sys.setswitchinterval(args.gil_switch_ms / 1000)
        from aifactory.runtime.http import HttpLimits
        from aifactory.runtime.server import ServerConfig, run_server
        from aifactory.runtime.siteplan import RuntimePlan
        from aifactory.trust.authz import load_authorizer

        file = _read_config(args.config)
        serve, decisions = file.get("serve") or {}, file.get("decision_log") or {}

        def pick(value: Any, fallback: Any, default: Any = None) -> Any:
            return value if value is not None else fallback if fallback is not None else default

        def path(value: Any) -> Path | None:
            return Path(value) if value else None

        plan_path = path(pick(args.plan, file.get("plan")))
        if plan_path is None:
            raise UsageError("no site plan: give --plan or a --config with `plan`")
        storage_root = path(pick(args.storage_root, file.get("storage_root")))
        plan = RuntimePlan.load(plan_path, storage_root=storage_root)
        tls_cert, tls_key = (
            path(pick(args.tls_cert, serve.get("tls_cert"))),
            path(pick(args.tls_key, serve.get("tls_key"))),
        )
        if tls_cert and not tls_key:
            raise UsageError("a TLS certificate needs its key (--tls-key)")
        tls_client_ca = path(pick(args.tls_client_ca, serve.get("tls_client_ca")))
        if tls_client_ca and not tls_cert:
            raise UsageError("client certificates (--tls-client-ca) need TLS: give --tls-cert and --tls-key")
        tls_client_auth = pick(args.tls_client_auth, serve.get("tls_client_auth"), "required")
        if tls_client_auth not in ("required", "optional"):
            raise UsageError(f"serve.tls_client_auth is {tls_client_auth!r}; it must be required or optional")
        limits = {
            name: kind(pick(getattr(args, name), serve.get(name), default))
            for name, kind, default, _ in LIMITS
        }
        http = HttpLimits(
            max_connections=limits["max_connections"],
            max_connections_per_peer=limits["max_connections_per_peer"],
            header_timeout=limits["header_timeout"],
            body_timeout=limits["body_timeout"],
            idle_timeout=limits["idle_timeout"],
            max_header_bytes=limits["max_header_bytes"],
            max_target=limits["max_path"],
            max_body=limits["max_body"],
        )
        problem = http.check() or (
            "denial limits must be at least 1"
            if min(limits["denials_per_peer"], limits["denials_total"], limits["denial_window"]) <= 0
            else None
        )
        if problem:
            raise UsageError(f"limits: {problem}")
        runtime_dir = path(pick(args.runtime_dir, file.get("state_dir"))) or SiteState.for_site(
            plan.site
        ).subdir("runtime")
        config = ServerConfig(
            plan_path=plan_path,
            models=tuple(args.model or file.get("models") or ()),
            host_name=pick(args.host_name, file.get("host")) or None,
            listen=pick(args.listen, serve.get("address"), "127.0.0.1"),
            port=int(pick(args.port, serve.get("port"), 8600)),
            storage_root=storage_root,
            runtime_dir=runtime_dir,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            authz_threads=args.authz_threads,
            torch_threads=args.torch_threads,
            cpu_split=_cpu_split(pick(args.forward_cpus, serve.get("forward_cpus"))),
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            tls_client_auth=tls_client_auth,
            sign_every=int(pick(args.sign_every, decisions.get("sign_every"), 100)),
            sign_interval=float(pick(args.sign_interval, decisions.get("sign_interval"), 5.0)),
            head_copies=tuple(Path(p) for p in pick(args.head_copy, decisions.get("head_copies"), [])),
            log_rotate_bytes=_log_setting(decisions, "rotate_bytes", int, None),
            log_retention_days=_log_setting(decisions, "retention_days", int, DEFAULT_RETENTION_DAYS),
            log_disk_warn_free=_log_setting(decisions, "disk_warn_free", float, DISK_WARN_FREE),
            log_disk_shed_free=_log_setting(decisions, "disk_shed_free", float, DISK_SHED_FREE),
            reload_interval=args.reload_interval,
            drain_timeout=args.drain_timeout,
            http=http,
            denials_per_peer=limits["denials_per_peer"],
            denials_total=limits["denials_total"],
            denial_window=limits["denial_window"],
            feedback=bool(pick(args.feedback, serve.get("feedback"), True)),
            **_front_door(args, serve.get("front_door")),
        )
        run_server(
            config,
            authorizer=load_authorizer(plan.plan, time_limit_s=args.policy_time_limit),
            ready=_say_ready,
        )
    except OSError as exc:  # a port taken, a file unreadable: the server cannot run here
        raise AifactoryError(str(exc), code="serve", exit_code=ExitCode.CANNOT_EVALUATE) from exc
    return 0


def _say_ready(server: InferenceServer) -> None:
    if server.front_door_port is not None:
        print(f"aifactory-serve: front door on port {server.front_door_port}", file=sys.stderr, flush=True)
    print(f"aifactory-serve: ready on port {server.bound_port}", file=sys.stderr, flush=True)


def _front_door(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    """The front door's listener from the options or `serve.front_door` ({port, addresses}); checked so
    that a typo cannot open the PROXY listener to everyone or to no one."""
    if settings is not None and not isinstance(settings, dict):
        raise UsageError("serve.front_door must be a mapping with port and addresses")
    settings = settings or {}
    port = args.front_door_port if args.front_door_port is not None else settings.get("port")
    addresses = args.front_door or settings.get("addresses") or []
    if port is None and not addresses:
        return {}
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UsageError(f"the front door's port is {port!r}; it must be a port number (0 to 65535)")
    if not isinstance(addresses, list) or not addresses:
        raise UsageError("a front door port needs the front door's addresses (--front-door ADDR)")
    try:
        parsed = frozenset(str(ipaddress.ip_address(str(a))) for a in addresses)
    except ValueError as exc:
        raise UsageError(f"the front door's addresses: {exc}") from None
    return {"front_door_port": port, "front_door_addresses": parsed}


def _log_setting(decisions: dict[str, Any], key: str, kind: type[Any], default: Any) -> Any:
    """A decision_log setting from runtime.yaml: a number of the given kind, else the default."""
    value = decisions.get(key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and not isinstance(value, int))
    ):
        raise AifactoryError(
            f"decision_log.{key} is {value!r}; it must be {'an integer' if kind is int else 'a number'}",
            code="usage",
            exit_code=ExitCode.USAGE,
        )
    return kind(value)


def _cpu_split(value: Any) -> CpuSplit | None:
    """--forward-cpus / serve.forward_cpus, split from the CPUs this process may use; None when not set."""
    if value in (None, "", []):
        return None
    try:
        cpus = parse_cpu_list(",".join(str(v) for v in value) if isinstance(value, list) else str(value))
        return CpuSplit.of(cpus)
    except ValueError as exc:
        raise UsageError(f"--forward-cpus / serve.forward_cpus: {exc}") from None


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        value = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(
            f"cannot read the runtime configuration {path}: {exc}", location=Location(file=str(path))
        ) from None
    if not isinstance(value, dict):
        raise UsageError(f"{path} is not a mapping", location=Location(file=str(path)))
    return value


if __name__ == "__main__":
    sys.exit(main())
