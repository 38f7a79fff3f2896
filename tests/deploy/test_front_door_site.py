"""The front door on a deployed site, without the lab: what deploy gives the roles and the clients.

- the plan's front_door section reaches the inventory as `aifactory_front_door` (strings `!unsafe`)
  only when the plan has one: otherwise not a byte of the inventory changes;
- real ansible-playbook (local connection) renders, from that inventory, the front_door role's
  HAProxy configuration (which Debian's haproxy accepts) on the front door host, and the runtime
  role's runtime.yaml with `serve.front_door` on the hosts the front door sends to and on no other
  (read back by aifactory-serve's own settings reader);
- the front_door role's TLS tasks (run as root into a scratch folder) install the site CA and the front
  door's identity with tight modes, change nothing the second time and nothing in check mode;
- deploy issues the front door's service identity from the site CA once, renews it near its end,
  and counts it among the files whose change re-runs converged hosts;
- `aifactory token cert --server` for a host behind the front door names the front door's address
  and host name too; `aifactory token issue` and `cert --tenant` tell clients where the front door is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_env import ansible_env
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from aifactory.frontdoor.certs import FRONT_DOOR_CERTS, issue_front_door_certificates, serving_names
from aifactory.inventory import build_inventory, write_inventory
from aifactory.inventory.render import load_inventory_yaml, render_files
from aifactory.plan import plan_site
from aifactory.plan.model import FrontDoorBackendPlan, SitePlan
from aifactory.trust.certs import FRONT_DOOR_SERVICE, SiteCA, service_uri
from aifactory.trust.tokens import TrustFiles

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "playbooks" / "roles"
LAB_SPEC = REPO / "inventory" / "lab" / "site.yaml"
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
HAPROXY = "/usr/sbin/haproxy"  # Debian 12's haproxy (scripts/setup.sh installs it)
BUNDLE = {"version": "20261201.1", "digest": "sha256:" + "a" * 64}


def _spec(folder: Path, front_door: dict[str, Any] | None) -> Path:
    """The lab's spec (a control host, two cpu hosts serving the model), with a front door or not."""
    data = yaml.safe_load(LAB_SPEC.read_text())
    if front_door is not None:
        data["front_door"] = front_door
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def fronted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SitePlan]:
    spec = _spec(tmp_path_factory.mktemp("fronted"), {})
    return spec, plan_site(spec, write_lock=False).plan


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SitePlan]:
    spec = _spec(tmp_path_factory.mktemp("plain"), None)
    return spec, plan_site(spec, write_lock=False).plan


def _serving(plan: SitePlan) -> list[str]:
    return [h.name for h in plan.hosts if h.role in ("cpu", "gpu")]


# ------------------------------------------------------------------------------------ inventory


def test_a_site_without_a_front_door_keeps_its_inventory_bytes(
    fronted: tuple[Path, SitePlan], plain: tuple[Path, SitePlan]
) -> None:
    """The same plan with and without the section: hosts byte for byte the same, group_vars/all.yml
    differs by the `aifactory_front_door` block and the plan's and spec's digests alone, and host vars
    by the backends' list on the front door's host and the flag on each backend alone."""
    with_door, without = fronted[1], plain[1]
    assert with_door.front_door is not None and without.front_door is None
    # The spec's digest differs too (the spec has one more section); the rest of the plan does not.
    assert replace(with_door, front_door=None, spec_digest=without.spec_digest).to_json() == without.to_json()
    files_with = render_files(build_inventory(with_door, bundle=BUNDLE))
    files_without = render_files(build_inventory(without, bundle=BUNDLE))
    assert not any("front_door" in text for text in files_without.values())
    assert files_with.keys() == files_without.keys()
    backends_block = re.compile(r"^aifactory_front_door_backends:\n(?:- .*\n|  .*\n)+", re.M)
    flag = re.compile(r"^aifactory_behind_front_door: true\n", re.M)
    for name in files_without:
        if name != "group_vars/all.yml":
            stripped_host = flag.sub("", backends_block.sub("", files_with[name]))
            assert stripped_host == files_without[name], name
    block = re.compile(r"^aifactory_front_door:\n(?:  .*\n)+", re.M)
    group_vars = files_with["group_vars/all.yml"]
    assert len(block.findall(group_vars)) == 1
    stripped = (
        block.sub("", group_vars)
        .replace(with_door.digest(), without.digest())
        .replace(with_door.spec_digest, without.spec_digest)
    )
    assert stripped == files_without["group_vars/all.yml"]


def test_the_front_door_reaches_the_inventory_as_data_never_templated(fronted: tuple[Path, SitePlan]) -> None:
    plan = fronted[1]
    assert plan.front_door is not None and plan.control_host is not None
    values = load_inventory_yaml(render_files(build_inventory(plan))["group_vars/all.yml"])
    control = plan.host(plan.control_host)
    assert values["aifactory_front_door"] == {
        "host": control.name,
        "address": control.management_address,
        "port": 8443,
        "backend_port": 8601,
    }
    # The backends, as long as the serving hosts: on the front door's host alone, and a flag on each.
    host_vars = build_inventory(plan).host_vars
    assert host_vars[control.name]["aifactory_front_door_backends"] == [
        {"name": n, "address": plan.host(n).management_address} for n in _serving(plan)
    ]
    assert [h for h, v in host_vars.items() if "aifactory_front_door_backends" in v] == [control.name]
    assert sorted(h for h, v in host_vars.items() if v.get("aifactory_behind_front_door") is True) == sorted(
        _serving(plan)
    )
    # A plan built around the spec's grammar: its strings still go out as `!unsafe`, read back as they were.
    hostile = "{{ lookup('pipe', 'id') }}"
    serving = _serving(plan)[0]
    door = replace(plan.front_door, backends=(FrontDoorBackendPlan(serving, hostile),))
    text = render_files(build_inventory(replace(plan, front_door=door)))[f"host_vars/{control.name}.yml"]
    assert "address: !unsafe '{{ lookup(''pipe'', ''id'') }}'" in text
    assert load_inventory_yaml(text)["aifactory_front_door_backends"] == [
        {"name": serving, "address": hostile}
    ]


# ------------------------------------------------------------------------- the roles' templates

RENDER = """
- name: The front door host renders HAProxy's configuration as the front_door role does
  hosts: {front_door_host}
  gather_facts: false
  vars_files:
    - {roles}/front_door/defaults/main.yml
    - {out}/overrides.yml
  tasks:
    - name: Preflight
      ansible.builtin.import_tasks: {roles}/front_door/tasks/preflight.yml
    - name: HAProxy's configuration
      ansible.builtin.template:
        src: {roles}/front_door/templates/haproxy.cfg.j2
        dest: "{out}/haproxy.cfg"
        mode: "0644"

- name: Every host renders runtime.yaml as the runtime role does
  hosts: all
  gather_facts: false
  vars_files:
    - {roles}/runtime/defaults/main.yml
    - {roles}/runtime/vars/main.yml
  tasks:
    - name: Preflight
      ansible.builtin.import_tasks: {roles}/runtime/tasks/preflight.yml
    - name: Runtime configuration
      ansible.builtin.template:
        src: {roles}/runtime/templates/runtime.yaml.j2
        dest: "{out}/{{{{ inventory_hostname }}}}.runtime.yaml"
        mode: "0644"
"""


def _ansible_env(folder: Path) -> dict[str, str]:
    return ansible_env(folder)


def _render(plan: SitePlan, folder: Path) -> Path:
    """Real ansible-playbook over the plan's real inventory, every host the local machine."""
    done, out = _run_render(plan, folder)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    return out


def _run_render(
    plan: SitePlan, folder: Path, extra: dict[str, Any] | None = None
) -> tuple[subprocess.CompletedProcess[str], Path]:
    inventory, out = folder / "inventory", folder / "out"
    out.mkdir(parents=True)
    trust = {"aifactory_runtime_trust_dir": str(folder / "trust")}  # as the site's inventory sets it
    write_inventory(build_inventory(plan, bundle=BUNDLE, site_vars=trust), inventory)
    playbook = folder / "render.yml"
    front_door_host = plan.front_door.host if plan.front_door else "none"
    playbook.write_text(RENDER.format(front_door_host=front_door_host, roles=ROLES, out=out))
    # Where the host's files would go, in the scratch folder (after the defaults: vars_files win over vars).
    overrides = {"front_door_tls_dir": str(out / "tls"), "front_door_admin_socket": str(out / "admin.sock")}
    (out / "overrides.yml").write_text(yaml.safe_dump(overrides))
    argv = [ANSIBLE_PLAYBOOK, "-i", str(inventory), "-c", "local", str(playbook)]
    argv += ["-e", json.dumps({"ansible_python_interpreter": sys.executable, **(extra or {})})]
    done = subprocess.run(
        argv, capture_output=True, text=True, env=_ansible_env(folder), timeout=300, check=False
    )
    return done, out


@pytest.mark.parametrize("name", ["runtime_id", "runtime_serving_digest"])
@pytest.mark.parametrize("value", ["sha256:" + "a" * 63, "sha256:" + "a" * 64 + "\n", "$(touch /tmp/x)"])
def test_the_runtime_preflight_refuses_a_digest_that_is_not_one(
    plain: tuple[Path, SitePlan], tmp_path: Path, name: str, value: str
) -> None:
    """The runtime_id and the serving digest are compared with install records and written to a file:
    a sha256 digest or nothing, never other text."""
    done, out = _run_render(plain[1], tmp_path, {name: value})
    assert done.returncode != 0 and "must be a plain folder name" in done.stdout, done.stdout[-3000:]
    assert not list(out.glob("*.runtime.yaml"))


def _front_door_setting(config: Path) -> dict[str, Any]:
    """What aifactory-serve makes of the file's serve.front_door (its own reader)."""
    from aifactory.runtime.serve_cli import _front_door, _parser

    serve = yaml.safe_load(config.read_text())["serve"]
    return _front_door(_parser().parse_args([]), serve.get("front_door"))


def test_the_roles_render_haproxy_and_the_nodes_front_door_port_from_the_inventory(
    fronted: tuple[Path, SitePlan], tmp_path: Path
) -> None:
    plan = fronted[1]
    door = plan.front_door
    assert door is not None
    out = _render(plan, tmp_path)
    config = (out / "haproxy.cfg").read_text()
    assert f"bind {door.address}:8443\n" in config
    assert f"source {door.address}\n" in config
    servers = re.findall(r"^    server (\S+) (\S+) verifyhost (\S+) check-sni (\S+)$", config, re.M)
    assert servers == [(b.name, f"{b.address}:8601", b.name, b.name) for b in door.backends]
    assert [b.name for b in door.backends] == _serving(plan)
    # Debian's HAProxy accepts it, given the CA and identity files it names.
    (out / "tls").mkdir()
    _identity_files(tmp_path / "trust", plan.name, out / "tls")
    checked = subprocess.run([HAPROXY, "-c", "-f", str(out / "haproxy.cfg")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The nodes behind it open its port, for its address only; the control host does not.
    for host in plan.hosts:
        setting = _front_door_setting(out / f"{host.name}.runtime.yaml")
        if host.name in _serving(plan):
            assert setting == {"front_door_port": 8601, "front_door_addresses": frozenset({door.address})}
        else:
            assert setting == {}, host.name


def test_without_a_front_door_no_node_opens_its_port(plain: tuple[Path, SitePlan], tmp_path: Path) -> None:
    out = _render(plain[1], tmp_path)
    assert not (out / "haproxy.cfg").exists()  # the front door play had no host
    for host in plain[1].hosts:
        text = (out / f"{host.name}.runtime.yaml").read_text()
        assert "front_door" not in text and _front_door_setting(out / f"{host.name}.runtime.yaml") == {}


def _identity_files(trust_root: Path, site: str, tls: Path) -> None:
    """The front door's CA and identity from a site CA, where the role's defaults put them."""
    issued = issue_front_door_certificates(TrustFiles(trust_root), site=site)
    shutil.copy(issued.folder / "ca.pem", tls / "ca.pem")
    (tls / "front-door.pem").write_bytes(
        (issued.folder / "front-door.pem").read_bytes() + (issued.folder / "front-door.key").read_bytes()
    )


# ------------------------------------------------------------------ the role's TLS tasks, as root

TLS_PLAY = """
- name: The front_door role's TLS tasks on a scratch folder
  hosts: localhost
  gather_facts: false
  vars_files:
    - {roles}/front_door/defaults/main.yml
    - {folder}/overrides.yml
  tasks:
    - name: TLS
      ansible.builtin.import_tasks: {roles}/front_door/tasks/tls.yml
  handlers:
    # Stands in for the role's HAProxy restart (no HAProxy is run here): records that it was notified.
    - name: Record the restart
      ansible.builtin.lineinfile:
        path: {target}/restarts
        line: restart
        create: true
        mode: "0644"
      listen: [front door config changed]
"""


def _tls_play(folder: Path, source: Path, *, check: bool = False) -> subprocess.CompletedProcess[str]:
    playbook = folder / "tls.yml"
    playbook.write_text(TLS_PLAY.format(roles=ROLES, folder=folder, target=folder / "host"))
    overrides = {"front_door_tls_source_dir": str(source), "front_door_tls_dir": str(folder / "host" / "tls")}
    (folder / "overrides.yml").write_text(yaml.safe_dump(overrides))
    argv = [ANSIBLE_PLAYBOOK, "-i", "localhost,", "-c", "local", str(playbook)]
    argv += ["-e", json.dumps({"ansible_python_interpreter": sys.executable})]
    argv += ["--check"] if check else []
    return subprocess.run(
        argv, capture_output=True, text=True, env=_ansible_env(folder), timeout=300, check=False
    )


def _changed(output: str) -> int:
    return int(re.search(r"^localhost\s+: ok=\d+\s+changed=(\d+)", output, re.M).group(1))  # type: ignore[union-attr]


@pytest.mark.skipif(os.geteuid() != 0, reason="the role installs root-owned files")
def test_the_front_door_gets_the_ca_and_its_identity_with_tight_modes_once(tmp_path: Path) -> None:
    issued = issue_front_door_certificates(TrustFiles(tmp_path / "trust"), site="lab")
    host = tmp_path / "host"
    host.mkdir()
    dry = _tls_play(tmp_path, issued.folder, check=True)
    assert dry.returncode == 0, dry.stdout[-3000:]
    # Predicted (two tasks: the folder and the CA in one, the identity in its own no_log task; and the
    # restart they notify), nothing written.
    assert _changed(dry.stdout) == 3 and list(host.iterdir()) == []
    first = _tls_play(tmp_path, issued.folder)
    assert first.returncode == 0, first.stdout[-3000:]
    assert _changed(first.stdout) == 3  # the two tasks and the restart's stand-in
    tls = host / "tls"
    modes = {p.name: (p.stat().st_mode & 0o7777, p.stat().st_uid) for p in (tls, *tls.iterdir())}
    assert modes == {"tls": (0o700, 0), "ca.pem": (0o644, 0), "front-door.pem": (0o600, 0)}
    identity = (tls / "front-door.pem").read_bytes()
    assert identity.startswith((issued.folder / "front-door.pem").read_bytes())
    assert identity.endswith((issued.folder / "front-door.key").read_bytes())
    assert b"PRIVATE KEY" not in (first.stdout + first.stderr).encode()
    again = _tls_play(tmp_path, issued.folder)
    assert again.returncode == 0 and _changed(again.stdout) == 0, again.stdout[-3000:]
    assert (host / "restarts").read_text() == "restart\n"  # notified once, by the run that changed


# --------------------------------------------------------------------------- the certificates


def _uris(path: Path) -> list[str]:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)


def test_the_front_door_identity_is_issued_once_and_renewed_near_its_end(tmp_path: Path) -> None:
    trust = TrustFiles(tmp_path / "trust")
    now = datetime.now(UTC)
    first = issue_front_door_certificates(trust, site="lab", now=now)
    assert first.issued and first.folder == trust.root / FRONT_DOOR_CERTS
    cert, key = first.folder / "front-door.pem", first.folder / "front-door.key"
    assert _uris(cert) == [service_uri("lab", FRONT_DOOR_SERVICE)]
    usage = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    )
    assert list(usage.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert key.stat().st_mode & 0o777 == 0o600
    assert (first.folder / "ca.pem").read_bytes() == SiteCA.of(trust).certificate.read_bytes()
    before = cert.read_bytes()
    assert not issue_front_door_certificates(trust, site="lab", now=now + timedelta(days=300)).issued
    assert cert.read_bytes() == before
    assert issue_front_door_certificates(trust, site="lab", now=now + timedelta(days=310)).issued
    assert cert.read_bytes() != before


def test_deploy_issues_the_identity_for_a_site_with_a_front_door_and_counts_it_as_an_input(
    fronted: tuple[Path, SitePlan],
    plain: tuple[Path, SitePlan],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aifactory.deploy.converged import controller_inputs
    from aifactory.deploy.runner import ensure_site_trust
    from aifactory.state import SiteState

    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "state"))
    for name, plan in (("plainsite", plain[1]), ("doorsite", fronted[1])):
        state = SiteState.for_site(name)
        ensure_site_trust(state, plan)
        folder = state.path("runtime", FRONT_DOOR_CERTS)
        assert folder.is_dir() == (plan.front_door is not None), name
        inventory = tmp_path / name / "inventory"
        trust = {"aifactory_runtime_trust_dir": str(state.path("runtime"))}
        write_inventory(build_inventory(plan, site_vars=trust), inventory)
        inputs = controller_inputs(inventory, REPO / "playbooks")
        names = ("ca.pem", "front-door.key", "front-door.pem") if plan.front_door else ()
        assert {p for p in inputs if p.parent == folder} == {folder / n for n in names}


def _cli(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"AIFACTORY_STATE_HOME": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "aifactory.cli.main", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _san(path: Path) -> tuple[list[str], list[str]]:
    names = x509.load_pem_x509_certificate(path.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    return names.value.get_values_for_type(x509.DNSName), [
        str(a) for a in names.value.get_values_for_type(x509.IPAddress)
    ]


def test_a_server_certificate_behind_the_front_door_also_names_it(
    fronted: tuple[Path, SitePlan], plain: tuple[Path, SitePlan], tmp_path: Path
) -> None:
    spec, plan = fronted
    door = plan.front_door
    assert door is not None and plan.control_host is not None
    node = plan.host(_serving(plan)[0])
    control = plan.host(plan.control_host)
    for folder, site_spec, host, expected in (
        ("behind", spec, node, ([node.name, door.host], [node.management_address, door.address])),
        ("not-behind", spec, control, ([control.name], [control.management_address])),
        ("no-door", plain[0], node, ([node.name], [node.management_address])),
    ):
        out = tmp_path / folder
        done = _cli(
            tmp_path,
            "token",
            "cert",
            str(site_spec),
            "--server",
            host.name,
            "--address",
            host.management_address,
            "-o",
            str(out),
        )
        assert done.returncode == 0, done.stderr
        assert _san(out / f"{host.name}.pem") == expected, folder
        assert ("also names the front door" in done.stdout) == (folder == "behind"), done.stdout
    assert serving_names(door, node.name).addresses == (door.address,)


def test_clients_are_told_where_the_front_door_is(
    fronted: tuple[Path, SitePlan], plain: tuple[Path, SitePlan], tmp_path: Path
) -> None:
    spec, plan = fronted
    door = plan.front_door
    assert door is not None
    url = f"https://{door.address}:{door.port}"
    issued = _cli(tmp_path, "token", "issue", str(spec), "--tenant", "health", "--format", "json")
    assert issued.returncode == 0, issued.stderr
    assert json.loads(issued.stdout)["front_door"] == {
        "url": url,
        "host": door.host,
        "address": door.address,
        "port": 8443,
    }
    text = _cli(tmp_path, "token", "issue", str(spec), "--tenant", "health")
    assert f"through the front door at {url} ({door.host})" in text.stderr
    cert = _cli(tmp_path, "token", "cert", str(spec), "--tenant", "health", "-o", str(tmp_path / "c"))
    assert cert.returncode == 0 and f"through the front door at {url}" in cert.stdout, cert.stderr
    # A site without one: the output is as before.
    bare = _cli(tmp_path, "token", "issue", str(plain[0]), "--tenant", "health", "--format", "json")
    assert bare.returncode == 0 and "front_door" not in json.loads(bare.stdout), bare.stdout
    bare_text = _cli(tmp_path, "token", "issue", str(plain[0]), "--tenant", "health")
    assert "front door" not in bare_text.stderr
