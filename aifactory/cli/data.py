"""`aifactory data versions|show|version|erase`: a dataset's signed versions and the erasure of a subject.

    aifactory data versions SITE DATASET               every version, its digest, files, feedback, erasures
    aifactory data show SITE DATASET@VERSION           one version: its manifest and each file's state
    aifactory data version SITE DATASET                make the next version (policy first; pending feedback)
    aifactory data erase SITE DATASET --subject ID --authority TEXT

The dataset's folder is its planned path on the site storage as this machine reaches it (the lab's
folder when a lab of the site is up here), or below `--storage-root`. Library: aifactory.data.versions.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifactory.cli.output import emit_json, table
from aifactory.errors import ExitCode

if TYPE_CHECKING:
    from aifactory.plan.model import SitePlan

# One example per command, shown at the end of its --help (aifactory/cli/help.py).
EXAMPLES = {
    "data versions": "aifactory data versions inventory/lab/site.yaml vitals",
    "data show": "aifactory data show inventory/lab/site.yaml vitals@3 --format json",
    "data version": "aifactory data version inventory/lab/site.yaml vitals --reason 'weekly feedback'",
    "data erase": "aifactory data erase inventory/lab/site.yaml vitals --subject patient-0042 "
    "--authority 'DPO ticket 2026-117'",
}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    data = subparsers.add_parser(
        "data", parents=[common], help="dataset versions (signed, immutable), feedback, erasure"
    )
    actions = data.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True

    def leaf(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, parents=[common], help=help_text, description=description)
        parser.add_argument("site", help="site spec (YAML)")
        parser.add_argument(
            "--storage-root",
            help="a folder in front of the planned storage paths "
            "(default: the storage as this machine mounts it)",
        )
        return parser

    versions = leaf(
        "versions",
        "list a dataset's versions and erasures, every signature and file checked",
        "List a dataset's versions (docs/data.md): number, digest, when and by whom, files, feedback "
        "records, inherited classification and residency; then its erasures. Every manifest, lineage "
        "record and file is checked against the site's key; exits 1 when anything does not verify.",
    )
    versions.add_argument("dataset", help="a dataset of the site")
    versions.set_defaults(handler=cmd_versions)

    show = leaf(
        "show",
        "show one dataset version: its manifest and the state of each file",
        "Show one version of a dataset: its signed manifest and, for each file, its SHA-256, size and "
        "state (present, destroyed by an erasure, missing or altered); exits 1 when the dataset's "
        "history does not verify.",
    )
    show.add_argument("reference", metavar="DATASET@VERSION", help="e.g. vitals@3 or vitals@sha256:<hex>")
    show.set_defaults(handler=cmd_show)

    version = leaf(
        "version",
        "make the next version of a dataset (policy first; pending feedback lands in it)",
        "Make the next version of a dataset: the runtime policy decides `version` for the owner in each "
        "country the dataset's storage keeps a copy in (a deny refuses it, exit 1, nothing written); "
        "then its files and every feedback record so far are stored by digest and the manifest is "
        "signed with the site's key.",
    )
    version.add_argument("dataset", help="a dataset of the site")
    version.add_argument("--reason", default="", help="why this version is made (kept in its manifest)")
    version.set_defaults(handler=cmd_version)

    erase = leaf(
        "erase",
        "erase one subject's records from a dataset (a new version; older files destroyed)",
        "Erase one data subject's feedback records: a new version without them, a signed erasure record "
        "in the lineage (when, by whom, on whose authority, how many records and which files; the "
        "subject only as a SHA-256), then the older files that held them destroyed and their "
        "manifests marked. The audit report lists the erasure.",
    )
    erase.add_argument("dataset", help="a dataset of the site")
    erase.add_argument("--subject", required=True, help="the subject's id as the feedback named it")
    erase.add_argument(
        "--authority", required=True, help="on whose authority (a ruling, a ticket, the person who decided)"
    )
    erase.set_defaults(handler=cmd_erase)


def _dataset_dir(plan: SitePlan, name: str, storage_root: str | None) -> Path:
    from aifactory.data.versions import plan_dataset
    from aifactory.errors import UsageError
    from aifactory.pipeline.models import on_storage

    dataset = plan_dataset(plan, name)
    if dataset.host_path is None:
        raise UsageError(f"dataset {name} is on object storage ({dataset.url}): its versions need a mount")
    if storage_root:
        return Path(storage_root) / dataset.host_path.lstrip("/")
    return on_storage(plan, dataset.storage, dataset.path)


def _runtime_dir(plan: SitePlan) -> Path:
    from aifactory.state import SiteState

    return SiteState.for_site(plan.name).subdir("runtime")


def _plan(site: str) -> SitePlan:
    from aifactory.plan import plan_site

    return plan_site(site, write_lock=False).plan


def cmd_versions(args: argparse.Namespace) -> int:
    from aifactory.data.versions import describe_history, read_history
    from aifactory.trust.issuing.models import ModelKey

    plan = _plan(args.site)
    folder = _dataset_dir(plan, args.dataset, args.storage_root)
    history = read_history(folder, ModelKey(_runtime_dir(plan)).trust, dataset=args.dataset)
    code = int(ExitCode.OK if history.ok else ExitCode.INVALID)
    if args.format == "json":
        emit_json({"site": plan.name, "folder": str(folder), "ok": history.ok, **history.as_dict()})
        return code
    print(f"{args.dataset}  ({folder})")
    rows = [
        [
            f"v{r['version']}",
            r["digest"][:19],
            r["created"],
            r["by"],
            r["files"] if not r["destroyed"] else f"{r['files']} ({r['destroyed']} destroyed)",
            r["feedback"],
            r["classification"],
            r["residency"],
        ]
        for r in describe_history(history)
    ]
    print(
        table(
            ["VERSION", "DIGEST", "CREATED", "BY", "FILES", "FEEDBACK", "CLASSIFICATION", "RESIDENCY"], rows
        )
    )
    for erasure in history.erasures:
        print(_erasure_line(erasure))
    _print_verdict(history.ok, history.problems)
    return code


def _erasure_line(erasure: dict[str, Any]) -> str:
    versions = sorted({n for d in erasure.get("destroyed", []) for n in d.get("versions", [])})
    return (
        f"erasure {erasure['seq']}  {erasure['time']}  by {erasure['by']}  "
        f"authority: {erasure['authority']}  "
        f"records: {erasure['records_erased']} (+{erasure['pending_erased']} pending)  "
        f"files destroyed in: {', '.join(f'v{n}' for n in versions) or 'none'}  "
        f"new version: v{erasure['new_version']['version']}"
    )


def _print_verdict(ok: bool, problems: tuple[str, ...]) -> None:
    if ok:
        print("history verified: every manifest, lineage record and file against the site's key")
    for problem in problems:
        print(f"  does not verify: {problem}")


def cmd_show(args: argparse.Namespace) -> int:
    from aifactory.data.versions import DatasetStore, marks_of, read_history
    from aifactory.errors import UsageError
    from aifactory.trust.issuing.models import ModelKey

    plan = _plan(args.site)
    name, at, ref = args.reference.partition("@")
    if not at or not ref:
        raise UsageError(f"{args.reference[:80]!r} is not DATASET@VERSION (e.g. vitals@3)")
    folder = _dataset_dir(plan, name, args.storage_root)
    history = read_history(folder, ModelKey(_runtime_dir(plan)).trust, dataset=name)
    version = history.find(ref)
    marks = list(marks_of(DatasetStore(folder), version.number))
    code = int(ExitCode.OK if history.ok else ExitCode.INVALID)
    if args.format == "json":
        emit_json(
            {
                "site": plan.name,
                "ok": history.ok,
                "problems": list(history.problems),
                "version": version.describe(),
                "erasure_marks": marks,
            }
        )
        return code
    manifest = version.manifest
    print(f"{name}@v{version.number}  {version.digest}")
    for field in ("created", "by", "reason", "previous", "owner", "classification", "residency", "stored_in"):
        print(f"  {field}: {manifest.get(field)}")
    print(f"  feedback: {manifest.get('feedback')}")
    print(
        table(
            ["PATH", "SHA256", "SIZE", "STATE"],
            [[f["path"], f["sha256"][:16], f["size"], f["state"]] for f in version.files],
        )
    )
    for mark in marks:
        print(
            f"  marked by erasure {mark['erasure']} ({mark['time']}): "
            f"{len(mark['destroyed'])} file(s) destroyed"
        )
    _print_verdict(history.ok, history.problems)
    return code


def _writer(plan: SitePlan, args: argparse.Namespace) -> dict[str, Any]:
    """What every command that writes a dataset's history passes: the dataset, its folder, the site's
    signing key and the runtime policy that decides the new version."""
    from aifactory.trust.authz import load_authorizer
    from aifactory.trust.issuing.models import ensure_model_key

    return {
        "plan": plan,
        "dataset": args.dataset,
        "dataset_dir": _dataset_dir(plan, args.dataset, args.storage_root),
        "key": ensure_model_key(_runtime_dir(plan)),
        "authorizer": load_authorizer(plan),
    }


def cmd_version(args: argparse.Namespace) -> int:
    from aifactory.data.versions import create_version

    plan = _plan(args.site)
    made = create_version(**_writer(plan, args), reason=args.reason)
    if args.format == "json":
        emit_json({"site": plan.name, "added": made.added, "version": made.version.describe()})
        return 0
    print(
        f"{args.dataset}@v{made.version.number}  {made.version.digest}  "
        f"{len(made.version.files)} files, {made.added} new feedback records; signed"
    )
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from aifactory.data.versions import erase_subject

    plan = _plan(args.site)
    record = erase_subject(**_writer(plan, args), subject=args.subject, authority=args.authority)
    if args.format == "json":
        emit_json({"site": plan.name, "erasure": {k: v for k, v in record.items() if k != "signature"}})
        return 0
    print(_erasure_line(record))
    return 0
