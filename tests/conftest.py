"""Shared fixtures. The `lab` fixture: one running lab for every test of the session that needs it.

Use it in a test marked `@pytest.mark.lab` (or a module with `pytestmark = pytest.mark.lab`):

    def test_something(lab):
        result = lab.exec(["hostname"], host=lab.hosts[1])          # runs on that lab host
        result = lab.exec(["ansible", "all", "-m", "ansible.builtin.ping"])  # on the control host
        lab.sh("echo hi > /opt/x", host="...")                       # `sh -c SCRIPT`

`lab` is a `LabSession` (below):
- `site`: the lab's site name, unique to this test session (`lab<pid>`), so sessions of several
  people on one machine never collide. Never hard-code host names: use `lab.plan`,
  `lab.control_host`, `lab.hosts` (all host names in plan order), `lab.plan.host(name)`.
- `spec`: a copy of inventory/lab/site.yaml under that site name (with its allocation lock beside
  it); `planned` (`PlannedSite`), `plan` (`SitePlan`), `status` (`LabStatus` from `lab up`, see
  `status.as_dict()` and docs/lab.md: inventory, ssh_config, known_hosts, ansible_cfg, private_key,
  per-host netns/addresses/sshd, BMC url/state).
- `exec(argv, host=None, check=True, timeout=120, input_text=None, env=None)`: `lab_exec` with
  output captured; the control host by default; raises AssertionError with the output when
  `check` and the command fails.
- `sh(script, host=None, **same)`: `exec(["sh", "-c", script])`.
- `env()`: the variables `lab exec` sets (ANSIBLE_CONFIG, ANSIBLE_INVENTORY, AIFACTORY_LAB_*...).
- `bmc_credential(host)`: the `BmcCredential` (username, password) of a host's BMC.
- `state_home`: the session's AIFACTORY_STATE_HOME. While the fixture is alive the environment
  variable AIFACTORY_STATE_HOME points there (restored at the end); a test that monkeypatches it
  must not call lab functions while it is patched.

Labs left by crashed test sessions (site `lab|lk|lf<pid>` whose pid is gone) are removed first.

The lab is shared: a test may write files on hosts (use unique names) and start services, but must
not stop sshd, change addresses or take the lab down. A test that needs its own lab copies the spec
with `copy_lab_spec(directory, site_name)` and brings up a lab of another site name: labs of
different names run side by side, with the same addresses.

A test that needs a running site (the session bundle deployed on every host: runtime, inference
server, munge and Slurm) uses `deployed_lab` (below) instead of deploying a lab of its own: one bundle
built and one deploy for the whole session.

Lab tests are skipped, with the reason, when not root, without network/mount namespaces, or when
sshd, iproute2 or sushy-tools are missing.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

# After a whole-suite run, every id of tests/expected_test_ids.txt must have been collected and not
# newly skipped (tests/suite_ids.py); quick modules run first, lab modules last (tests/suite_order.py); on
# several workers, the session lab's modules are one unit of work on one of them (tests/suite_workers.py).
pytest_plugins = ["acceptance", "suite_ids", "suite_order", "suite_workers"]

REPO = Path(__file__).resolve().parent.parent
LAB_SPEC = REPO / "inventory" / "lab" / "site.yaml"


def copy_lab_spec(directory: Path, site_name: str) -> Path:
    """The lab site spec under another site name, written to `directory/site.yaml`."""
    text, count = re.subn(r"(?m)^site:\n  name: lab$", f"site:\n  name: {site_name}", LAB_SPEC.read_text())
    assert count == 1, "inventory/lab/site.yaml no longer starts its site block with `name: lab`"
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "site.yaml"
    target.write_text(text)
    return target


def lab_unavailable() -> str | None:
    """Why lab tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the lab needs root (network and mount namespaces)"
    from aifactory.errors import PrerequisiteError
    from aifactory.lab.bmc import sushy_emulator
    from aifactory.lab.system import check_prerequisites

    try:
        check_prerequisites()
        sushy_emulator()
    except PrerequisiteError as exc:
        return f"{exc.message} ({exc.hint})" if exc.hint else exc.message
    probe = subprocess.run(["unshare", "--net", "--mount", "--uts", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create namespaces here: {probe.stderr.strip()}"
    return None


@dataclass
class LabSession:
    site: str
    spec: Path
    state_home: Path
    planned: object  # aifactory.plan.PlannedSite
    status: object  # aifactory.lab.LabStatus

    @property
    def plan(self):  # noqa: ANN201 - SitePlan
        return self.planned.plan  # type: ignore[attr-defined]

    @property
    def control_host(self) -> str:
        return str(self.plan.control_host)

    @property
    def hosts(self) -> list[str]:
        return [h.name for h in self.plan.hosts]

    def exec(
        self,
        argv: Sequence[str],
        host: str | None = None,
        *,
        check: bool = True,
        timeout: float = 120,
        input_text: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        from aifactory.lab import lab_exec

        result = lab_exec(self.site, list(argv), host=host, timeout=timeout, input_text=input_text, env=env)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{list(argv)} on {host or self.control_host} exited {result.returncode}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
            )
        return result

    def sh(self, script: str, host: str | None = None, **options: object) -> subprocess.CompletedProcess[str]:
        return self.exec(["sh", "-c", script], host, **options)  # type: ignore[arg-type]

    def env(self) -> dict[str, str]:
        from aifactory.lab import lab_env, lab_status

        return lab_env(lab_status(self.site))

    def bmc_credential(self, host: str):  # noqa: ANN201 - BmcCredential
        from aifactory.lab import lab_bmc_credential

        bmc = self.plan.host(host).bmc
        assert bmc is not None, f"{host} has no BMC"
        return lab_bmc_credential(self.site, bmc.credentials)


TEST_SITE = re.compile(r"^(lab|lk|lf|fd)(\d+)$")  # site names test sessions give their labs: <kind><pid>


def reap_stale_test_labs() -> list[str]:
    """Remove labs that crashed test sessions left (their pid is gone); returns their site names."""
    from aifactory.lab import lab_down
    from aifactory.lab.names import PREFIX
    from aifactory.lab.system import alive, list_netns

    stale = set()
    for namespace in list_netns(PREFIX):
        site = namespace[len(PREFIX) :].split(".", 1)[0]
        match = TEST_SITE.match(site)
        if match and not alive(int(match.group(2))):
            stale.add(site)
    for site in sorted(stale):
        lab_down(site, force=True)
    return sorted(stale)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabSession]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(f"lab tests need the local lab: {reason}")
    from aifactory.lab import lab_down, lab_up
    from aifactory.plan import plan_site

    site = f"lab{os.getpid()}"
    base = tmp_path_factory.mktemp("lab")
    state_home = base / "state"
    previous = os.environ.get("AIFACTORY_STATE_HOME")
    os.environ["AIFACTORY_STATE_HOME"] = str(state_home)
    try:
        reap_stale_test_labs()
        spec = copy_lab_spec(base / "spec", site)
        planned = plan_site(spec)
        status = lab_up(planned)
        try:
            yield LabSession(site, spec, state_home, planned, status)
        finally:
            lab_down(site)
    finally:
        if previous is None:
            os.environ.pop("AIFACTORY_STATE_HOME", None)
        else:
            os.environ["AIFACTORY_STATE_HOME"] = previous


# --- the deployed lab: one bundle built, imported and deployed for the whole session ------------------


@dataclass(frozen=True)
class ImportedLabBundle:
    version: str
    digest: str
    root: Path
    allowed_signers: Path
    identity: str


def build_and_import(
    spec: Path, site: str, folder: Path, *, runtime_trees: bool = False
) -> ImportedLabBundle:
    """Build a bundle for `spec` (with its prebuilt runtime trees when asked), sign it with a fresh key
    and import it for `site`."""
    from aifactory import signing
    from aifactory.bundle import BuildOptions, build_bundle, import_bundle
    from aifactory.plan import plan_site
    from aifactory.state import SiteState

    identity = f"release@{site}.example"
    keys = signing.generate_keypair(folder / "key", identity=identity, namespaces="aifactory-bundle")
    output = folder / f"{site}.tar"
    build_bundle(
        plan_site(spec, write_lock=False),
        output=output,
        options=BuildOptions(key=keys.private, apt_packages=None, runtime_trees=runtime_trees),
    )
    imported = import_bundle(output, trust=keys.allowed_signers, site_state=SiteState.for_site(site))
    return ImportedLabBundle(
        imported.version, imported.digest, Path(imported.root), keys.allowed_signers, identity
    )


@pytest.fixture(scope="session")
def lab_bundle_import(
    lab: LabSession, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ImportedLabBundle]:
    """A real bundle for the session lab's spec (torch wheelhouse included, no apt repository: the lab's
    hosts share the machine's /usr, where setup installed the role packages), signed with a key made
    for the session and imported into the lab's state folder, as an admin would on the control host.
    Built once per session (about a minute with a warm wheel cache)."""
    folder = tmp_path_factory.mktemp("deploy-bundle")
    previous = os.environ.get("AIFACTORY_BUNDLES_HOME")
    os.environ["AIFACTORY_BUNDLES_HOME"] = str(folder / "bundles")
    try:
        yield build_and_import(lab.spec, lab.site, folder)
    finally:
        if previous is None:
            os.environ.pop("AIFACTORY_BUNDLES_HOME", None)
        else:
            os.environ["AIFACTORY_BUNDLES_HOME"] = previous


@dataclass(frozen=True)
class DeployedLab:
    """The session lab with the session bundle deployed on every host (`deployed_lab`)."""

    lab: LabSession
    bundle: ImportedLabBundle

    def ssh(
        self, host: str, script: str, *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """`script` on `host` over SSH from the control host (host keys checked), as an admin runs it."""
        from waiting import scaled

        config = self.lab.status.paths["ssh_config"]  # type: ignore[attr-defined]
        return self.lab.exec(["ssh", "-F", config, host, script], check=check, timeout=scaled(timeout))

    def deploy(self, options: object | None = None):  # noqa: ANN201 - DeployResult
        """`aifactory deploy` of the session bundle (DeployOptions; default: a plain run), over the
        lab's Connection as the CLI reaches it."""
        from aifactory.deploy import DeployOptions, deploy_site
        from aifactory.pipeline.connection import site_connection

        chosen = options if options is not None else DeployOptions()
        return deploy_site(self.lab.planned, connection=site_connection(self.lab.site), options=chosen)  # type: ignore[arg-type]

    def converge(self) -> None:
        """Deploy and require every host to finish: a no-op probe on hosts that match the bundle, a repair
        of any that drifted."""
        result = self.deploy()
        assert result.exit_code == 0 and not result.failed_hosts, (
            f"the session lab did not deploy: {result.failed_hosts}, see {result.event_log}"
        )

    def admit(self) -> None:
        """As an operator admits a site's hosts: deploy leaves every compute node drained in Slurm until
        a health run passes (the slurm role's admission, docs/health.md); `aifactory health` checks every
        host and resumes them. Returns once Slurm has every compute node idle."""
        import json
        import sys

        from waiting import scaled, wait_for

        command = [
            sys.executable,
            "-m",
            "aifactory.cli.main",
            "health",
            str(self.lab.spec),
            "--format",
            "json",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=scaled(300), check=False)
        assert done.returncode == 0, (
            f"the session lab fails its health run:\n{done.stdout[-4000:]}\n{done.stderr}"
        )
        nodes = {h.name for h in self.lab.plan.hosts if h.role in ("cpu", "gpu")}
        assert {a["host"] for a in json.loads(done.stdout)["slurm"]} == nodes

        def idle() -> bool:
            out = self.lab.exec(["sinfo", "--Node", "--noheader", "--format=%N %T"]).stdout
            return dict(line.split() for line in out.splitlines()) == dict.fromkeys(nodes, "idle")

        wait_for(idle, what="every Slurm node of the session lab idle", timeout=90)

    def drifted(self, extra_vars: dict[str, object] | None = None) -> dict[str, str]:
        """Read-only (`check_converged`, as `aifactory up` verifies a deploy): each host that no longer
        matches the session's deploy (a file changed, a service or daemon not running), and why. A test
        that broke a host and restored it proves the restore with `assert deployed_lab.drifted() == {}`.
        `extra_vars`: as a deploy given them would probe."""
        from aifactory.deploy import check_converged
        from aifactory.pipeline.connection import site_connection

        found = check_converged(
            self.lab.planned,  # type: ignore[arg-type]
            connection=site_connection(self.lab.site),
            extra_vars=extra_vars,
        )
        return {host: why for host, why in found.items() if why is not None}


@pytest.fixture(scope="session")
def deployed_lab(lab: LabSession, lab_bundle_import: ImportedLabBundle) -> Iterator[DeployedLab]:
    """The session's `lab` with the session bundle (`lab_bundle_import`) deployed on every host: a running
    site (runtime, inference server, munge and Slurm) for every test that needs one, instead of a lab
    and a deploy of its own. Use it in a module marked `lab` (tests/conftest.py's module docstring):

        pytestmark = [pytest.mark.lab, pytest.mark.slow]

        def test_something(deployed_lab):
            lab = deployed_lab.lab                                   # the LabSession: hosts, exec, sh...
            out = deployed_lab.ssh(lab.hosts[1], "cat /etc/aifactory/runtime.yaml").stdout
            result = deployed_lab.deploy(DeployOptions(tags=("runtime",)))  # a DeployResult
            deployed_lab.bundle.version                              # what /opt/aifactory/current is

    Modules that use it run after every other lab module (tests/suite_order.py), so the deploy tests
    (tests/deploy/test_deploy_lab.py) still meet a fresh lab and do the session's first deploy; this
    fixture's own deploy then finds every host converged and runs no playbook. Run alone, it is the
    first deploy (a few minutes).

    After the deploy the fixture admits the compute hosts with `aifactory health` (`admit()`): deploy
    leaves them drained in Slurm until a health run passes; every Slurm node is idle when tests start.

    A test that breaks a host (stops a service, kills a daemon, cuts SSH, edits a managed file)
    restores it before it ends; when the session ends, this fixture fails unless every host still
    matches the deploy (`drifted()` is empty), naming each host and why."""
    deployed = DeployedLab(lab, lab_bundle_import)
    deployed.converge()
    deployed.admit()
    yield deployed
    left = deployed.drifted()
    assert left == {}, f"a test left lab hosts unlike the session's deploy (restore what you break): {left}"
