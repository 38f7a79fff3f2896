"""A corpus of broken specs: one edit of a small valid site each, at least one per check of the
contract's "What validation checks". Every case asserts the field path, the line and a phrase of
the message; a share also runs through the installed `aifactory` command as a separate process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from base_spec import BASE


@dataclass(frozen=True)
class Broken:
    id: str
    edits: tuple[tuple[str, str], ...]  # (old, new) text replacements on BASE, each applied once
    path: str  # the field path the error must name
    phrase: str  # a phrase of its message or hint
    line_of: str  # text on the line the error must point at (its first occurrence in the broken spec)

    def text(self) -> str:
        text = BASE
        for old, new in self.edits:
            assert old in text, f"{self.id}: {old!r} is not in the base spec"
            text = text.replace(old, new, 1)
        return text

    def line(self) -> int:
        for number, line in enumerate(self.text().splitlines(), start=1):
            if self.line_of in line:
                return number
        raise AssertionError(f"{self.id}: {self.line_of!r} is not in the broken spec")


def one(id: str, old: str, new: str, path: str, phrase: str, line_of: str | None = None) -> Broken:
    last_line = (new.strip() or old.strip()).splitlines()[-1]
    return Broken(id, ((old, new),), path, phrase, line_of if line_of is not None else last_line)


CASES = [
    # --- the schema version; required fields ---
    one(
        "schema-version",
        "schema: aifactory.site/v1",
        "schema: aifactory.site/v2",
        "schema",
        "reads aifactory.site/v1",
    ),
    one(
        "schema-missing",
        "schema: aifactory.site/v1\n",
        "",
        "schema",
        "missing required field 'schema'",
        "site:",
    ),
    one("site-name-missing", "  name: base\n", "", "site.name", "missing required field 'name'", "site:"),
    one(
        "country-missing",
        "    country: NG\n",
        "",
        "datacenters[0].country",
        "missing required field 'country'",
        "  - name: dc1",
    ),
    one(
        "datacenters-empty",
        "datacenters:\n  - name: dc1\n    country: NG\n    region: NG-FC\n",
        "datacenters: []\n",
        "datacenters",
        "at least 1 item",
        "datacenters: []",
    ),
    one(
        "cidr-missing",
        "    cidr: 10.9.0.0/24\n",
        "",
        "fabrics[2].cidr",
        "missing required field 'cidr'",
        "  - name: bmc",
    ),
    # --- types (strict: no silent coercion) ---
    one("count-word", "    count: 4\n", "    count: four\n", "node_pools[0].count", "must be an integer"),
    one("count-quoted", "    count: 4\n", '    count: "4"\n', "node_pools[0].count", "must be an integer"),
    one(
        "count-octal-looking",
        "    count: 4\n",
        "    count: 010\n",
        "node_pools[0].count",
        "must be an integer, found '010'",
    ),
    one(
        "python-version-number",
        "    fabrics: [mgmt, bmc]",
        "    fabrics: [mgmt, bmc]\n    platform: {python: 3.11}",
        "node_pools[1].platform.python",
        'write it in quotes: "3.11"',
        "platform: {python: 3.11}",
    ),
    one(
        "air-gapped-yes",
        "  air_gapped: true",
        "  air_gapped: yes",
        "site.air_gapped",
        "must be true or false",
    ),
    one(
        "fabrics-not-list",
        "    fabrics: [mgmt, compute]",
        "    fabrics: mgmt",
        "node_pools[0].fabrics",
        "must be a list",
    ),
    one(
        "capacity-word",
        "    capacity_tib: 10\n",
        "    capacity_tib: lots\n",
        "storage[2].capacity_tib",
        "must be a number",
    ),
    one("rails-fraction", "    rails: 2", "    rails: 2.5", "fabrics[1].rails", "must be an integer"),
    one(
        "site-not-mapping",
        "site:\n  name: base\n  jurisdiction: NG\n  air_gapped: true\n",
        "site: [base]\n",
        "site",
        "must be a mapping",
    ),
    one(
        "expires-not-date",
        "    expires: 2030-06-30",
        "    expires: next summer",
        "access[0].expires",
        "a date (YYYY-MM-DD)",
    ),
    one(
        "expires-impossible-date",
        "    expires: 2030-06-30",
        "    expires: 2030-13-45",
        "access[0].expires",
        "'2030-13-45' is not a valid date",
    ),
    # --- allowed values ---
    one(
        "fabric-kind-typo",
        "    kind: infiniband",
        "    kind: infinband",
        "fabrics[1].kind",
        "did you mean 'infiniband'?",
    ),
    one("role-unknown", "    role: gpu", "    role: gpus", "node_pools[0].role", "must be one of gpu, cpu"),
    one(
        "clearance-unknown",
        "    clearance: internal",
        "    clearance: restricted",
        "tenants[1].clearance",
        "must be one of public, internal, confidential, secret, top-secret",
    ),
    one("purpose-unknown", "    purpose: bmc", "    purpose: ipmi", "fabrics[2].purpose", "must be one of"),
    one(
        "arch-unknown",
        "    fabrics: [mgmt, bmc]",
        "    fabrics: [mgmt, bmc]\n    platform: {arch: sparc}",
        "node_pools[1].platform.arch",
        "must be one of x86_64, aarch64",
        "platform: {arch: sparc}",
    ),
    one(
        "count-zero", "    count: 4\n", "    count: 0\n", "node_pools[0].count", "greater than or equal to 1"
    ),
    one(
        "capacity-zero",
        "    capacity_tib: 10\n",
        "    capacity_tib: 0\n",
        "storage[2].capacity_tib",
        "greater than 0",
    ),
    one("rails-zero", "    rails: 2", "    rails: 0", "fabrics[1].rails", "greater than or equal to 1"),
    one(
        "action-unknown",
        "    actions: [read, train]",
        "    actions: [read, delete]",
        "access[0].actions[1]",
        "must be one of read, train, contribute, infer, export",
    ),
    one(
        "action-wrong-kind",
        "    actions: [read, train]",
        "    actions: [read, infer]",
        "access[0].actions[1]",
        "'infer' is not an action on a dataset",
    ),
    # --- names and codes ---
    one(
        "name-uppercase",
        "  - name: gpu\n",
        "  - name: GPU\n",
        "node_pools[0].name",
        "must be a name",
        "- name: GPU",
    ),
    one(
        "name-too-long",
        "  name: base\n",
        "  name: national-ai-factory-abuja\n",
        "site.name",
        "at most 20 characters",
        "national-ai-factory-abuja",
    ),
    one(
        "name-leading-digit",
        "  - name: dc1\n",
        "  - name: 1dc\n",
        "datacenters[0].name",
        "must be a name",
        "- name: 1dc",
    ),
    one(
        "country-word",
        "    country: NG",
        "    country: Nigeria",
        "datacenters[0].country",
        "ISO 3166-1 alpha-2",
    ),
    one(
        "country-unknown",
        "    country: NG",
        "    country: NQ",
        "datacenters[0].country",
        "unknown country code 'NQ'",
    ),
    one(
        "country-is-bloc",
        "    country: NG",
        "    country: EU",
        "datacenters[0].country",
        "'EU' is a bloc; a country code is needed",
    ),
    one(
        "jurisdiction-unknown",
        "  jurisdiction: NG",
        "  jurisdiction: XX",
        "site.jurisdiction",
        "unknown place",
    ),
    one(
        "residency-typo-bloc",
        "    residency: ECOWAS",
        "    residency: ECOWAZ",
        "datasets[1].residency",
        "did you mean 'ECOWAS'?",
    ),
    one("region-format", "    region: NG-FC", "    region: FC", "datacenters[0].region", "ISO 3166-2"),
    one(
        "region-outside-country",
        "    region: NG-FC",
        "    region: DE-BY",
        "datacenters[0].region",
        "region 'DE-BY' is not in country 'NG'",
    ),
    one(
        "region-unknown",
        "    region: NG-FC",
        "    region: NG-ZZ",
        "datacenters[0].region",
        "unknown ISO 3166-2 region 'NG-ZZ'",
    ),
    one("to-unknown-place", "    to: NG", "    to: ATLANTIS", "access[1].to", "unknown place"),
    # --- unknown keys (did you mean), duplicate keys, YAML tags ---
    one("unknown-top-key", "egress:\n", "egres:\n", "egres", "did you mean 'egress'?", "egres:"),
    one(
        "unknown-nested-key",
        "    mount_path: /lake-dr\n",
        "    mount_pth: /lake-dr\n",
        "storage[1].mount_pth",
        "did you mean 'mount_path'?",
    ),
    one(
        "unknown-key-no-hint",
        "    rails: 2",
        "    rails: 2\n    colour: blue",
        "fabrics[1].colour",
        "unknown key 'colour'",
    ),
    one(
        "duplicate-key",
        "    count: 4\n",
        "    count: 4\n    count: 5\n",
        "node_pools[0].count",
        "duplicate key 'count' (first written on line",
        "count: 5",
    ),
    one(
        "python-tag",
        "    capacity_tib: 10\n",
        "    capacity_tib: !!python/object:os.system x\n",
        "storage[2].capacity_tib",
        "unsupported YAML tag",
        "!!python/object",
    ),
    # --- inline secrets (their value is checked to appear in no output, below) ---
    one(
        "inline-secret",
        "credentials: secret://bmc/{host}",
        "credentials: Hunter2-Sup3rS3cret",
        "node_pools[0].bmc.credentials",
        "inline secret is not allowed",
    ),
    one(
        "inline-secret-mapping",
        "credentials: secret://bmc/{host}",
        "credentials: {user: root, password: Hunter2-Sup3rS3cret}",
        "node_pools[0].bmc.credentials",
        "its value is not shown",
        "credentials:",
    ),
    # --- references resolve ---
    one(
        "ref-pool-datacenter",
        "    datacenter: dc1\n    hardware:",
        "    datacenter: dc2\n    hardware:",
        "node_pools[0].datacenter",
        "unknown datacenter 'dc2'",
        "datacenter: dc2",
    ),
    one(
        "ref-pool-fabric",
        "    fabrics: [mgmt, compute]",
        "    fabrics: [mgmt, computee]",
        "node_pools[0].fabrics[1]",
        "unknown fabric 'computee' (did you mean 'compute'?)",
    ),
    one(
        "ref-bmc-fabric",
        "      fabric: bmc",
        "      fabric: bmcc",
        "node_pools[0].bmc.fabric",
        "unknown fabric 'bmcc'",
    ),
    one(
        "ref-storage-datacenter",
        "    capacity_tib: 10\n",
        "    capacity_tib: 10\n",
        "storage[2].datacenter",
        "unknown datacenter 'dc9'",
        "datacenter: dc9",
    ),
    one(
        "ref-storage-fabric",
        "    fabric: compute\n",
        "    fabric: storage\n",
        "storage[0].fabric",
        "unknown fabric 'storage'",
    ),
    one(
        "ref-mounted-by",
        "    mounted_by: [gpu]",
        "    mounted_by: [gpu, cpu]",
        "storage[0].mounted_by[1]",
        "unknown node pool 'cpu'",
    ),
    one(
        "ref-replica",
        "    replicas: [lake-dr]",
        "    replicas: [lake-rd]",
        "storage[0].replicas[0]",
        "unknown storage 'lake-rd' (did you mean 'lake-dr'?)",
    ),
    one(
        "self-replica",
        "    replicas: [lake-dr]",
        "    replicas: [lake]",
        "storage[0].replicas[0]",
        "cannot be its own replica",
    ),
    one(
        "ref-tenant-pool",
        "    pools: [gpu]",
        "    pools: [gpu, big]",
        "tenants[0].pools[1]",
        "unknown node pool 'big'",
    ),
    one(
        "ref-dataset-owner",
        "    owner: health\n    classification: internal",
        "    owner: hospital\n    classification: internal",
        "datasets[1].owner",
        "unknown tenant 'hospital'",
        "owner: hospital",
    ),
    one(
        "ref-dataset-storage",
        "    storage: lake\n    path: /health/images",
        "    storage: lakes\n    path: /health/images",
        "datasets[1].storage",
        "unknown storage 'lakes'",
        "storage: lakes",
    ),
    one(
        "ref-model-dataset",
        "    trained_on: [records]",
        "    trained_on: [record]",
        "models[0].trained_on[0]",
        "unknown dataset 'record' (did you mean 'records'?)",
    ),
    one(
        "ref-model-serve-on",
        "    serve_on: [gpu]",
        "    serve_on: [ctl, gpus]",
        "models[0].serve_on[1]",
        "unknown node pool 'gpus'",
    ),
    one(
        "ref-model-owner",
        "    owner: health\n    trained_on",
        "    owner: nobody\n    trained_on",
        "models[0].owner",
        "unknown tenant 'nobody'",
        "owner: nobody",
    ),
    one(
        "ref-grant-tenant",
        "  - tenant: research",
        "  - tenant: researchers",
        "access[0].tenant",
        "unknown tenant 'researchers'",
    ),
    one(
        "ref-grant-dataset",
        "    resource: dataset/images",
        "    resource: dataset/imagez",
        "access[0].resource",
        "unknown dataset 'imagez'",
    ),
    one(
        "ref-grant-model",
        "    resource: model/triage",
        "    resource: model/triag",
        "access[1].resource",
        "unknown model 'triag'",
    ),
    one(
        "resource-format",
        "    resource: dataset/images",
        "    resource: datasets/images",
        "access[0].resource",
        "dataset/<name> or model/<name>",
    ),
    # --- unique names ---
    one(
        "duplicate-fabric",
        "  - name: bmc\n    kind: ethernet",
        "  - name: mgmt  # again\n    kind: ethernet",
        "fabrics[2].name",
        "name 'mgmt' is already used by fabrics[0]",
        "# again",
    ),
    one(
        "duplicate-tenant",
        "  - name: research\n",
        "  - name: health  # again\n",
        "tenants[1].name",
        "name 'health' is already used by tenants[0]",
        "# again",
    ),
    one(
        "duplicate-pool",
        "  - name: ctl\n",
        "  - name: gpu  # again\n",
        "node_pools[1].name",
        "name 'gpu' is already used by node_pools[0]",
        "# again",
    ),
    one(
        "duplicate-storage",
        "  - name: objects\n",
        "  - name: lake  # again\n",
        "storage[2].name",
        "name 'lake' is already used by storage[0]",
        "# again",
    ),
    one(
        "duplicate-dataset",
        "  - name: images\n",
        "  - name: records  # again\n",
        "datasets[1].name",
        "name 'records' is already used by datasets[0]",
        "# again",
    ),
    one(
        "duplicate-datacenter",
        "datacenters:\n  - name: dc1\n    country: NG\n",
        "datacenters:\n  - name: dc1\n    country: NG\n  - name: dc1  # again\n    country: NG\n",
        "datacenters[1].name",
        "name 'dc1' is already used by datacenters[0]",
        "# again",
    ),
    # --- fabrics: CIDRs valid, not overlapping, large enough ---
    one("cidr-invalid", "cidr: 10.9.0.0/24", "cidr: 10.9.0.0/33", "fabrics[2].cidr", "not a valid network"),
    one(
        "cidr-host-bits",
        "cidr: 10.9.0.0/24",
        "cidr: 10.9.0.1/24",
        "fabrics[2].cidr",
        "did you mean 10.9.0.0/24?",
    ),
    one(
        "cidr-overlap",
        "cidr: 10.20.0.0/24",
        "cidr: 10.10.0.128/25",
        "fabrics[1].cidr",
        "overlaps fabrics[0] (10.10.0.0/24)",
    ),
    one(
        "cidr-too-small-rails",
        "cidr: 10.20.0.0/24",
        "cidr: 10.20.0.0/29",
        "fabrics[1].cidr",
        "needs 11 (4 hosts x 2 rail(s) + 0 BMCs + 3 reserved)",
    ),
    one(
        "cidr-too-small-bmc",
        "cidr: 10.9.0.0/24",
        "cidr: 10.9.0.0/30",
        "fabrics[2].cidr",
        "has 4 addresses but needs 8",
    ),
    # --- pools, storage, datasets, grants ---
    one(
        "pool-without-management",
        "    fabrics: [mgmt, compute]",
        "    fabrics: [compute]",
        "node_pools[0].fabrics",
        "pool 'gpu' is on no management fabric",
    ),
    one(
        "no-management-fabric",
        "    purpose: management",
        "    purpose: storage",
        "fabrics",
        "no fabric has purpose 'management'",
        "fabrics:",
    ),
    one(
        "gpu-pool-without-gpus",
        "      gpu: {model: H100-SXM5-80GB, count: 8}",
        "      cpus: 64",
        "node_pools[0].hardware.gpu",
        "a gpu pool must declare hardware.gpu",
        "hardware:",
    ),
    one(
        "bmc-fabric-purpose",
        "      fabric: bmc",
        "      fabric: compute",
        "node_pools[0].bmc.fabric",
        "has purpose 'compute', not 'bmc'",
    ),
    one(
        "s3-with-mount-path",
        "    capacity_tib: 10\n",
        "    capacity_tib: 10\n    mount_path: /objects\n",
        "storage[2].mount_path",
        "s3 storage is not mounted",
    ),
    one(
        "ceph-without-mount-path",
        "    mount_path: /lake-dr\n",
        "",
        "storage[1].mount_path",
        "missing mount_path: ceph storage is mounted",
        "  - name: lake-dr",
    ),
    one(
        "mount-path-relative",
        "    mount_path: /lake\n",
        "    mount_path: lake\n",
        "storage[0].mount_path",
        "must be an absolute path",
    ),
    one(
        "dataset-path-relative",
        "    path: /health/records",
        "    path: health/records",
        "datasets[0].path",
        "'health/records' must be an absolute path",
    ),
    one(
        "dataset-path-dotdot",
        "    path: /health/records",
        "    path: /health/../records",
        "datasets[0].path",
        "must not contain '..'",
    ),
    one(
        "dataset-path-nested",
        "    path: /health/images",
        "    path: /health/records/images",
        "datasets[1].path",
        "is inside datasets[0]'s path '/health/records'",
    ),
    one(
        "to-without-export",
        "    actions: [read, train]",
        "    actions: [read, train]\n    to: NG",
        "access[0].to",
        "'to' is only allowed on grants that include export",
        "to: NG",
    ),
    Broken(
        "interface-name-clash",
        (
            ("  - name: bmc\n    kind: ethernet", "  - name: compute1\n    kind: ethernet"),
            ("    fabrics: [mgmt, compute]", "    fabrics: [mgmt, compute, compute1]"),
            ("      fabric: bmc\n", "      fabric: compute1\n"),
            ("    fabrics: [mgmt, bmc]", "    fabrics: [mgmt]"),
        ),
        "node_pools[0].fabrics[2]",
        "interface 'compute1', which fabric 'compute' also gives them",
        "fabrics: [mgmt, compute, compute1]",
    ),
    one(
        "fabric-listed-twice",
        "    fabrics: [mgmt, compute]",
        "    fabrics: [mgmt, compute, mgmt]",
        "node_pools[0].fabrics[2]",
        "'mgmt' is listed twice (first at fabrics[0])",
    ),
    one(
        "export-without-to",
        "    to: NG\n",
        "",
        "access[1].to",
        "an export grant must name where the model goes",
        "  - tenant: health",
    ),
]
# A reference typo whose line is known only after the edit.
CASES[CASES.index(next(c for c in CASES if c.id == "ref-storage-datacenter"))] = Broken(
    "ref-storage-datacenter",
    (
        (
            "  - name: objects\n    kind: s3\n    datacenter: dc1",
            "  - name: objects\n    kind: s3\n    datacenter: dc9",
        ),
    ),
    "storage[2].datacenter",
    "unknown datacenter 'dc9'",
    "datacenter: dc9",
)
SECRET_VALUE = "Hunter2-Sup3rS3cret"
# Every fifth case also runs as a separate `aifactory validate` process.
SUBPROCESS_CASES = CASES[::5] + [c for c in CASES if c.id.startswith("inline-secret")]


def test_corpus_is_large_and_distinct() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({c.text() for c in CASES}) == len(CASES)


def _write(tmp_path: Path, case: Broken) -> Path:
    path = tmp_path / f"{case.id}.yaml"
    path.write_text(case.text())
    return path


def _matching(problems: list[dict], case: Broken) -> list[dict]:
    return [
        p
        for p in problems
        if p["path"] == case.path
        and p["line"] == case.line()
        and case.phrase in f"{p['message']} ({p['hint']})"
    ]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_spec_is_rejected_with_path_line_and_message(case: Broken, tmp_path: Path, cli) -> None:
    path = _write(tmp_path, case)
    code, out, err = cli("validate", str(path), "--format", "json")
    assert code == 1, (out, err)
    error = json.loads(out)["error"]
    assert error["code"] in ("invalid-spec", "yaml-structure")
    problems = error["problems"]
    assert all(p["file"] == str(path) for p in problems)
    assert _matching(problems, case), (
        f"expected {case.path} line {case.line()} '{case.phrase}' in:\n"
        + "\n".join(f"  {p['path']} line {p['line']}: {p['message']} ({p['hint']})" for p in problems)
    )
    assert SECRET_VALUE not in out + err


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.id for c in SUBPROCESS_CASES])
def test_broken_spec_through_the_installed_command(case: Broken, tmp_path: Path, run_aifactory) -> None:
    path = _write(tmp_path, case)
    text = run_aifactory("validate", str(path))
    assert text.returncode == 1
    assert "Traceback" not in text.stdout + text.stderr
    assert f"{path}:{case.line()}:" in text.stderr
    assert f"{case.path}: " in text.stderr and case.phrase in text.stderr
    assert SECRET_VALUE not in text.stdout + text.stderr


def test_all_problems_are_reported_at_once(tmp_path: Path, cli) -> None:
    """Three unrelated mistakes in one file: one run names all three, in file order."""
    text = (
        BASE.replace("    count: 4\n", "    count: four\n")
        .replace("    replicas: [lake-dr]", "    replicas: [lake-rd]")
        .replace("cidr: 10.20.0.0/24", "cidr: 10.10.0.0/24")
    )
    path = tmp_path / "three.yaml"
    path.write_text(text)
    code, out, _ = cli("validate", str(path), "--format", "json")
    problems = json.loads(out)["error"]["problems"]
    assert code == 1
    assert [p["path"] for p in problems] == [
        "fabrics[1].cidr",
        "node_pools[0].count",
        "storage[0].replicas[0]",
    ]
    assert [p["line"] for p in problems] == sorted(p["line"] for p in problems)
