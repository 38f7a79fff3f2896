"""`aifactory provision`: policy gate, then the stack through Pulumi's Automation API.

Order, each step stopping the next on failure:
1. find the `pulumi` CLI (the Automation API drives it; without it: PrerequisiteError, exit 3);
2. the policy gate: `check_site(planned)`; a deny stops here, before any resource is touched;
3. under the site lock: copy the stack project into the state folder, write the plan, read the
   partition key registry, and preview or apply the stack with a local `file://` backend in
   `<state>/provision/backend` and the passphrase secrets provider;
4. after an apply: keep the partition keys and write `<state>/provision/outputs.json`, the file the
   inventory stage reads (schema in docs/provision.md), and record the run in the operator log.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from aifactory.errors import (
    Location,
    PolicyDenied,
    PrerequisiteError,
    Problem,
    ProvisionError,
    SecretError,
    SpecError,
)
from aifactory.plan import PlannedSite, SitePlan
from aifactory.provision.outputs import OUTPUTS_FILE, outputs_document, write_outputs
from aifactory.provision.partitions import read_registry, write_registry
from aifactory.resources import resource_dir
from aifactory.secrets import STORE_FILE, SecretResolver
from aifactory.state import SiteState

log = logging.getLogger(__name__)

PULUMI_BIN_ENV = "AIFACTORY_PULUMI_BIN"
STACK_FILES = ("Pulumi.yaml", "__main__.py", "config.py", "aifactory_stack")


def pulumi_sdk_version() -> str:
    try:
        return metadata.version("pulumi")
    except metadata.PackageNotFoundError:
        return "3"


def find_pulumi_cli() -> Path:
    """The `pulumi` CLI: $AIFACTORY_PULUMI_BIN, then PATH, then ~/.pulumi/bin."""
    explicit = os.environ.get(PULUMI_BIN_ENV)
    candidates = [Path(explicit)] if explicit else []
    on_path = shutil.which("pulumi")
    if on_path:
        candidates.append(Path(on_path))
    candidates.append(Path.home() / ".pulumi" / "bin" / "pulumi")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    version = pulumi_sdk_version()
    raise PrerequisiteError(
        "the pulumi CLI is not installed: `aifactory provision` drives it through Pulumi's Automation API",
        code="pulumi-cli-missing",
        hint=(
            f"install the pulumi CLI v{version} (the version of the pulumi SDK here) on the control host: "
            f"carry pulumi-v{version}-linux-x64.tar.gz into the site (e.g. as an extra file in the "
            f"offline bundle), unpack it with `tar -C /opt -xzf` and put /opt/pulumi on PATH, or "
            f"point {PULUMI_BIN_ENV} at the binary; no network access is needed"
        ),
    )


@dataclass(frozen=True)
class ProvisionOptions:
    preview: bool = False
    bmc: dict[str, Any] = field(default_factory=dict)  # scheme, port, verify_tls, ca_bundle, power_timeout
    boot: dict[str, Any] = field(default_factory=dict)  # source, image
    facts_file: Path | None = None
    assets_file: Path | None = None
    passphrase_file: Path | None = None
    policy_engine: str = "embedded"
    opa_url: str | None = None
    waivers: Path | None = None
    lock_wait: float = 0.0


@dataclass(frozen=True)
class StackRun:
    """What one preview or apply did: change counts by operation, and (after apply) the outputs."""

    changes: dict[str, int]
    outputs: dict[str, Any] | None
    log: str = ""


class StackRunner(Protocol):
    def __call__(
        self,
        *,
        cli: Path,
        workdir: Path,
        site: str,
        backend: Path,
        config: dict[str, Any],
        secrets_passphrase_file: Path,
        preview: bool,
    ) -> StackRun: ...


@dataclass(frozen=True)
class ProvisionResult:
    site: str
    preview: bool
    changes: dict[str, int]
    policy: Any  # aifactory.policy.PolicyReport
    outputs_path: Path | None
    artifacts_dir: Path
    log: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "preview": self.preview,
            "changes": self.changes,
            "policy": {"denied": self.policy.denied, "counts": self.policy.counts()},
            "outputs": str(self.outputs_path) if self.outputs_path else None,
            "artifacts": str(self.artifacts_dir),
        }


def require_allocation_lock(planned: PlannedSite) -> None:
    """Provisioning never allocates addresses: the committed lock must already cover the spec."""
    if planned.lock_changed:
        raise SpecError(
            f"the allocation lock {planned.lock_path} does not cover this spec",
            code="allocation-lock-stale",
            location=Location(file=str(planned.lock_path)),
            hint="run `aifactory plan SITE`, review the new addresses and commit the lock, then provision",
        )


def policy_gate(planned: PlannedSite, options: ProvisionOptions) -> Any:
    from aifactory.policy import check_site

    report = check_site(
        planned, engine=options.policy_engine, opa_url=options.opa_url, waivers=options.waivers
    )
    if report.denied:
        failed = [f for f in report.findings if f.status == "fail"]
        raise PolicyDenied(
            f"policy denies site {planned.plan.name}: {len(failed)} finding(s); nothing was provisioned",
            hint="see `aifactory policy check SITE`; fix the spec or add an approved waiver",
            problems=[Problem(f.rule, f"{f.resource}: {f.msg} [{', '.join(f.controls)}]") for f in failed],
        )
    return report


def secrets_passphrase_file(options: ProvisionOptions) -> Path:
    source = options.passphrase_file or os.environ.get("AIFACTORY_PASSPHRASE_FILE")
    if not source:
        raise SecretError(
            "provisioning needs the site passphrase: it encrypts the Pulumi state's secrets",
            hint="give it in a file with --passphrase-file or AIFACTORY_PASSPHRASE_FILE",
        )
    return Path(source).resolve()


def check_credentials(plan: SitePlan, resolver: SecretResolver) -> None:
    """Every BMC credential must resolve before the stack starts (values are not kept here: the
    stack program resolves them again and holds them only as Pulumi secrets)."""
    missing: list[Problem] = []
    for host in plan.hosts:
        if host.bmc is None:
            continue
        try:
            resolver.resolve(host.bmc.credentials, host=host.name)
        except SecretError as error:
            missing.append(
                Problem("secret-missing", error.message, Location(path=f"hosts.{host.name}.bmc"), error.hint)
            )
    if missing:
        raise SecretError(
            f"{len(missing)} BMC credential(s) cannot be resolved; nothing was provisioned",
            hint="set them with `aifactory secret set SITE secret://...`",
            problems=missing,
        )


def prepare_workdir(state: SiteState) -> Path:
    """A private copy of the stack project in the state folder (the installed one may be read-only,
    and Pulumi writes the stack's settings file beside the project)."""
    source = resource_dir("stacks")
    workdir = state.subdir("provision") / "project"
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in STACK_FILES:
        src, dst = source / name, workdir / name
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    return workdir


def stack_config(
    planned: PlannedSite, state: SiteState, options: ProvisionOptions, plan_file: Path, pkeys: dict[str, int]
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "planFile": str(plan_file),
        "stateDir": str(state.root),
        "pkeys": {t: f"0x{k:04x}" for t, k in sorted(pkeys.items())},
        "bmc": dict(options.bmc),
        "boot": dict(options.boot),
    }
    if options.facts_file:
        config["factsFile"] = str(Path(options.facts_file).resolve())
    if options.assets_file:
        config["assetsFile"] = str(Path(options.assets_file).resolve())
    return config


def provision_site(
    planned: PlannedSite,
    options: ProvisionOptions,
    *,
    state: SiteState | None = None,
    locate_cli: Callable[[], Path] = find_pulumi_cli,
    runner: StackRunner | None = None,
) -> ProvisionResult:
    cli = locate_cli()
    require_allocation_lock(planned)
    report = policy_gate(planned, options)
    plan = planned.plan
    state = state or SiteState.for_site(plan.name)
    passphrase = secrets_passphrase_file(options)
    check_credentials(plan, SecretResolver(state.path(STORE_FILE), str(passphrase)))
    command = "provision --preview" if options.preview else "provision"
    with state.lock(command, wait=options.lock_wait):
        folder = state.subdir("provision")
        plan_file = folder / "plan.json"
        plan_file.write_text(plan.to_json())
        registry = folder / "pkeys.json"
        held = read_registry(registry)
        run = (runner or automation_run)(
            cli=cli,
            workdir=prepare_workdir(state),
            site=plan.name,
            backend=state.subdir("provision/backend"),
            config=stack_config(planned, state, options, plan_file, held),
            secrets_passphrase_file=passphrase,
            preview=options.preview,
        )
        outputs_path = None
        if not options.preview and run.outputs is not None:
            keys = {t: int(k, 16) for t, k in (run.outputs.get("pkeys") or {}).items()}
            write_registry(registry, {**keys, **held})
            outputs_path = write_outputs(folder / OUTPUTS_FILE, outputs_document(plan, run.outputs))
        state.record(
            command=command,
            result="ok",
            spec_digest=plan.spec_digest,
            detail={"changes": run.changes, "plan_digest": plan.digest()},
        )
    return ProvisionResult(
        plan.name, options.preview, run.changes, report, outputs_path, folder / "artifacts", run.log
    )


def cli_root(cli: Path, folder: Path) -> Path:
    """The Automation API runs `<root>/bin/pulumi`; the release tarball unpacks to `pulumi/pulumi`,
    so give it a private `bin/` holding a link to the binary when it is not already in one."""
    if cli.parent.name == "bin":
        return cli.parent.parent
    root = folder / "pulumi-cli"
    link = root / "bin" / "pulumi"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(cli.resolve())
    return root


def _counts(changes: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Change counts by operation (Pulumi's keys are OpType, a str enum, or plain strings)."""
    return dict(changes)


def automation_run(
    *,
    cli: Path,
    workdir: Path,
    site: str,
    backend: Path,
    config: dict[str, Any],
    secrets_passphrase_file: Path,
    preview: bool,
) -> StackRun:
    """Preview or apply the stack with Pulumi's Automation API (needs the pulumi CLI)."""
    from pulumi import automation as auto

    env = {
        "PATH": f"{cli.parent}{os.pathsep}{os.environ.get('PATH', '')}",  # its language plugins
        "PULUMI_CONFIG_PASSPHRASE_FILE": str(secrets_passphrase_file),
        "AIFACTORY_PASSPHRASE_FILE": str(secrets_passphrase_file),  # the program opens the secret store
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DIY_BACKEND_NO_LEGACY_WARNING": "true",
        "PULUMI_HOME": str(backend.parent / "pulumi-home"),
    }
    lines: list[str] = []
    try:
        options = auto.LocalWorkspaceOptions(
            work_dir=str(workdir),
            pulumi_home=env["PULUMI_HOME"],
            env_vars=env,
            secrets_provider="passphrase",
            pulumi_command=auto.PulumiCommand(root=str(cli_root(cli, backend.parent))),
            project_settings=auto.ProjectSettings(
                name="aifactory",
                runtime=auto.ProjectRuntimeInfo("python", {"virtualenv": sys.prefix}),
                backend=auto.ProjectBackend(url=f"file://{backend}"),
            ),
        )
        stack = auto.create_or_select_stack(stack_name=site, work_dir=str(workdir), opts=options)
        values = {
            f"aifactory:{k}": auto.ConfigValue(json.dumps(v) if isinstance(v, dict) else str(v))
            for k, v in config.items()
        }
        stack.set_all_config(values, path=False)
        if preview:
            result = stack.preview(on_output=lines.append)
            return StackRun(_counts(result.change_summary.items()), None, "\n".join(lines))
        up = stack.up(on_output=lines.append)
        outputs = {k: v.value for k, v in up.outputs.items()}
        return StackRun(_counts((up.summary.resource_changes or {}).items()), outputs, "\n".join(lines))
    except FileNotFoundError as exc:  # the Automation API's bare error when the CLI vanishes
        raise PrerequisiteError(
            f"cannot run the pulumi CLI: {exc}",
            code="pulumi-cli-missing",
            hint=f"install it or set {PULUMI_BIN_ENV}",
        ) from None
    except auto.errors.CommandError as exc:
        raise ProvisionError(
            f"pulumi {'preview' if preview else 'up'} failed for site {site}",
            code="provision-stack-failed",
            hint="the messages above name the host or artifact; fix it and run again (completed steps "
            "are kept in the state)",
            problems=[Problem("pulumi", line) for line in str(exc).splitlines()[-20:] if line.strip()],
        ) from None
