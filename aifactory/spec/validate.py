"""Validate a site spec: every check of the contract's "What validation checks", all errors at once.

Type and value errors come from the pydantic model; cross-references, places, address space and
the other rules are checked here on the raw data, so that one run reports both kinds together.
No message ever repeats the value of an inline secret.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import ipaddress
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from aifactory.errors import Location, Problem, SpecError
from aifactory.spec import grammar
from aifactory.spec.loader import LoadedYaml, PathKey, format_path, load_yaml_file, load_yaml_text
from aifactory.spec.model import (
    DATASET_ACTIONS,
    ENDPOINT_KIND_ERROR,
    MODEL_ACTIONS,
    SCHEMA_VERSION,
    SiteSpec,
)
from aifactory.spec.naming import interface_name
from aifactory.spec.places import Places, load_places

SECRET_FIELDS = {"credentials", "password", "token", "secret", "key", "passphrase"}
# Addresses a fabric keeps for itself: the network and the gateway (and broadcast on IPv4).
RESERVED_V4 = 3
RESERVED_V6 = 2
MAX_PROBLEMS = 200  # listed; the rest are counted ("... and N more problems")
# The longest each list may be (docs/site-spec.md, "Limits on input"): far above a national site
# (10,000 hosts fit in 100 pools), low enough that every check stays fast on what is accepted.
LIST_LIMITS: dict[tuple[str, ...], int] = {
    ("datacenters",): 100,
    ("fabrics",): 256,
    ("node_pools",): 1_000,
    ("storage",): 256,
    ("tenants",): 1_000,
    ("datasets",): 10_000,
    ("models",): 10_000,
    ("access",): 50_000,
    ("egress", "allow"): 1_000,
    ("node_pools", "fabrics"): 64,
    ("storage", "mounted_by"): 1_000,
    ("storage", "replicas"): 16,
    ("tenants", "pools"): 1_000,
    ("models", "trained_on"): 10_000,
    ("models", "serve_on"): 1_000,
    ("access", "actions"): 4,
    ("loop",): 10_000,
    ("loop", "metrics"): 100,
}


@dataclass(frozen=True)
class LoadedSpec:
    """A valid spec, the file it came from and the digest of its bytes."""

    spec: SiteSpec
    source: LoadedYaml
    digest: str


def load_spec(path: str | Path, *, places: Places | None = None) -> LoadedSpec:
    """Read and validate one site spec file; raise SpecError listing every problem."""
    source = load_yaml_file(path)
    return _validated(source, source.raw, places)


def load_spec_text(text: str, *, file: str = "<text>", places: Places | None = None) -> LoadedSpec:
    return _validated(load_yaml_text(text, file), text.encode(), places)


def _validated(source: LoadedYaml, raw: bytes, places: Places | None) -> LoadedSpec:
    spec = validate(source, places=places or load_places())
    return LoadedSpec(spec=spec, source=source, digest="sha256:" + hashlib.sha256(raw).hexdigest())


def validate(source: LoadedYaml, *, places: Places) -> SiteSpec:
    data = source.data
    if not isinstance(data, dict):
        raise SpecError(
            "a site spec is a mapping of keys to values",
            location=source.location(()),
            hint="start from `aifactory init NAME --jurisdiction CC`",
        )
    too_long = _lists_too_long(source)
    if too_long:  # nothing else is checked: the other checks' cost grows with the lists
        raise SpecError(
            f"{len(too_long)} list(s) longer than allowed in the site spec",
            problems=too_long[:MAX_PROBLEMS],
            omitted_problems=max(0, len(too_long) - MAX_PROBLEMS),
            code="invalid-spec",
            location=Location(file=source.file),
        )
    spec, problems = _model_validated(source)
    problems += _Checker(source, places).run()
    problems = _dedupe(problems)
    if problems:
        problems.sort(key=lambda p: (p.location.line or 0, p.location.column or 0, p.location.path or ""))
        raise SpecError(
            f"{len(problems)} problem(s) in the site spec",
            problems=problems[:MAX_PROBLEMS],
            omitted_problems=max(0, len(problems) - MAX_PROBLEMS),
            code="invalid-spec",
            location=Location(file=source.file),
        )
    assert spec is not None  # no problems means the model accepted it
    return spec


def _lists_too_long(source: LoadedYaml) -> list[Problem]:
    problems = []
    for (section, *field), limit in LIST_LIMITS.items():
        found: list[tuple[PathKey, Any]]
        if field and section == "egress":
            egress = source.data.get("egress")
            found = [(("egress", "allow"), egress.get("allow"))] if isinstance(egress, dict) else []
        elif field:
            found = [((section, i, field[0]), item.get(field[0])) for i, item in _items(source.data, section)]
        else:
            found = [((section,), source.data.get(section))]
        for path, value in found:
            if isinstance(value, list) and len(value) > limit:
                problems.append(
                    Problem(
                        "list-too-long",
                        f"{len(value)} items; at most {limit} are allowed here",
                        source.location(path, key=True),
                        "see Limits on input in docs/site-spec.md",
                    )
                )
    return problems


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str | None, str]] = set()
    out = []
    for problem in problems:
        key = (problem.location.path, problem.message)
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out


# --- type and value errors, from the model ---------------------------------------------------

_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "model_type": "a mapping",
    "dict_type": "a mapping",
    "date_type": "a date (YYYY-MM-DD)",
    "date_from_datetime_inexact": "a date (YYYY-MM-DD)",
    "date_parsing": "a date (YYYY-MM-DD)",
    "int_from_float": "an integer",
    "date_from_datetime_parsing": "a date (YYYY-MM-DD)",
}


def _found(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int | float):
        return f"the number {value}"
    return grammar.shown(str(value))


def _model_validated(source: LoadedYaml) -> tuple[SiteSpec | None, list[Problem]]:
    """The model of the data, or the type and value problems that stop it."""
    try:
        return SiteSpec.model_validate(source.data), []
    except ValidationError as exc:
        problems = [_problem_from_pydantic(source, error) for error in exc.errors(include_url=False)]
        # An unknown key or a did-you-mean may quote spec text: never a raw control character.
        return None, [
            dataclasses.replace(
                p, message=grammar.printable(p.message), hint=grammar.printable(p.hint or "") or None
            )
            for p in problems
        ]


def _problem_from_pydantic(source: LoadedYaml, error: Any) -> Problem:
    loc: PathKey = tuple("schema" if part == "schema_" else part for part in error["loc"])
    kind = error["type"]
    field = next((p for p in reversed(loc) if isinstance(p, str)), "")
    secret = field in SECRET_FIELDS
    value = error.get("input")
    if kind == "extra_forbidden":
        hint = _did_you_mean(str(loc[-1]), _fields_at(loc[:-1]))
        return Problem("unknown-key", f"unknown key '{loc[-1]}'", source.location(loc, key=True), hint)
    if kind == "missing":
        return Problem(
            "missing-field",
            f"missing required field '{loc[-1]}'",
            source.location(loc, key=True, at=loc[:-1]),
        )
    location = source.location(loc, key=True)
    if secret:
        return Problem(
            "inline-secret",
            "an inline secret is not allowed here; its value is not shown",
            location,
            "store it with `aifactory secret set` and write a reference such as secret://bmc/{host}",
        )
    if kind == "literal_error":
        expected = error["ctx"]["expected"]
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",")]
        message = f"must be one of {', '.join(choices)}; found {_found(value)}"
        hint = _did_you_mean(str(value), choices) if isinstance(value, str) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and str(value) in choices:
            hint = f'write it in quotes: "{value}"'
        if loc == ("schema",):
            hint = f"this version of aifactory reads {SCHEMA_VERSION}"
        return Problem("bad-value", message, location, hint)
    if kind in ("string_pattern_mismatch", "string_too_long") and isinstance(value, str):
        rule = _grammar_at(loc)
        if rule is grammar.SECRET:
            return Problem(
                "inline-secret",
                "an inline secret is not allowed here; its value is not shown",
                location,
                "write a reference such as secret://bmc/{host}",
            )
        if rule is not None:
            code, message = grammar.why_not(rule, value)
            return Problem(code, message, location)
    if kind == ENDPOINT_KIND_ERROR:
        field_loc = loc + (error["ctx"]["field"],)
        message = f"{error['msg']}; found {_found(_value_at(source, field_loc))}"
        return Problem("bad-endpoint", message, source.location(field_loc, key=True))
    if kind in _TYPE_NAMES:
        quote = " (put quotes around it to make it a string)" if kind == "string_type" else ""
        return Problem("bad-type", f"must be {_TYPE_NAMES[kind]}, found {_found(value)}{quote}", location)
    return Problem("bad-value", f"{error['msg'].rstrip('.')}; found {_found(value)}", location)


def _grammar_at(loc: PathKey) -> grammar.Grammar | None:
    """The grammar of the string field at a path, from the model's constraints."""
    model: Any = SiteSpec
    annotation: Any = None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None:
            return None
        field = model.model_fields.get("schema_" if part == "schema" else part)
        if field is None:
            return None
        annotation = field
        model = _inner_model(field.annotation)
    pattern = _pattern_of(annotation.metadata if annotation is not None else [])
    if pattern is None and annotation is not None:
        pattern = _pattern_of(_metadata_in(annotation.annotation))
    return grammar.GRAMMARS.get(pattern) if pattern else None


def _pattern_of(metadata: list[Any]) -> str | None:
    for item in metadata:
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            return pattern
    return None


def _metadata_in(annotation: Any) -> list[Any]:
    """Constraints inside Optional[...] or list[...] annotations."""
    found: list[Any] = list(getattr(annotation, "__metadata__", ()))
    for arg in get_args(annotation):
        found += _metadata_in(arg)
    return found


def _value_at(source: LoadedYaml, loc: PathKey) -> Any:
    value: Any = source.data
    for part in loc:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _fields_at(loc: PathKey) -> list[str]:
    """The field names of the model at a path, for "did you mean" hints."""
    model: Any = SiteSpec
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get("schema_" if part == "schema" else part)
        if field is None:
            return []
        model = _inner_model(field.annotation)
        if model is None:
            return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation) if get_origin(annotation) is not None else ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


# --- cross-references and the rules a type cannot express -------------------------------------


def _items(data: Any, key: str) -> list[tuple[int, dict[str, Any]]]:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, list):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)]


def _str_list(value: Any) -> list[tuple[int, str]]:
    if not isinstance(value, list):
        return []
    return [(i, v) for i, v in enumerate(value) if isinstance(v, str)]


def _end(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    return int(network.broadcast_address)


def _nested_paths(paths: list[tuple[int, str]]) -> list[tuple[int, str, int, str]]:
    """(index, path, index of the path it is inside, that path) for each path equal to an earlier one
    or inside another, each reported once: a dict for equal paths, then one scan over the distinct
    paths sorted by component, keeping the chain of enclosing paths on a stack (n log n)."""
    found: list[tuple[int, str, int, str]] = []
    first: dict[str, int] = {}
    for index, path in paths:
        if path in first:
            found.append((index, path, first[path], path))
        else:
            first[path] = index
    enclosing: list[tuple[tuple[str, ...], int, str]] = []
    for parts, path in sorted((tuple(p.strip("/").split("/")) if p != "/" else (), p) for p in first):
        while enclosing and parts[: len(enclosing[-1][0])] != enclosing[-1][0]:
            enclosing.pop()
        if enclosing:
            found.append((first[path], path, enclosing[-1][1], enclosing[-1][2]))
        enclosing.append((parts, first[path], path))
    return found


class _Checker:
    def __init__(self, source: LoadedYaml, places: Places) -> None:
        self.source = source
        self.data: dict[str, Any] = source.data
        self.places = places
        self.problems: list[Problem] = []
        self.names: dict[str, dict[str, dict[str, Any]]] = {}
        self._hints: dict[tuple[str, str], str | None] = {}

    def add(
        self, path: PathKey, code: str, message: str, hint: str | None = None, *, missing: bool = False
    ) -> None:
        """One problem at a field; a `missing` field is reported where its parent is written."""
        at = path[:-1] if missing else None
        # Messages quote spec values: never let one carry a control character to a terminal.
        message, hint = grammar.printable(message), grammar.printable(hint) if hint else None
        self.problems.append(Problem(code, message, self.source.location(path, key=True, at=at), hint))

    def run(self) -> list[Problem]:
        for kind in ("datacenters", "fabrics", "node_pools", "storage", "tenants", "datasets", "models"):
            self.names[kind] = self._unique(kind, (kind,))
        egress = self.data.get("egress")
        self._unique("allow", ("egress", "allow"), container=egress if isinstance(egress, dict) else {})
        self._site()
        self._datacenters()
        self._fabrics()
        self._references()
        self._pools()
        self._storage()
        self._datasets()
        self._grants()
        self._egress()
        self._monitoring()
        self._economics()
        self._drain_budget()
        self._loops()
        self._no_repeats()
        return self.problems

    def _monitoring(self) -> None:
        monitoring = self.data.get("monitoring")
        if isinstance(monitoring, dict) and monitoring.get("pool") is not None:
            self.ref(("monitoring", "pool"), monitoring.get("pool"), "node_pools", "node pool")
        front_door = self.data.get("front_door")
        if isinstance(front_door, dict) and front_door.get("pool") is not None:
            self.ref(("front_door", "pool"), front_door.get("pool"), "node_pools", "node pool")

    def _economics(self) -> None:
        """Each priced pool is a planned pool, priced once (two prices for one pool: which one holds?)."""
        economics = self.data.get("economics")
        self._pools_once(("economics", "pools"), economics, "is priced twice")

    def _drain_budget(self) -> None:
        """Each pool with a budget of its own is a planned pool, given one budget."""
        health = self.data.get("health")
        budget = health.get("drain_budget") if isinstance(health, dict) else None
        self._pools_once(("health", "drain_budget", "pools"), budget, "has two budgets")

    def _loops(self) -> None:
        """Each loop is of a planned model trained on data, once; its evaluation set is a planned
        dataset the model's owner may read and the model is not trained on (docs/loop.md)."""
        first: dict[str, int] = {}
        for i, loop in _items(self.data, "loop"):
            path: PathKey = ("loop", i)
            name = loop.get("model")
            model = self.ref(path + ("model",), name, "models", "model")
            if isinstance(name, str) and name in first:
                self.add(
                    path + ("model",),
                    "listed-twice",
                    f"{grammar.shown(name)} has two loops (first at loop[{first[name]}])",
                )
            if isinstance(name, str):
                first.setdefault(name, i)
            if model is not None and not model.get("trained_on"):
                self.add(
                    path + ("model",),
                    "loop-without-training-data",
                    f"model {grammar.shown(str(name))} is trained on no dataset: a loop retrains it on "
                    "the new versions of its training data",
                    "list the datasets it learns from in its trained_on",
                )
            self._trigger(path, loop.get("trigger"))
            if model is not None:
                self._evaluation_set(path, loop.get("evaluation"), model)
                self._canary(path, loop, model)
            self._loop_metrics(path, loop.get("metrics"))

    def _trigger(self, path: PathKey, trigger: Any) -> None:
        if (
            isinstance(trigger, dict)
            and trigger.get("new_samples") is None
            and trigger.get("schedule") is None
        ):
            self.add(
                path + ("trigger",),
                "empty-trigger",
                "a trigger needs new_samples, a schedule, or both",
                "e.g. new_samples: 1000 or schedule: daily 02:00",
            )

    def _evaluation_set(self, path: PathKey, evaluation: Any, model: dict[str, Any]) -> None:
        if not isinstance(evaluation, dict):
            return
        where = path + ("evaluation", "dataset")
        name = evaluation.get("dataset")
        dataset = self.ref(where, name, "datasets", "dataset")
        if dataset is None:
            return
        if name in [trained for _, trained in _str_list(model.get("trained_on"))]:
            self.add(
                where,
                "evaluation-set-trained-on",
                f"model {grammar.shown(str(model.get('name')))} is trained on dataset "
                f"{grammar.shown(str(name))}: an evaluation set must be data the model never learned from",
                "keep a held-out dataset of its own for evaluation",
            )
        owner = model.get("owner")
        if not isinstance(owner, str) or not grammar.matches(grammar.NAME, owner):
            return  # the model reports an owner outside the name grammar
        if dataset.get("owner") != owner and not self._may_read(owner, str(name)):
            self.add(
                where,
                "evaluation-set-not-readable",
                f"tenant '{owner}', owner of model '{model.get('name')}', neither owns dataset '{name}' "
                "nor holds a read grant on it",
                f"grant it: access: [{{tenant: {owner}, resource: dataset/{name}, actions: [read]}}]",
            )

    def _may_read(self, tenant: Any, dataset: str) -> bool:
        """Whether a grant lets the tenant read the dataset (expiry is the policy's, at run time)."""
        return any(
            grant.get("tenant") == tenant
            and grant.get("resource") == f"dataset/{dataset}"
            and "read" in [action for _, action in _str_list(grant.get("actions"))]
            for _, grant in _items(self.data, "access")
        )

    def _canary(self, path: PathKey, loop: dict[str, Any], model: dict[str, Any]) -> None:
        if loop.get("canary") is not None and not model.get("serve_on"):
            self.add(
                path + ("canary",),
                "canary-not-served",
                f"model {grammar.shown(str(model.get('name')))} is served nowhere, so no request can go "
                "to a canary",
                "list the pools that serve it in its serve_on, or remove the canary",
            )
        canary = loop.get("canary")
        window, duration = (
            (canary.get(k) for k in ("window_seconds", "duration_minutes"))
            if isinstance(canary, dict)
            else (None, None)
        )
        if isinstance(window, int) and isinstance(duration, int) and window > duration * 60:
            self.add(
                path + ("canary", "window_seconds"),
                "canary-window-too-long",
                f"the canary's window ({window} s) is longer than it runs ({duration} min): it would be "
                "promoted before one window of requests was judged",
                "make window_seconds at most duration_minutes times 60",
            )

    def _loop_metrics(self, path: PathKey, metrics: Any) -> None:
        """Metric names once each; a target gives both improvement minima and no tolerance; at least
        one target, so that a loop only ever promotes a challenger that is better."""
        first: dict[str, int] = {}
        targets = 0
        for j, metric in _items({"metrics": metrics}, "metrics"):
            where = path + ("metrics", j)
            name = metric.get("name")
            if isinstance(name, str) and name in first:
                self.add(
                    where + ("name",),
                    "listed-twice",
                    f"{grammar.shown(name)} is listed twice (first at metrics[{first[name]}])",
                )
            if isinstance(name, str):
                first.setdefault(name, j)
            given = [k for k in ("min_improvement", "min_relative_improvement") if metric.get(k) is not None]
            if len(given) == 1:
                missing = ({"min_improvement", "min_relative_improvement"} - set(given)).pop()
                self.add(
                    where + (missing,),
                    "improvement-incomplete",
                    f"a target metric needs both min_improvement and min_relative_improvement; {missing} "
                    "is missing",
                    "the challenger must beat the champion by both an absolute and a relative margin",
                    missing=True,
                )
            if given:
                targets += 1
                if metric.get("tolerance") is not None:
                    self.add(
                        where + ("tolerance",),
                        "tolerance-on-target",
                        "a target metric must improve, so it has no tolerance",
                        "remove tolerance, or the improvement minima if the metric only must not get worse",
                    )
        if isinstance(metrics, list) and metrics and targets == 0:
            self.add(
                path + ("metrics",),
                "no-target-metric",
                "no metric gives min_improvement and min_relative_improvement: a loop promotes only a "
                "challenger better than the champion on at least one metric",
            )

    def _pools_once(self, path: tuple[str, ...], section: Any, twice: str) -> None:
        """The list at `path` (under `section`, a dict) names planned pools, each at most once."""
        first: dict[str, int] = {}
        listed = ".".join(path)
        for i, item in _items(section if isinstance(section, dict) else {}, path[-1]):
            pool = item.get("pool")
            self.ref((*path, i, "pool"), pool, "node_pools", "node pool")
            if isinstance(pool, str) and pool in first:
                self.add(
                    (*path, i, "pool"),
                    "listed-twice",
                    f"{grammar.shown(pool)} {twice} (first at {listed}[{first[pool]}])",
                )
            if isinstance(pool, str):
                first.setdefault(pool, i)

    # (kind, field, kind it names, what to call it, whether the field is a list of names); the
    # references with a rule of their own (pool fabrics, bmc.fabric, replicas, grant resources)
    # are checked beside that rule.
    _REFERENCES = (
        ("node_pools", "datacenter", "datacenters", "datacenter", False),
        ("storage", "datacenter", "datacenters", "datacenter", False),
        ("storage", "fabric", "fabrics", "fabric", False),
        ("storage", "mounted_by", "node_pools", "node pool", True),
        ("tenants", "pools", "node_pools", "node pool", True),
        ("datasets", "owner", "tenants", "tenant", False),
        ("datasets", "storage", "storage", "storage", False),
        ("models", "owner", "tenants", "tenant", False),
        ("models", "storage", "storage", "storage", False),
        ("models", "trained_on", "datasets", "dataset", True),
        ("models", "serve_on", "node_pools", "node pool", True),
        ("access", "tenant", "tenants", "tenant", False),
    )

    def _references(self) -> None:
        for kind, field, target, what, many in self._REFERENCES:
            for i, item in _items(self.data, kind):
                if many:
                    for j, name in _str_list(item.get(field)):
                        self.ref((kind, i, field, j), name, target, what)
                else:
                    self.ref((kind, i, field), item.get(field), target, what)
        health = self.data.get("health")
        for i, item in _items(health if isinstance(health, dict) else {}, "thresholds"):
            self.ref(("health", "thresholds", i, "pool"), item.get("pool"), "node_pools", "node pool")

    _LISTS = (
        ("node_pools", "fabrics"),
        ("storage", "mounted_by"),
        ("storage", "replicas"),
        ("tenants", "pools"),
        ("models", "trained_on"),
        ("models", "serve_on"),
        ("access", "actions"),
    )

    def _no_repeats(self) -> None:
        """A list of names names each once (a fabric listed twice would give a host two interfaces)."""
        for kind, field in self._LISTS:
            for i, item in _items(self.data, kind):
                self._each_once((kind, i, field), item.get(field))
        for i, loop in _items(self.data, "loop"):
            sign_off = loop.get("sign_off")
            if isinstance(sign_off, dict):
                self._each_once(("loop", i, "sign_off", "by"), sign_off.get("by"))

    def _each_once(self, path: PathKey, values: Any) -> None:
        first: dict[str, int] = {}
        for j, value in _str_list(values):
            if value in first:
                self.add(
                    (*path, j),
                    "listed-twice",
                    f"{grammar.shown(value)} is listed twice (first at {path[-1]}[{first[value]}])",
                )
            first.setdefault(value, j)

    def _unique(self, key: str, path: PathKey, container: Any = None) -> dict[str, dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        first: dict[str, int] = {}
        for i, item in _items(self.data if container is None else container, key):
            name = item.get("name")
            if not isinstance(name, str) or not grammar.matches(grammar.NAME, name):
                continue
            if name in seen:
                self.add(
                    path + (i, "name"),
                    "duplicate-name",
                    f"{format_path(path)} name '{name}' is already used by "
                    f"{format_path(path + (first[name],))}",
                )
                continue
            seen[name], first[name] = item, i
        return seen

    def hint(self, word: str, kind: str, choices: Callable[[], list[str]]) -> str | None:
        """ "Did you mean" for a word among a kind's names: once per (kind, word), and only while the
        problems found are few enough to be listed (matching against every name costs time)."""
        key = (kind, word)
        if key not in self._hints:
            if len(self.problems) >= MAX_PROBLEMS:
                return None
            self._hints[key] = _did_you_mean(word, choices())
        return self._hints[key]

    def ref(self, path: PathKey, value: Any, kind: str, what: str) -> dict[str, Any] | None:
        # A value outside the name grammar is reported by the model, and never echoed twice.
        if not isinstance(value, str) or not grammar.matches(grammar.NAME, value):
            return None
        target = self.names[kind].get(value)
        if target is None:
            self.add(
                path,
                "unknown-reference",
                f"unknown {what} '{value}'",
                self.hint(value, kind, lambda: sorted(self.names[kind])),
            )
        return target

    def place(self, path: PathKey, value: Any, *, country_only: bool = False) -> None:
        if not isinstance(value, str) or not grammar.matches(grammar.PLACE, value):
            return
        if self.places.is_country(value):
            return
        if self.places.is_bloc(value):
            if country_only:
                self.add(
                    path,
                    "bloc-not-country",
                    f"'{value}' is a bloc; a country code is needed here",
                    f"pick one of its members: {', '.join(self.places.countries_of(value)[:6])}, ...",
                )
            return
        what = "country code" if country_only else "place (country code or bloc)"
        self.add(
            path,
            "unknown-place",
            f"unknown {what} '{value}'",
            self.hint(value, "place", self.places.all_places),
        )

    def _site(self) -> None:
        site = self.data.get("site")
        if isinstance(site, dict):
            self.place(("site", "jurisdiction"), site.get("jurisdiction"))

    def _datacenters(self) -> None:
        for i, dc in _items(self.data, "datacenters"):
            country = dc.get("country")
            self.place(("datacenters", i, "country"), country, country_only=True)
            region = dc.get("region")
            if not isinstance(region, str) or not grammar.matches(grammar.REGION, region):
                continue
            if isinstance(country, str) and self.places.is_country(country):
                if not region.startswith(country + "-"):
                    self.add(
                        ("datacenters", i, "region"),
                        "region-outside-country",
                        f"region '{region}' is not in country '{country}'",
                    )
                elif not self.places.is_region(region):
                    self.add(
                        ("datacenters", i, "region"),
                        "unknown-region",
                        f"unknown ISO 3166-2 region '{region}'",
                        self.hint(region, "region", functools.partial(self.places.regions_of, country)),
                    )

    def _fabrics(self) -> None:
        fabrics = _items(self.data, "fabrics")
        if fabrics and not any(f.get("purpose") == "management" for _, f in fabrics):
            self.add(
                ("fabrics",),
                "no-management-fabric",
                "no fabric has purpose 'management'",
                "every site needs one management fabric that every pool is on",
            )
        networks: list[tuple[int, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
        usage = self._fabric_usage()
        for i, fabric in fabrics:
            cidr = fabric.get("cidr")
            if not isinstance(cidr, str) or not grammar.matches(grammar.CIDR, cidr):
                continue
            try:
                network = ipaddress.ip_network(cidr, strict=True)
            except ValueError as exc:
                hint = None
                try:
                    hint = f"did you mean {ipaddress.ip_network(cidr, strict=False)}?"
                except ValueError:
                    pass
                self.add(("fabrics", i, "cidr"), "bad-cidr", f"'{cidr}' is not a valid network: {exc}", hint)
                continue
            networks.append((i, network))
            self._fabric_capacity(i, fabric, network, usage.get(fabric.get("name"), (0, 0)))
        self._overlaps(networks)

    def _overlaps(self, networks: list[tuple[int, ipaddress.IPv4Network | ipaddress.IPv6Network]]) -> None:
        """Overlapping CIDRs, by one sweep over the networks sorted by first address (n log n, not
        every pair): each fabric that overlaps an earlier-sorted one is reported once, the later
        written of the two against the other, so 1,000 copies of a CIDR give 999 problems, not 500,000."""
        ordered = sorted(
            networks,
            key=lambda item: (item[1].version, int(item[1].network_address), -item[1].num_addresses, item[0]),
        )
        reported: set[int] = set()
        reach: tuple[int, ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None  # furthest end so far
        for index, network in ordered:
            other = reach[1] if reach else None
            if reach and other and other.version == network.version and network.overlaps(other):
                later, (earlier, first) = max(index, reach[0]), min((index, network), reach)
                if later not in reported:
                    reported.add(later)
                    shown = network if later == index else other
                    self.add(
                        ("fabrics", later, "cidr"),
                        "overlapping-cidr",
                        f"{shown} overlaps fabrics[{earlier}] ({first})",
                    )
            if not reach or reach[1].version != network.version or _end(network) > _end(reach[1]):
                reach = (index, network)

    def _fabric_usage(self) -> dict[Any, tuple[int, int]]:
        """(hosts, BMCs) on each fabric name, from one pass over the pools."""
        usage: dict[Any, tuple[int, int]] = {}
        for _, pool in _items(self.data, "node_pools"):
            count = pool.get("count")
            if not isinstance(count, int) or count < 1:
                continue
            names = pool.get("fabrics")
            for name in set(names) if isinstance(names, list) else ():
                if isinstance(name, str):
                    hosts, bmcs = usage.get(name, (0, 0))
                    usage[name] = (hosts + count, bmcs)
            bmc = pool.get("bmc")
            fabric = bmc.get("fabric") if isinstance(bmc, dict) else None
            if isinstance(fabric, str):
                hosts, bmcs = usage.get(fabric, (0, 0))
                usage[fabric] = (hosts, bmcs + count)
        return usage

    def _fabric_capacity(
        self,
        index: int,
        fabric: dict[str, Any],
        network: ipaddress.IPv4Network | ipaddress.IPv6Network,
        usage: tuple[int, int],
    ) -> None:
        rails = fabric.get("rails", 1)
        rails = rails if isinstance(rails, int) and rails >= 1 else 1
        hosts, bmcs = usage
        reserved = RESERVED_V4 if network.version == 4 else RESERVED_V6
        needed = hosts * rails + bmcs + reserved
        if needed > network.num_addresses:
            self.add(
                ("fabrics", index, "cidr"),
                "fabric-too-small",
                f"{network} has {network.num_addresses} addresses but needs {needed} "
                f"({hosts} hosts x {rails} rail(s) + {bmcs} BMCs + {reserved} reserved)",
                "use a larger prefix",
            )

    def _pools(self) -> None:
        for i, pool in _items(self.data, "node_pools"):
            path: PathKey = ("node_pools", i)
            on_management = False
            for j, name in _str_list(pool.get("fabrics")):
                fabric = self.ref(path + ("fabrics", j), name, "fabrics", "fabric")
                on_management |= bool(fabric and fabric.get("purpose") == "management")
            self._interface_names(path, pool)
            if isinstance(pool.get("fabrics"), list) and pool["fabrics"] and not on_management:
                self.add(
                    path + ("fabrics",),
                    "no-management-fabric",
                    f"pool '{pool.get('name')}' is on no management fabric",
                    "add the site's management fabric to its fabrics",
                )
            hardware = pool.get("hardware")
            if pool.get("role") == "gpu" and not (isinstance(hardware, dict) and hardware.get("gpu")):
                self.add(
                    path + ("hardware", "gpu") if isinstance(hardware, dict) else path + ("hardware",),
                    "gpu-pool-without-gpus",
                    "a gpu pool must declare hardware.gpu (model and count)",
                    missing=True,
                )
            bmc = pool.get("bmc")
            if isinstance(bmc, dict):
                fabric = self.ref(path + ("bmc", "fabric"), bmc.get("fabric"), "fabrics", "fabric")
                # An unknown purpose is the model's to report.
                if fabric and fabric.get("purpose") in ("management", "compute", "storage"):
                    self.add(
                        path + ("bmc", "fabric"),
                        "bmc-fabric-purpose",
                        f"fabric '{bmc.get('fabric')}' has purpose '{fabric.get('purpose')}', not 'bmc'",
                    )

    def _interface_names(self, path: PathKey, pool: dict[str, Any]) -> None:
        """Two fabrics of a pool must not give a host the same interface name (`compute` with 2
        rails makes compute0 and compute1, as does a fabric named `compute0`)."""
        taken: dict[str, str] = {}
        for j, name in _str_list(pool.get("fabrics")):
            fabric = self.names["fabrics"].get(name)
            rails = fabric.get("rails", 1) if fabric else None
            if not isinstance(rails, int) or rails < 1:
                continue
            for rail in range(rails):
                ifname = interface_name(name, rail, rails)
                if taken.setdefault(ifname, name) != name:
                    self.add(
                        path + ("fabrics", j),
                        "interface-name-clash",
                        f"fabric '{name}' would give hosts the interface '{ifname}', "
                        f"which fabric '{taken[ifname]}' also gives them",
                        "rename one of the fabrics",
                    )
                    break

    def _storage(self) -> None:
        for i, store in _items(self.data, "storage"):
            path: PathKey = ("storage", i)
            for j, replica in _str_list(store.get("replicas")):
                if replica == store.get("name"):
                    self.add(
                        path + ("replicas", j), "self-replica", "a storage system cannot be its own replica"
                    )
                else:
                    self.ref(path + ("replicas", j), replica, "storage", "storage")
            mount = store.get("mount_path")
            if store.get("kind") == "s3":
                if mount is not None:
                    self.add(
                        path + ("mount_path",),
                        "s3-mount-path",
                        "s3 storage is not mounted: remove mount_path",
                    )
                if store.get("mounted_by") is not None:
                    self.add(
                        path + ("mounted_by",),
                        "s3-mount-path",
                        "s3 storage is not mounted: remove mounted_by",
                    )
            elif store.get("kind") in ("lustre", "ceph", "nfs", "weka"):
                if mount is None:
                    self.add(
                        path + ("mount_path",),
                        "missing-mount-path",
                        f"missing mount_path: {store.get('kind')} storage is mounted on hosts",
                        missing=True,
                    )

    def _datasets(self) -> None:
        by_storage: dict[str, list[tuple[int, str]]] = {}
        for i, dataset in _items(self.data, "datasets"):
            path: PathKey = ("datasets", i)
            self.place(path + ("residency",), dataset.get("residency"))
            value = dataset.get("path")
            # A path outside the path grammar is reported by the model.
            if isinstance(value, str) and grammar.matches(grammar.PATH, value):
                by_storage.setdefault(str(dataset.get("storage")), []).append((i, posixpath.normpath(value)))
        for store, paths in by_storage.items():
            for i, value, j, other in _nested_paths(paths):
                self.add(
                    ("datasets", i, "path"),
                    "nested-dataset",
                    f"'{value}' is inside datasets[{j}]'s path '{other}' on storage '{store}'",
                )

    def _grants(self) -> None:
        for i, grant in _items(self.data, "access"):
            path: PathKey = ("access", i)
            resource = grant.get("resource")
            kind = None
            if isinstance(resource, str) and grammar.matches(grammar.RESOURCE, resource):
                kind, name = resource.split("/", 1)
                if kind in ("dataset", "model"):
                    self.ref(path + ("resource",), name, kind + "s", kind)
            actions = [a for _, a in _str_list(grant.get("actions"))]
            allowed = DATASET_ACTIONS if kind == "dataset" else MODEL_ACTIONS if kind == "model" else ()
            for j, action in _str_list(grant.get("actions")):
                if allowed and action in MODEL_ACTIONS + DATASET_ACTIONS and action not in allowed:
                    self.add(
                        path + ("actions", j),
                        "bad-action",
                        f"'{action}' is not an action on a {kind}; allowed: {', '.join(allowed)}",
                    )
            has_to = "to" in grant
            if "export" in actions and not has_to:
                self.add(
                    path + ("to",),
                    "export-without-to",
                    "an export grant must name where the model goes in 'to'",
                    missing=True,
                )
            elif has_to and "export" not in actions:
                self.add(
                    path + ("to",), "to-without-export", "'to' is only allowed on grants that include export"
                )
            if has_to:
                self.place(path + ("to",), grant.get("to"))

    def _egress(self) -> None:
        egress = self.data.get("egress")
        for i, rule in _items(egress if isinstance(egress, dict) else {}, "allow"):
            self.place(("egress", "allow", i, "country"), rule.get("country"), country_only=True)
