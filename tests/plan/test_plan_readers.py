"""Downstream code reads the plan's attributes, never its keys: no `plan["pools"]`, `pool["name"]` or
`.get("platform")` on plan data outside aifactory/plan/ (where the JSON form is written and read), in the
package and in the Pulumi program (stacks/).

The rule, per function (module level counts as one), outside aifactory/plan/:
- A *plan expression* is a name or attribute called `plan`, `*_plan`, `plan_dict` or `plan_data`
  (`plan`, `self.plan`, `planned.plan`, `runtime_plan`), also through a call
  (`context.plan().plan`), or a name or parameter annotated with a type of aifactory.plan.model
  (`SitePlan`, `PoolPlan`, `Host`...).
- *Plan data* is a plan expression; a section read off one (`plan.pools`, `plan.site`); a name bound
  from plan data in the same function: a loop or comprehension variable over it (`for pool in
  plan.pools`), or a name assigned plan data: a read of it, an element of it through `next`,
  `sorted`... or a comprehension (`model = next(m for m in plan.models if ...)`), or a plan lookup's
  result (`fabric = plan.fabric(name)`, `data = plan.to_dict()`); not what another function returns,
  even given a plan (`doc = site_document(plan)`), nor makes of each element (`docs = [describe(m) for
  m in plan.models]`); and anything read off such a name (`pool.platform`).
- Indexing plan data with a string (`x["name"]`) or calling `.get("...")` on it is flagged.
- Exempt: the fields that are mappings by nature, `Host.nccl` (environment variables) and
  `SitePlan.allocation` (the allocation lock's snapshot), and whatever is read off them.
"""

from __future__ import annotations

import ast
from dataclasses import is_dataclass
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

from aifactory.plan.model import SitePlan

PACKAGE = Path(__file__).resolve().parents[2] / "aifactory"


def _is_section(kind: object) -> bool:
    """A typed section of the plan: a dataclass of aifactory.plan.model, or a tuple of them."""
    if get_origin(kind) is tuple:
        kind = get_args(kind)[0]
    return is_dataclass(kind)


# The plan's sections (`plan.pools`, `plan.site`...): the fields of SitePlan that hold typed sections.
SECTIONS = {name for name, kind in get_type_hints(SitePlan).items() if _is_section(kind)}
MAPPINGS = {"nccl", "allocation"}
# Builtins whose result holds their argument's elements.
PASS_THROUGH = {"next", "iter", "sorted", "reversed", "list", "tuple", "set", "min", "max", "enumerate"}
PLAN_TYPES = {
    "SitePlan",
    "Host",
    "SiteInfo",
    "DatacenterPlan",
    "FabricPlan",
    "PoolPlan",
    "PlatformPlan",
    "HardwarePlan",
    "GpuPlan",
    "PoolBmcPlan",
    "StoragePlan",
    "TenantPlan",
    "DatasetPlan",
    "ModelPlan",
    "AccessGrant",
    "EgressPlan",
    "EgressRule",
    "RuntimePlan",
}


# The plan's own lookups return plan data; its JSON form (`to_dict()`) is plan data too.
LOOKUPS = {"fabric", "pool", "host", "dataset", "model", "this_host", "hosts_in_pool", "to_dict"}


def _plan_named(name: str) -> bool:
    return name == "plan" or name.endswith("_plan") or name in ("plan_dict", "plan_data")


def _chain(node: ast.expr) -> list[str]:
    """The names along an attribute chain, through calls and subscripts: `a.b().c[0]` -> [a, b, c]."""
    names: list[str] = []
    while isinstance(node, ast.Attribute | ast.Call | ast.Subscript):
        if isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        else:
            node = node.func if isinstance(node, ast.Call) else node.value
    if isinstance(node, ast.Name):
        names.append(node.id)
    return names[::-1]


def _annotated_plan(annotation: ast.expr | None) -> bool:
    return annotation is not None and any(
        isinstance(n, ast.Name) and n.id in PLAN_TYPES for n in ast.walk(annotation)
    )


class _Scope(ast.NodeVisitor):
    """Finds string-keyed reads of plan data in one function (nested functions get their own)."""

    def __init__(self, tainted: set[str]) -> None:
        self.tainted = tainted
        self.found: list[ast.expr] = []

    def is_plan_data(self, node: ast.expr) -> bool:
        names = _chain(node)
        if not names or any(n in MAPPINGS for n in names):
            return False
        if names[0] in self.tainted:
            return True
        for k, name in enumerate(names):
            rest = names[k + 1 :]
            if _plan_named(name) and (not rest or rest[0] in SECTIONS or rest[0] in LOOKUPS):
                return True
        return False

    def reads_plan(self, node: ast.expr) -> bool:
        """Whether an expression's value is plan data: a read of it, an element of it (through `next`,
        `sorted`... and comprehensions), or a plan lookup's result. What another function returns is
        not, nor is a plan merely passed along (`f(plan)`)."""
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                return func.attr in LOOKUPS and self.is_plan_data(func.value)
            return (
                isinstance(func, ast.Name)
                and func.id in PASS_THROUGH
                and any(self.reads_plan(a) for a in node.args)
            )
        if isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp):
            if isinstance(node.elt, ast.Call) and not self.reads_plan(node.elt):
                return False  # what another function makes of each element, as for `f(plan)` alone
            return self.reads_plan(node.elt) or any(self.reads_plan(g.iter) for g in node.generators)
        if isinstance(node, ast.BoolOp):
            return any(self.reads_plan(v) for v in node.values)
        if isinstance(node, ast.IfExp):
            return self.reads_plan(node.body) or self.reads_plan(node.orelse)
        if isinstance(node, ast.Tuple | ast.List):
            return any(self.reads_plan(e) for e in node.elts)
        if isinstance(node, ast.Attribute | ast.Name | ast.Subscript):
            names = _chain(node)
            return bool(names) and self.is_plan_data(node) and not _plan_named(names[-1])
        return False

    def bind(self, target: ast.expr) -> None:
        self.tainted |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        args = node.args
        inner = _Scope(
            {
                a.arg
                for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]
                if _annotated_plan(a.annotation)
            }
            | ({a.arg for a in args.args} & self.tainted if isinstance(node, ast.Lambda) else set())
        )
        for statement in node.body if isinstance(node.body, list) else [node.body]:
            inner.visit(statement)
        self.found += inner.found

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef  # noqa: N815  # NodeVisitor's names

    def visit_For(self, node: ast.For) -> None:
        if self.reads_plan(node.iter):
            self.bind(node.target)
        self.generic_visit(node)

    def visit_comprehension(self, node: ast.comprehension) -> None:
        if self.reads_plan(node.iter):
            self.bind(node.target)
        self.generic_visit(node)

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        for generator in node.generators:  # first: the element reads the loop variables
            self.visit(generator)
        for field in ("elt", "key", "value"):
            child = getattr(node, field, None)
            if child is not None:
                self.visit(child)

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension  # noqa: N815

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        if self.reads_plan(node.value):
            for target in node.targets:
                self.bind(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.generic_visit(node)
        if (node.value is not None and self.reads_plan(node.value)) or _annotated_plan(node.annotation):
            self.bind(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.generic_visit(node)
        if self.reads_plan(node.value):
            self.bind(node.target)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and self.is_plan_data(node.value):
            self.found.append(node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "get"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and self.is_plan_data(func.value)
        ):
            self.found.append(node)
        self.generic_visit(node)


def offences(source: str, filename: str = "<test>") -> list[str]:
    tree = ast.parse(source, filename)
    scope = _Scope(set())
    scope.visit(tree)
    return [f"{filename}:{n.lineno}: {ast.unparse(n)}" for n in scope.found]


# The Pulumi program (stacks/) reads the plan too: the same rule holds there.
STACKS = PACKAGE.parent / "stacks"


def readers() -> list[Path]:
    """Every module outside aifactory/plan/ that may read a plan: the package and the stack."""
    package = [p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] != "plan"]
    return package + sorted(STACKS.rglob("*.py"))


def test_no_module_outside_the_plan_reads_plan_data_by_key() -> None:
    files = readers()
    assert any(p.name == "render.py" and p.parent.name == "provision" for p in files)
    assert any(p.name == "site.py" and p.parent.name == "aifactory_stack" for p in files)
    found = [
        offence
        for path in files
        for offence in offences(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    ]
    assert found == []


def test_the_check_catches_each_form_it_names() -> None:
    flagged = {
        'site = plan["site"]',
        'n = plan_dict.get("models")',
        'x = planned.plan.site["name"]',
        'x = context.plan().plan.egress.get("allow")',
        'for pool in plan.pools:\n    print(pool["name"])',
        'names = [p["name"] for p in sorted(plan.pools, key=str)]',
        'model = next(m for m in plan.models if m.trained_on)\nprint(model["owner"])',
        'fabric = plan.fabric("mgmt")\nprint(fabric["prefixlen"])',
        'def f(pool: PoolPlan) -> str:\n    return pool.platform.get("arch")',
        'def f(plan):\n    return {h["name"] for h in plan["hosts"]}',
        'data = planned.plan.to_dict()\nprint(data["hosts"])',
        'fabrics = [plan.fabric(n) for n in names]\nprint(fabrics[0]["kind"])',
        'models = [m for m in plan.models if m.host_path]\nprint(models[0]["name"])',
    }
    for source in flagged:
        assert offences(source), source


def test_the_check_leaves_other_data_alone() -> None:
    clean = {
        "for pool in plan.pools:\n    print(pool.name, pool.platform.arch)",
        'env = host.nccl["NCCL_IB_HCA"]\nfor host in plan.hosts:\n    x = host.nccl["NCCL_IB_HCA"]',
        'x = plan.allocation["mgmt"]',
        'report = load()\nprint(report.site["name"])',
        'state = {"site": 1}\nprint(state["site"])',
        "names = [p.name for p in plan.pools]\nprint(names[0])",
        'file = {}\nprint(file.get("plan"))',
        'doc = site_document(planned.plan)\nprint(doc["name"])',
        'docs = [describe(m) for m in plan.models]\nprint(docs[0]["name"])',
    }
    for source in clean:
        assert not offences(source), source
