"""What a BMC says a system is, and whether that matches what the plan expects there.

A BMC reports as much as its firmware knows: real servers give model, serial, processors (CPUs and
GPUs alike, told apart by ProcessorType), memory and NICs; an emulator may give only a UUID. What is
not reported is listed as *unverified*, never silently passed; what is reported and differs is a
*mismatch*, and provisioning stops on it (fail closed: a wrong box must not join the cluster).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from aifactory.provision.redfish import RedfishClient

MEMORY_TOLERANCE = 0.02  # BMCs report usable memory; allow 2% below or above the plan


@dataclass(frozen=True)
class SystemIdentity:
    system_id: str
    uuid: str
    manufacturer: str | None = None
    model: str | None = None
    serial: str | None = None
    macs: tuple[str, ...] = ()
    sockets: int | None = None
    cpus: int | None = None  # cores across present CPU sockets
    memory_gib: float | None = None
    gpu_count: int | None = None
    gpu_models: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["macs"] = list(self.macs)
        data["gpu_models"] = list(self.gpu_models)
        return data


@dataclass(frozen=True)
class Expectation:
    """What the plan (and the optional asset register) says should be at this BMC."""

    cpus: int | None = None
    memory_gib: float | None = None
    gpu_count: int | None = None
    gpu_model: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    serial: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Expectation:
        data = data or {}
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Mismatch:
    field: str
    planned: Any
    reported: Any

    def render(self) -> str:
        return f"{self.field}: plan {self.planned!r}, BMC reports {self.reported!r}"


@dataclass(frozen=True)
class InventoryCheck:
    mismatches: tuple[Mismatch, ...] = ()
    unverified: tuple[str, ...] = ()
    verified: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def as_dict(self) -> dict[str, Any]:
        return {
            "mismatches": [asdict(m) for m in self.mismatches],
            "unverified": list(self.unverified),
            "verified": list(self.verified),
        }


def _present(resource: dict[str, Any]) -> bool:
    return (resource.get("Status") or {}).get("State", "Enabled") not in ("Absent", "Disabled")


def read_identity(client: RedfishClient, system: dict[str, Any]) -> SystemIdentity:
    """Collect the identity from a system resource and the collections it links to."""
    processors = [p for p in client.members(system, "Processors") if _present(p)]
    nics = client.members(system, "EthernetInterfaces")
    return identity_from_resources(system, processors, nics)


def identity_from_resources(
    system: dict[str, Any], processors: list[dict[str, Any]], nics: list[dict[str, Any]]
) -> SystemIdentity:
    cpus = [p for p in processors if p.get("ProcessorType", "CPU") == "CPU"]
    gpus = [p for p in processors if p.get("ProcessorType") == "GPU"]
    summary = system.get("ProcessorSummary") or {}
    cores: int | None
    if cpus and all(isinstance(p.get("TotalCores"), int) for p in cpus):
        cores = sum(int(p["TotalCores"]) for p in cpus)
    else:
        cores = summary.get("CoreCount")
    macs = sorted(
        {
            str(n.get("PermanentMACAddress") or n.get("MACAddress")).lower()
            for n in nics
            if n.get("PermanentMACAddress") or n.get("MACAddress")
        }
    )
    memory = (system.get("MemorySummary") or {}).get("TotalSystemMemoryGiB")
    return SystemIdentity(
        system_id=str(system.get("Id", "")),
        uuid=str(system.get("UUID") or system.get("Id", "")).lower(),
        manufacturer=system.get("Manufacturer"),
        model=system.get("Model"),
        serial=system.get("SerialNumber"),
        macs=tuple(macs),
        sockets=len(cpus) if cpus else summary.get("Count"),
        cpus=cores,
        memory_gib=memory,
        gpu_count=len(gpus) if processors else None,
        gpu_models=tuple(sorted({str(g.get("Model")) for g in gpus if g.get("Model")})),
    )


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]


def gpu_model_matches(planned: str, reported: str) -> bool:
    """`H100-SXM5-80GB` matches `NVIDIA H100 80GB HBM3`: the plan's first token (the GPU family)
    must appear among the reported model's tokens."""
    wanted = _tokens(planned)
    return bool(wanted) and wanted[0] in _tokens(reported)


def check_inventory(identity: SystemIdentity, expect: Expectation) -> InventoryCheck:
    mismatches: list[Mismatch] = []
    unverified: list[str] = []
    verified: list[str] = []

    def compare(name: str, planned: Any, reported: Any, same: bool) -> None:
        if planned is None:
            return
        if reported is None or reported == "":
            unverified.append(name)
        elif same:
            verified.append(name)
        else:
            mismatches.append(Mismatch(name, planned, reported))

    for name in ("manufacturer", "model", "serial"):
        planned, reported = getattr(expect, name), getattr(identity, name)
        compare(name, planned, reported, str(planned).strip().lower() == str(reported).strip().lower())
    compare("cpus", expect.cpus, identity.cpus, identity.cpus == expect.cpus)
    if expect.memory_gib is not None and identity.memory_gib is not None:
        slack = max(1.0, MEMORY_TOLERANCE * float(expect.memory_gib))
        compare(
            "memory_gib",
            expect.memory_gib,
            identity.memory_gib,
            abs(float(identity.memory_gib) - float(expect.memory_gib)) <= slack,
        )
    else:
        compare("memory_gib", expect.memory_gib, identity.memory_gib, False)
    # GPUs: a BMC that lists no GPU processors may keep them elsewhere (an HGX baseboard's own
    # system): zero reported GPUs is "unverified", a different non-zero count is a mismatch.
    reported_gpus = identity.gpu_count or None
    compare("gpu_count", expect.gpu_count, reported_gpus, reported_gpus == expect.gpu_count)
    if expect.gpu_model is not None and identity.gpu_models:
        compare(
            "gpu_model",
            expect.gpu_model,
            ", ".join(identity.gpu_models),
            all(gpu_model_matches(expect.gpu_model, m) for m in identity.gpu_models),
        )
    elif expect.gpu_model is not None:
        unverified.append("gpu_model")
    return InventoryCheck(tuple(mismatches), tuple(unverified), tuple(verified))
