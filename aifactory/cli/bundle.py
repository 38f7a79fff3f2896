"""`aifactory bundle keygen|build|verify|import|show`."""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path

from aifactory import signing
from aifactory.bundle import (
    NAMESPACE,
    BuildOptions,
    build_bundle,
    current_import,
    import_bundle,
    verify_bundle,
)
from aifactory.bundle.apt import ROLE_PACKAGES
from aifactory.bundle.hashing import default_workers
from aifactory.bundle.runtime_tree import DEFAULT_PYTHON as DEFAULT_RUNTIME_PYTHON
from aifactory.bundle.source import DEFAULT_PART_SIZE, parse_size
from aifactory.bundle.verify import ssh_keygen_check
from aifactory.cli import progress
from aifactory.cli.output import emit_json
from aifactory.errors import Location, UsageError
from aifactory.plan import plan_site
from aifactory.state import SiteState

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "bundle keygen": "aifactory bundle keygen -o keys/ --passphrase-prompt",
    "bundle build": "aifactory bundle build lab/site.yaml --key keys/signing_key -o lab.tar --split",
    "bundle verify": "aifactory bundle verify lab.bundle.tar --trust keys/allowed_signers",
    "bundle import": "aifactory bundle import lab.bundle.tar --trust keys/allowed_signers",
    "bundle current": "aifactory bundle current lab --format json",
}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    bundle = subparsers.add_parser(
        "bundle", parents=[common], help="build, verify and import the signed offline bundle"
    )
    commands = bundle.add_subparsers(dest="bundle_command", metavar="SUBCOMMAND")
    commands.required = True

    keygen = commands.add_parser("keygen", parents=[common], help="make an Ed25519 bundle signing key")
    keygen.add_argument("-o", "--output", required=True, help="folder for the key and allowed_signers")
    keygen.add_argument(
        "--identity",
        default="bundle-signer@aifactory",
        help="principal named in allowed_signers (ssh-keygen -Y verify -I ...)",
    )
    passphrase_options(keygen, "encrypt the private key")
    keygen.set_defaults(handler=cmd_keygen)

    build = commands.add_parser("build", parents=[common], help="build a signed bundle for a site")
    build.add_argument("site", help="site spec (YAML); its allocation lock must be committed")
    build.add_argument("-o", "--output", required=True, help="bundle file to write (an uncompressed tar)")
    build.add_argument("--key", required=True, help="private signing key (from `aifactory bundle keygen`)")
    passphrase_options(build, "unlock the signing key")
    build.add_argument(
        "--bundle-version",
        help="explicit version, dot-separated numbers that only go up "
        "(default: YYYYMMDD.HHMMSS of the build timestamp)",
    )
    build.add_argument(
        "--timestamp",
        type=int,
        help="build timestamp in Unix seconds (default: "
        "SOURCE_DATE_EPOCH, else now); fixes every mtime, so builds are reproducible",
    )
    build.add_argument(
        "--split",
        nargs="?",
        const=str(DEFAULT_PART_SIZE),
        metavar="SIZE",
        help=f"write parts of at most SIZE bytes (e.g. 3900M; default {DEFAULT_PART_SIZE}, "
        "under 4 GiB for FAT32)",
    )
    build.add_argument(
        "--zstd",
        action="store_true",
        help="compress the tar with zstd (verify/import then need free space to decompress)",
    )
    build.add_argument(
        "--runtime-tree",
        action="store_true",
        help="prebuild each runtime pool platform's virtual environment as one signed, compressed "
        "tree that hosts extract instead of pip-installing (docs/bundle.md, runtime trees)",
    )
    build.add_argument(
        "--runtime-python",
        default=str(DEFAULT_RUNTIME_PYTHON),
        metavar="PATH",
        help="the hosts' interpreter, which makes the runtime tree; hosts whose python3 reports "
        "another version refuse the tree (default %(default)s)",
    )
    build.add_argument(
        "--file",
        dest="extra_files",
        action="append",
        default=[],
        metavar="PATH",
        help="extra file or folder to carry under files/ (weights, datasets, binaries); repeatable",
    )
    build.add_argument(
        "--collection",
        dest="collections",
        action="append",
        default=[],
        metavar="TARBALL",
        help="extra Ansible collection tarball the roles use; repeatable",
    )
    build.add_argument(
        "--pin",
        dest="pins",
        action="append",
        metavar="REQ",
        help="pin a direct dependency, e.g. torch==2.13.0+cpu (default: the build "
        "environment's torch); repeatable",
    )
    build.add_argument("--aifactory-wheel", help="use this aifactory wheel instead of building one")
    build.add_argument("--source", help="aifactory source checkout (default: the one running)")
    build.add_argument("--cache", help="download cache (default: $AIFACTORY_CACHE or ~/.cache/aifactory)")
    build.add_argument(
        "--no-apt",
        action="store_true",
        help=f"leave out the apt repository of the roles' packages ({', '.join(ROLE_PACKAGES)})",
    )
    build.set_defaults(handler=cmd_build)

    verify = commands.add_parser("verify", parents=[common], help="check a bundle's signature and every hash")
    verify.add_argument("bundle", help="bundle file, or any part (or the base name) of a split bundle")
    verify.add_argument("--trust", required=True, help="allowed_signers file of the keys you trust")
    verify.add_argument(
        "--no-rollback-check",
        action="store_true",
        help="skip the comparison with the version last imported for the site",
    )
    verify.add_argument(
        "--with-ssh-keygen",
        metavar="IDENTITY",
        help="also check the signature with the stock `ssh-keygen -Y verify -I IDENTITY`",
    )
    verify.set_defaults(handler=cmd_verify)

    imp = commands.add_parser(
        "import", parents=[common], help="verify and unpack a bundle on the control host"
    )
    imp.add_argument("bundle", help="bundle file, or any part of a split bundle")
    imp.add_argument("--trust", required=True, help="allowed_signers file of the keys you trust")
    imp.add_argument(
        "--home", help="where imports live (default: $AIFACTORY_BUNDLES_HOME or /var/lib/aifactory/bundles)"
    )
    imp.set_defaults(handler=cmd_import)

    show = commands.add_parser("current", parents=[common], help="show the bundle imported for a site")
    show.add_argument("site_name", help="site name")
    show.set_defaults(handler=cmd_current)


def passphrase_options(parser: argparse.ArgumentParser, purpose: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--passphrase-file", help=f"file whose first line is the passphrase ({purpose})")
    group.add_argument("--passphrase-prompt", action="store_true", help=f"ask for a passphrase ({purpose})")


def read_key_passphrase(args: argparse.Namespace, *, confirm: bool) -> bytes | None:
    if args.passphrase_file:
        try:
            text = Path(args.passphrase_file).read_text().splitlines()
        except OSError as exc:
            raise UsageError(
                f"cannot read the passphrase file: {exc.strerror}",
                location=Location(file=args.passphrase_file),
            ) from None
        if not text or not text[0]:
            raise UsageError("the passphrase file is empty", location=Location(file=args.passphrase_file))
        return text[0].encode()
    if args.passphrase_prompt:
        first = getpass.getpass("passphrase: ")
        if confirm and getpass.getpass("passphrase again: ") != first:
            raise UsageError("the two passphrases differ")
        return first.encode() or None
    return None


def cmd_keygen(args: argparse.Namespace) -> int:
    files = signing.generate_keypair(
        Path(args.output),
        identity=args.identity,
        passphrase=read_key_passphrase(args, confirm=True),
        namespaces=NAMESPACE,
    )
    result = {
        "private_key": str(files.private),
        "public_key": str(files.public),
        "allowed_signers": str(files.allowed_signers),
        "identity": files.identity,
    }
    if args.format == "json":
        emit_json(result)
    else:
        print(
            f"wrote {files.private} (mode 0600; keep it offline) and {files.public}\n"
            f"trust file for verifiers: {files.allowed_signers} (identity {files.identity})"
        )
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    options = BuildOptions(
        key=Path(args.key),
        passphrase=read_key_passphrase(args, confirm=False),
        timestamp=args.timestamp,
        version=args.bundle_version,
        part_size=parse_size(args.split) if args.split else None,
        extra_files=[Path(p) for p in args.extra_files],
        collections=[Path(p) for p in args.collections],
        pins=args.pins,
        source=Path(args.source) if args.source else None,
        aifactory_wheel=Path(args.aifactory_wheel) if args.aifactory_wheel else None,
        cache=Path(args.cache) if args.cache else None,
        apt_packages=() if args.no_apt else ROLE_PACKAGES,
        compress="zstd" if args.zstd else None,
        runtime_trees=args.runtime_tree,
        runtime_python=Path(args.runtime_python),
    )
    with progress.shown(args, "bundle build") as shown:
        result = build_bundle(
            plan_site(args.site, write_lock=False), output=Path(args.output), options=options, progress=shown
        )
    if args.format == "json":
        emit_json(result.as_dict())
        return 0
    print(
        f"bundle {result.version} for site {result.site}: {result.files} files, "
        f"{result.archive_bytes / 1e6:.1f} MB, built in {result.seconds:.1f} s"
    )
    for part in result.parts:
        print(f"  {part}")
    print(f"manifest {result.digest}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    report = verify_bundle(args.bundle, trust=Path(args.trust), check_rollback=not args.no_rollback_check)
    stock = (
        ssh_keygen_check(args.bundle, trust=Path(args.trust), identity=args.with_ssh_keygen)
        if args.with_ssh_keygen
        else None
    )
    if args.format == "json":
        emit_json({**report.as_dict(), "ssh_keygen": stock})
        return 0
    if stock:
        print(f"ssh-keygen: {stock}")
    rate = report.payload_bytes / max(report.seconds, 1e-9) / 1e6
    print(
        f"{args.bundle}: OK, bundle {report.version} for site {report.site}, signed by {report.signer}; "
        f"{report.files} files, {report.payload_bytes / 1e6:.1f} MB hashed in {report.seconds:.1f} s "
        f"({rate:.0f} MB/s on {default_workers()} cores)"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    imported = import_bundle(args.bundle, trust=Path(args.trust), home=Path(args.home) if args.home else None)
    if args.format == "json":
        emit_json(imported.as_dict())
        return 0
    print(
        f"imported bundle {imported.version} for site {imported.site} into {imported.root}\n"
        f"  pip install --no-index --find-links {imported.wheelhouse} ...\n"
        f"  ANSIBLE_COLLECTIONS_PATH={imported.collections_path}"
    )
    return 0


def cmd_current(args: argparse.Namespace) -> int:
    imported = current_import(SiteState.for_site(args.site_name))
    if args.format == "json":
        emit_json(imported.as_dict() if imported else None)
    elif imported is None:
        print(f"no bundle imported for site {args.site_name}")
    else:
        print(f"bundle {imported.version} ({imported.digest}) at {imported.root}")
    return 0
