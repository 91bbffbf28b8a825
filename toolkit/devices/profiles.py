"""Device data (SoCs, phones, measured speeds) from the JSON files in ``data/``, and lookup by name.

Names are matched after folding case, reading "+" as "plus" and dropping spaces and punctuation, so
"xiaomi12pro", "Xiaomi 12 Pro", "2201122C", "s24+" and "Oneplus LE 2100" all resolve, while "+", Pro,
Max, Ultra, FE and Lite models stay distinct: a name matches exactly or not at all. A name shared by
regional variants with different SoCs (Galaxy S24: Exynos or Snapdragon) resolves to all of them.
Unknown names raise a one-line :class:`MCPMError` (exit 2) naming phones of the same family and how
to ask by SoC and RAM instead.
"""
from __future__ import annotations

import dataclasses
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
    installs_apk: bool | None = None  # HarmonyOS NEXT: False
    model: str | None = None  # regional variants of one model share this key
    variant: str = ""
    memory_mts: int | None = None  # the phone's own memory speed where a source gives it (else the SoC's)

    @property
    def ram_bytes(self) -> int:
        return int(self.ram_gb * GIB)

    @property
    def memory(self) -> MemoryOption:
        option = self.soc.memory_option(self.ram_type)
        if self.memory_mts and self.memory_mts != option.mts:
            return MemoryOption(option.type, self.memory_mts, option.bus_bits,
                                round(option.bus_bits / 8 * self.memory_mts / 1000, 1))
        return option

    @property
    def bandwidth_gbs(self) -> float:
        return self.memory.peak_gbs

    @property
    def bandwidth_basis(self) -> str:
        if self.memory_mts:
            return f"{self.memory.type}-{self.memory.mts} as shipped in this phone"
        return (f"{self.memory.type}-{self.memory.mts}, the fastest the {self.soc.name} supports with this memory "
                "type; the phone's own memory speed is not recorded")

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
    source_id: str = ""
    date: str = ""
    runtime_version: str = ""
    bug_report: str | None = None
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
            note=p.get("note", ""), installs_apk=p.get("installs_apk"), model=p.get("model"),
            variant=p.get("variant", ""), memory_mts=p.get("memory_mts"))
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
            corrections=tuple(m.get("corrections", ())), source_id=m["source_id"], date=str(m["date"]),
            runtime_version=m["runtime_version"], bug_report=m.get("bug_report"), raw=m))
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
    return re.sub(r"[^0-9a-z]", "", text.lower().replace("+", "plus"))


def _base(name: str) -> str:
    """The marketing name without a trailing "(variant)": "Samsung Galaxy S24 (Exynos)" -> "Samsung Galaxy S24"."""
    return re.sub(r"\s*\([^)]*\)\s*$", "", name)


def _names(p: Phone) -> list[str]:
    """The ways users type a phone: full name, without brand, Samsung without "Galaxy", aliases, codes."""
    out = [p.name, p.readme_name, *p.aliases, *p.model_codes]
    for name in {p.name, _base(p.name)} if p.model else {p.name}:
        short = name[len(p.brand) + 1:] if name.lower().startswith(p.brand.lower() + " ") else name
        out += [name, short, f"{p.brand} {short}"]
        if short.lower().startswith("galaxy "):
            out += [short[len("galaxy "):], f"{p.brand} {short[len('galaxy '):]}"]
        if p.brand == "Xiaomi" and short.lower().startswith("redmi "):
            out.append(short)
    out += [f"{p.brand} {code}" for code in p.model_codes]
    return [n for n in out if n]


@functools.lru_cache(maxsize=None)
def _name_index() -> dict[str, frozenset[str]]:
    keys: dict[str, set[str]] = {}
    for p in phones().values():
        for text in _names(p):
            if _fold(text):
                keys.setdefault(_fold(text), set()).add(p.id)
    return {k: frozenset(v) for k, v in keys.items()}


def _common(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def same_family(name: str, n: int = 5) -> list[str]:
    """Phones of the same family as ``name``: those sharing its longest name prefix, most similar first."""
    key = _fold(name)
    index, table = _name_index(), phones()
    best = max((_common(k, key) for k in index), default=0)
    if best < 4:
        return closest(name, n)
    family = [k for k in index if _common(k, key) == best]
    family.sort(key=lambda k: -difflib.SequenceMatcher(None, k, key).ratio())
    found: list[str] = []
    for k in family:
        for pid in sorted(index[k]):
            if table[pid].name not in found:
                found.append(table[pid].name)
    return found[:n]


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


SOC_HINT = "or ask by chip and memory: mcpm-mobile check --soc \"Snapdragon 8 Gen 3\" --ram 12"


def find_phones(name: str) -> list[Phone]:
    """Every phone ``name`` stands for: one, or the regional variants of one model (never a guess)."""
    key = _fold(name or "")
    if not key:
        raise MCPMError("empty phone name; `mcpm-mobile devices` lists the known phones")
    hits = _name_index().get(key)
    if hits:
        found = sorted((phones()[h] for h in hits), key=lambda p: p.id)
        if len(found) == 1 or len({p.model for p in found} - {None}) == 1 and all(p.model for p in found):
            return found
        names = ", ".join(p.name for p in found)
        raise MCPMError(f"'{name}' matches several phones: {names}; use the full name")
    near = same_family(name)
    hint = f"; phones of that family: {', '.join(near)}" if near else ""
    by_name = {p.name: p for p in phones().values()}
    newest = max((by_name[n] for n in near), key=lambda p: p.year, default=None)
    soc_hint = (f'or ask by chip and memory: mcpm-mobile check --soc "{newest.soc.name}" --ram {newest.ram_gb:g}'
                if newest else SOC_HINT)
    raise MCPMError(f"unknown phone '{name}'{hint}; `mcpm-mobile devices` lists the known phones, {soc_hint}")


def find_phone(name: str) -> Phone:
    """Resolve one phone by name, alias, model code (HD1900, LE2100, M182Q) or case/spacing variant.

    A name shared by regional variants raises MCPMError naming them; :func:`find_phones` returns all.
    """
    found = find_phones(name)
    if len(found) > 1:
        raise MCPMError(f"'{name}' is sold with different chips: "
                        + "; ".join(f"{p.name} ({p.soc.name})" for p in found) + "; name one of them")
    return found[0]


@functools.lru_cache(maxsize=None)
def _soc_index() -> dict[str, str]:
    out = {}
    for s in socs().values():
        for text in (s.id, s.name, *s.aliases, s.vendor + " " + s.name):
            out.setdefault(_fold(text), s.id)
    return out


def find_soc(name: str) -> Soc:
    """A SoC by name or alias ("snapdragon 8 gen 3", "SM8650", "A17 Pro", "dimensity9300")."""
    key = _fold(name or "")
    hit = _soc_index().get(key)
    if hit:
        return socs()[hit]
    near = difflib.get_close_matches(key, list(_soc_index()), n=6, cutoff=0.5)
    names = list(dict.fromkeys(socs()[_soc_index()[k]].name for k in near))[:4]
    hint = f"; closest: {', '.join(names)}" if names else ""
    raise MCPMError(f"unknown SoC '{name}'{hint}")


def phone_from_soc(soc: Soc, ram_gb: float, os: str | None = None) -> Phone:
    """A phone not in the table, described by its SoC and RAM (fastest memory the SoC supports)."""
    default = "ios" if soc.vendor == "Apple" else ("harmonyos" if soc.vendor == "HiSilicon" else "android")
    os = os or default
    if (os == "ios") != (soc.vendor == "Apple"):
        raise MCPMError(f"the {soc.name} does not run {OS_LABELS[os]}")
    if ram_gb <= 0:
        raise MCPMError(f"--ram must be a positive number of GB (got {ram_gb:g})")
    mem = soc.memory[0]
    return Phone(id=f"soc:{soc.id}:{ram_gb:g}", name=f"a {soc.name} phone with {ram_gb:g} GB", brand="", soc=soc,
                 ram_gb=ram_gb, ram_type=mem.type, os=os, os_version="", year=0,
                 source=f"--soc {soc.name} --ram {ram_gb:g}: SoC data, {mem.type} at {mem.peak_gbs:g} GB/s assumed "
                        "(the fastest memory it supports)",
                 unverified=("ram_type",))


def with_ram(phone: Phone, ram_gb: float) -> Phone:
    """The same phone in another of its RAM options."""
    options = sorted(set(phone.ram_variants_gb) | {phone.ram_gb})
    if ram_gb not in options:
        raise MCPMError(f"{phone.name} comes with {' or '.join(f'{r:g}' for r in options)} GB; "
                        f"--ram {ram_gb:g} is not one of them")
    return dataclasses.replace(phone, ram_gb=ram_gb)
