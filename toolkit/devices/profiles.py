"""Device data (SoCs, phones, measured speeds) from the JSON files in ``data/``, and phone lookup by name.

Names are matched after folding case and dropping spaces and punctuation, so "xiaomi12pro",
"Xiaomi 12 Pro", "2201122C" and "Oneplus LE 2100" all resolve. Unknown names raise a one-line
:class:`MCPMError` (exit 2) that lists the closest phones.
"""
from __future__ import annotations

import difflib
import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources

from mcpm_mobile.errors import MCPMError
from mcpm_mobile.target import OS_LABELS, OSES

GIB = 1 << 30
GPU_BACKENDS = ("opencl", "metal", "vulkan")


@dataclass(frozen=True)
class MemoryOption:
    type: str
    mts: int
    bus_bits: int
    peak_gbs: float

    @property
    def computed_gbs(self) -> float:
        return self.bus_bits / 8 * self.mts / 1000


@dataclass(frozen=True)
class Soc:
    id: str
    name: str
    vendor: str
    cpu: dict
    gpu: dict
    npu: dict
    memory: tuple[MemoryOption, ...]
    source: str
    aliases: tuple[str, ...] = ()
    unverified: tuple[str, ...] = ()
    note: str = ""

    @property
    def metal_family(self) -> int | None:
        return self.gpu.get("metal_family")

    def memory_option(self, ram_type: str | None) -> MemoryOption:
        for m in self.memory:
            if m.type == ram_type:
                return m
        return self.memory[0]

    def hw_class(self, backend: str) -> str:
        """The hardware group a runtime's efficiency is fitted for: GPU, CPU or NPU family."""
        if backend in GPU_BACKENDS:
            return self.gpu["class"]
        if backend == "npu":
            return self.npu["class"]
        return self.cpu["class"]

    def compute_gflops(self, backend: str) -> float | None:
        """FP32 GFLOPS of the unit the backend runs on, where a source gives it (GPUs only so far)."""
        return self.gpu.get("fp32_gflops") if backend in GPU_BACKENDS else None


@dataclass(frozen=True)
class Phone:
    id: str
    name: str
    brand: str
    soc: Soc
    ram_gb: float
    ram_type: str
    os: str
    os_version: str
    year: int
    source: str
    aliases: tuple[str, ...] = ()
    model_codes: tuple[str, ...] = ()
    ram_variants_gb: tuple[float, ...] = ()
    readme_name: str | None = None
    corrections: tuple[dict, ...] = ()
    unverified: tuple[str, ...] = ()
    note: str = ""

    @property
    def ram_bytes(self) -> int:
        return int(self.ram_gb * GIB)

    @property
    def memory(self) -> MemoryOption:
        return self.soc.memory_option(self.ram_type)

    @property
    def bandwidth_gbs(self) -> float:
        return self.memory.peak_gbs

    @property
    def os_label(self) -> str:
        return f"{OS_LABELS[self.os]} {self.os_version}".strip()


@dataclass(frozen=True)
class Measurement:
    id: str
    runtime: str
    backend: str
    model: str
    quantization: str
    decode_tps: float
    source: str
    phone: Phone | None = None
    soc: Soc | None = None
    device: str = ""
    prefill_tps: float | None = None
    weights_read_bytes: int | None = None
    exclude_from_fit: str | None = None
    readme_row: dict | None = None
    corrections: tuple[dict, ...] = ()
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def device_soc(self) -> Soc:
        return self.phone.soc if self.phone else self.soc

    @property
    def bandwidth_gbs(self) -> float:
        return self.phone.bandwidth_gbs if self.phone else self.soc.memory[0].peak_gbs

    @property
    def label(self) -> str:
        return self.phone.name if self.phone else self.device


def _read(name: str) -> dict:
    return json.loads(resources.files("mcpm_mobile.devices.data").joinpath(name).read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def soc_data() -> dict:
    return _read("socs.json")


@functools.lru_cache(maxsize=None)
def phone_data() -> dict:
    return _read("phones.json")


@functools.lru_cache(maxsize=None)
def measurement_data() -> dict:
    return _read("measurements.json")


@functools.lru_cache(maxsize=None)
def socs() -> dict[str, Soc]:
    out = {}
    for s in soc_data()["socs"]:
        memory = tuple(MemoryOption(m["type"], m["mts"], m["bus_bits"], m["peak_gbs"]) for m in s["memory"])
        out[s["id"]] = Soc(id=s["id"], name=s["name"], vendor=s["vendor"], cpu=s["cpu"], gpu=s["gpu"], npu=s["npu"],
                           memory=memory, source=s["source"], aliases=tuple(s.get("aliases", ())),
                           unverified=tuple(s.get("unverified", ())), note=s.get("note", ""))
    return out


@functools.lru_cache(maxsize=None)
def phones() -> dict[str, Phone]:
    table = socs()
    out = {}
    for p in phone_data()["phones"]:
        soc = table[p["soc"]]
        if p["os"] not in OSES:
            raise ValueError(f"phones.json: {p['id']}: unknown os {p['os']!r}")
        if p["ram_type"] not in {m.type for m in soc.memory}:
            raise ValueError(f"phones.json: {p['id']}: {soc.name} has no {p['ram_type']} option")
        out[p["id"]] = Phone(
            id=p["id"], name=p["name"], brand=p["brand"], soc=soc, ram_gb=p["ram_gb"], ram_type=p["ram_type"],
            os=p["os"], os_version=str(p["os_version"]), year=p["year"], source=p["source"],
            aliases=tuple(p.get("aliases", ())), model_codes=tuple(p.get("model_codes", ())),
            ram_variants_gb=tuple(p.get("ram_variants_gb", ())), readme_name=p.get("readme_name"),
            corrections=tuple(p.get("corrections", ())), unverified=tuple(p.get("unverified", ())),
            note=p.get("note", ""))
    return out


@functools.lru_cache(maxsize=None)
def measurements() -> tuple[Measurement, ...]:
    data = measurement_data()
    table, soc_table = phones(), socs()
    out = []
    for m in data["measurements"]:
        if m["runtime"] not in data["runtimes"]:
            raise ValueError(f"measurements.json: {m['id']}: unknown runtime {m['runtime']!r}")
        phone = table[m["phone"]] if "phone" in m else None
        out.append(Measurement(
            id=m["id"], runtime=m["runtime"], backend=m["backend"], model=m["model"],
            quantization=m["quantization"], decode_tps=m["decode_tps"], source=m["source"], phone=phone,
            soc=None if phone else soc_table[m["soc"]], device=m.get("device", ""),
            prefill_tps=m.get("prefill_tps"), weights_read_bytes=m.get("weights_read_bytes"),
            exclude_from_fit=m.get("exclude_from_fit"), readme_row=m.get("readme_row"),
            corrections=tuple(m.get("corrections", ())), raw=m))
    return tuple(out)


def runtimes() -> dict[str, dict]:
    return measurement_data()["runtimes"]


def app_memory() -> dict:
    return phone_data()["app_memory"]


def select(os: str | None = None, min_ram_gb: float | None = None) -> list[Phone]:
    """Phones filtered by OS and RAM, newest first, then by name."""
    chosen = [p for p in phones().values()
              if (os is None or p.os == os) and (min_ram_gb is None or p.ram_gb >= min_ram_gb)]
    return sorted(chosen, key=lambda p: (-p.year, p.name))


def _fold(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


@functools.lru_cache(maxsize=None)
def _name_index() -> dict[str, frozenset[str]]:
    keys: dict[str, set[str]] = {}

    def add(text, pid):
        if text and _fold(text):
            keys.setdefault(_fold(text), set()).add(pid)

    for p in phones().values():
        for text in (p.name, p.readme_name, *p.aliases, *p.model_codes):
            add(text, p.id)
        for code in p.model_codes:
            add(f"{p.brand} {code}", p.id)
        if p.name.lower().startswith(p.brand.lower() + " "):
            add(p.name[len(p.brand) + 1:], p.id)
        else:
            add(f"{p.brand} {p.name}", p.id)
    return {k: frozenset(v) for k, v in keys.items()}


def closest(name: str, n: int = 3) -> list[str]:
    """Phone names most similar to ``name`` (by folded name, alias or model code)."""
    index = _name_index()
    table = phones()
    found: list[str] = []
    for key in difflib.get_close_matches(_fold(name), list(index), n=12, cutoff=0.5):
        for pid in sorted(index[key]):
            if table[pid].name not in found:
                found.append(table[pid].name)
    return found[:n]


def find_phone(name: str) -> Phone:
    """Resolve a phone by name, alias, model code (e.g. HD1900, LE2100, M182Q) or case/spacing variant."""
    key = _fold(name or "")
    if not key:
        raise MCPMError("empty phone name; `mcpm-mobile devices` lists the known phones")
    hits = _name_index().get(key)
    if hits and len(hits) == 1:
        return phones()[next(iter(hits))]
    if hits:
        names = ", ".join(sorted(phones()[h].name for h in hits))
        raise MCPMError(f"'{name}' matches several phones: {names}; use the full name")
    near = closest(name)
    hint = f"; closest: {', '.join(near)}" if near else "; `mcpm-mobile devices` lists the known phones"
    raise MCPMError(f"unknown phone '{name}'{hint}")
