"""`aifactory-serve`: run the policy-guarded inference server for one model of the site."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aifactory.errors import AifactoryError, ExitCode
from aifactory.state import SiteState


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aifactory-serve", description="Serve a model of the site over HTTP(S).")
    parser.add_argument("--plan", required=True, type=Path, help="the site plan (plan.json)")
    parser.add_argument("--model", required=True, help="the model to serve (a model of the site)")
    parser.add_argument("--host-name", help="this host's name in the plan (default: the hostname)")
    parser.add_argument("--listen", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8600, help="port (default 8600; 0 picks a free one)")
    parser.add_argument("--storage-root", type=Path, help="prefix in front of planned storage paths")
    parser.add_argument("--runtime-dir", type=Path,
                        help="trust files and decision log (default: the site's state folder, runtime/)")
    parser.add_argument("--max-batch", type=int, default=32, help="rows per forward pass, at most (default 32)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long the batcher waits to fill a batch (default 5 ms)")
    parser.add_argument("--authz-threads", type=int, default=4, help="authorization threads (default 4)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM) issued by the site CA")
    parser.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    parser.add_argument("--tls-client-ca", type=Path, help="require client certificates from this CA (mTLS)")
    parser.add_argument("--sign-every", type=int, default=100, help="sign the log head every N records (100)")
    parser.add_argument("--sign-interval", type=float, default=5.0, help="... or every S seconds (5)")
    parser.add_argument("--head-copy", type=Path, action="append", default=[],
                        help="also append signed heads to this file (storage off this host); repeatable")
    parser.add_argument("--policy-time-limit", type=float, default=0.5,
                        help="deny (engine-timeout) when one policy evaluation takes longer (default 0.5 s)")
    parser.add_argument("--reload-interval", type=float, default=2.0, help="seconds between checkpoint checks")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to finish requests on stop")
    parser.add_argument("--debug", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from aifactory.runtime.authz import load_authorizer
        from aifactory.runtime.server import ServerConfig, run_server
        from aifactory.runtime.siteplan import RuntimePlan

        plan = RuntimePlan.load(args.plan, storage_root=args.storage_root)
        if args.tls_cert and not args.tls_key:
            raise AifactoryError("--tls-cert needs --tls-key", code="usage", exit_code=ExitCode.USAGE)
        config = ServerConfig(
            plan_path=args.plan, model=args.model, host_name=args.host_name, listen=args.listen, port=args.port,
            storage_root=args.storage_root,
            runtime_dir=args.runtime_dir or SiteState.for_site(plan.site).subdir("runtime"),
            max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, authz_threads=args.authz_threads,
            torch_threads=args.torch_threads, tls_cert=args.tls_cert, tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca, sign_every=args.sign_every, sign_interval=args.sign_interval,
            head_copies=tuple(args.head_copy), reload_interval=args.reload_interval,
            drain_timeout=args.drain_timeout)
        run_server(config, authorizer=load_authorizer(plan.data, time_limit_s=args.policy_time_limit),
                   ready=lambda server: print(f"aifactory-serve: ready on port {server.bound_port}",
                                              file=sys.stderr, flush=True))
    except AifactoryError as error:
        print(error.render(), file=sys.stderr)
        return int(error.exit_code)
    except OSError as exc:
        print(f"error[serve]: {exc}", file=sys.stderr)
        return int(ExitCode.CANNOT_EVALUATE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
