"""Decode speed as a range: tok/s = efficiency x peak bandwidth / bytes read per token.

Decoding one token streams every weight it multiplies plus the KV cache written so far, so memory
bandwidth bounds it; the efficiency says how much of the theoretical peak a runtime reaches. It is
fitted per (runtime, backend, hardware class) on the measured rows of data/measurements.json: the
geometric mean is the centre and the spread of the class gives the range. A class without rows
falls back, saying so, to the runtime/backend pooled over classes and then to every runtime on the
same kind of unit (GPU, CPU, NPU), each time with a wider range. Runtime versions are separate
runtimes (the 2024 MiniCPM MLC fork is not current MLC). Prefill is compute-bound and is modelled on
GPU FLOPS only from rows that are not bug reports. Efficiency 1 is the roofline.
"""
from __future__ import annotations

import functools
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mcpm_mobile.devices import profiles
from mcpm_mobile.devices.memory import kv_cache_bytes
from mcpm_mobile.devices.model_profile import (MODEL_PRESETS, params_per_token, preset_config, quantization_named,
                                             weight_bytes)

if TYPE_CHECKING:
    from mcpm_mobile.devices.model_profile import ModelProfile

# Widening factors applied to the spread of measured efficiencies (ratios, applied both ways).
SPREAD_MANY = 1.25  # a class with 3 or more rows: run-to-run, thermal and phone-to-phone scatter
SPREAD_FEW = 1.6  # a class with 1-2 rows: its own spread is not known
SPREAD_FALLBACK = 1.5  # a pooled range used for a class without rows
MAX_EFFICIENCY = 0.9  # no runtime streams more than 90 % of peak DRAM bandwidth
# Below this share of the smallest calibrated bytes-per-token, per-token overheads (kernel launches,
# sampling, synchronisation) dominate and the bandwidth model says nothing.
CALIBRATED_FLOOR = 0.25
SCALE_LIMIT = 4.0  # a measured figure is scaled to another model only within this ratio of bytes per token


def decode_context() -> int:
    """The context at which measured figures are assumed to be taken (no source records it)."""
    return profiles.measurement_data()["decode_context"]


def model_family(model: str) -> str | None:
    if model in MODEL_PRESETS:
        return model
    return profiles.measurement_data()["models"].get(model, {}).get("preset")


def backend_kind(backend: str) -> str:
    return "gpu" if backend in profiles.GPU_BACKENDS else backend


@dataclass(frozen=True)
class Point:
    """One measured row with what the bandwidth model needs."""

    m: profiles.Measurement
    bytes_per_token: float
    params: int | None
    hw_class: str

    @property
    def key(self) -> tuple[str, str, str]:
        return self.m.runtime, self.m.backend, self.hw_class

    @property
    def source_id(self) -> str:
        return self.m.source_id

    @property
    def ceiling(self) -> float:
        return self.m.bandwidth_gbs * 1e9 / self.bytes_per_token

    @property
    def implied(self) -> float:
        return self.m.decode_tps / self.ceiling

    @property
    def implied_prefill(self) -> float | None:
        flops = self.m.device_soc.compute_gflops(self.m.backend)
        if not (self.m.prefill_tps and self.params and flops) or self.m.bug_report:
            return None
        return self.m.prefill_tps * 2 * self.params / (flops * 1e9)

    @property
    def in_fit(self) -> bool:
        return not self.m.exclude_from_fit


def _terms(m: profiles.Measurement) -> tuple[float, int, int | None]:
    """(weight bytes read per token, KV bytes per context token, weights multiplied per token)."""
    family = model_family(m.model)
    if family:
        arch = preset_config(family)
        kv = kv_cache_bytes(arch.num_hidden_layers, arch.num_key_value_heads, arch.head_dim, 1, 2)
        weights = m.weights_read_bytes or weight_bytes(arch, quantization_named(m.quantization))[1]
        return weights, kv, params_per_token(arch)
    info = profiles.measurement_data()["models"][m.model]
    params = info.get("weights_params")
    weights = m.weights_read_bytes or params * quantization_named(m.quantization).bits_per_weight / 8
    return weights, info.get("kv_bytes_per_token") or 0, params


@functools.lru_cache(maxsize=None)
def points() -> tuple[Point, ...]:
    out = []
    for m in profiles.measurements():
        weights, kv, params = _terms(m)
        out.append(Point(m, weights + kv * decode_context(), params, m.device_soc.hw_class(m.backend)))
    return tuple(out)


def _geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


@dataclass(frozen=True)
class Efficiency:
    value: float  # centre: geometric mean of the rows used
    low: float
    high: float
    rows: int
    basis: str
    level: str  # "class", "runtime" (pooled over classes) or "kind" (every runtime on this kind of unit)

    @property
    def extrapolated(self) -> bool:
        return self.level != "class"


def _span(values: list[float], widen: float) -> tuple[float, float]:
    return min(values) / widen, min(max(values) * widen, MAX_EFFICIENCY)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


class Fitted:
    """Efficiencies fitted on a set of points; ``prefill=True`` fits the compute efficiency instead.

    Rows of one device with the same model and runtime (the README's three OnePlus 7T rows) count once,
    as their geometric mean, so a phone measured three times does not outweigh the others.
    """

    def __init__(self, pts, prefill: bool = False):
        self.prefill = prefill
        self.classes: dict[tuple, list[tuple[float, Point]]] = defaultdict(list)
        self.pooled: dict[tuple, list[tuple[float, Point]]] = defaultdict(list)
        self.kinds: dict[str, list[tuple[float, Point]]] = defaultdict(list)
        same: dict[tuple, list[tuple[float, Point]]] = defaultdict(list)
        for p in pts:
            value = p.implied_prefill if prefill else p.implied
            if p.in_fit and value:
                same[(p.m.label, p.m.model, p.m.quantization, *p.key)].append((value, p))
        for rows in same.values():
            value, p = _geomean([v for v, _ in rows]), rows[0][1]
            self.classes[p.key].append((value, p))
            self.pooled[p.key[:2]].append((value, p))
            self.kinds[backend_kind(p.m.backend)].append((value, p))

    def efficiency(self, runtime: str, backend: str, hw_class: str) -> Efficiency | None:
        rows = self.classes.get((runtime, backend, hw_class))
        if rows:
            values = [v for v, _ in rows]
            sources = sorted({p.source_id for _, p in rows})
            low, high = _span(values, SPREAD_MANY if len(values) >= 3 else SPREAD_FEW)
            return Efficiency(_geomean(values), low, high, len(rows),
                              f"{_plural(len(rows), 'device')} of {runtime}/{backend} on {hw_class} "
                              f"({_plural(len(sources), 'source')})", "class")
        rows = self.pooled.get((runtime, backend))
        if rows:
            values = [v for v, _ in rows]
            classes = sorted({p.hw_class for _, p in rows})
            low, high = _span(values, SPREAD_FALLBACK)
            return Efficiency(_geomean(values), low, high, len(rows),
                              f"no {runtime}/{backend} measurement on {hw_class}; range spans {runtime}/{backend} "
                              f"on {', '.join(classes)} ({_plural(len(rows), 'device')})", "runtime")
        rows = self.kinds.get(backend_kind(backend))
        if rows:
            values = [v for v, _ in rows]
            runtimes = sorted({p.m.runtime for _, p in rows})
            low, high = _span(values, SPREAD_FALLBACK)
            return Efficiency(_geomean(values), low, high, len(rows),
                              f"no {runtime}/{backend} measurement at all; wide range spanning every measured "
                              f"{backend_kind(backend).upper()} runtime ({', '.join(runtimes)})", "kind")
        return None


@functools.lru_cache(maxsize=None)
def fitted() -> Fitted:
    return Fitted(points())


@functools.lru_cache(maxsize=None)
def fitted_prefill() -> Fitted:
    return Fitted(points(), prefill=True)


@functools.lru_cache(maxsize=None)
def calibrated_bytes() -> tuple[float, float]:
    """Smallest and largest bytes per token among the fitted rows."""
    sizes = [p.bytes_per_token for p in points() if p.in_fit]
    return min(sizes), max(sizes)


@dataclass(frozen=True)
class Calibration:
    rows: list[dict]
    classes: list[dict]
    summary: dict


def _judge(eff: Efficiency | None, p: Point) -> dict:
    if eff is None:
        return {"tps": None, "low": None, "high": None, "error": None, "inside": False, "basis": "no prediction"}
    tps = eff.value * p.ceiling
    return {"tps": tps, "low": eff.low * p.ceiling, "high": eff.high * p.ceiling, "error": tps / p.m.decode_tps - 1,
            "inside": eff.low * p.ceiling <= p.m.decode_tps <= eff.high * p.ceiling, "basis": eff.basis,
            "level": eff.level}


def _errors(judged: list[dict]) -> dict:
    errors = [j["error"] for j in judged if j["error"] is not None]
    widths = [j["high"] / j["low"] for j in judged if j["low"]]
    out = {"rows": len(judged), "inside": sum(j["inside"] for j in judged),
           "inside_share": sum(j["inside"] for j in judged) / len(judged) if judged else None,
           "median_range_ratio": statistics.median(widths) if widths else None}
    if errors:
        absolute = [abs(e) for e in errors]
        out.update(mean_abs_error=statistics.fmean(absolute), median_abs_error=statistics.median(absolute),
                   max_abs_error=max(absolute),
                   rms_log_error=math.sqrt(statistics.fmean(math.log1p(e) ** 2 for e in errors)))
    return out


def calibration() -> Calibration:
    """How well the ranges hold: in-sample, and leave-one-source-out (the headline).

    Leave-one-source-out drops every row of one source (the MiniCPM README's 19 rows together, both
    rows of one GitHub issue together), refits, and asks whether each dropped row falls inside the
    range the tool would then have shown.
    """
    pts = points()
    full = fitted()
    by_source: dict[str, Fitted] = {}
    rows, in_judged, loso_judged = [], [], []
    for p in pts:
        if p.source_id not in by_source:
            by_source[p.source_id] = Fitted(q for q in pts if q.source_id != p.source_id)
        inside = _judge(full.efficiency(*p.key), p)
        loso = _judge(by_source[p.source_id].efficiency(*p.key), p)
        rows.append({"id": p.m.id, "source_id": p.source_id, "date": p.m.date, "device": p.m.label,
                     "soc": p.m.device_soc.name, "runtime": p.m.runtime, "runtime_version": p.m.runtime_version,
                     "backend": p.m.backend, "class": p.hw_class, "model": p.m.model,
                     "quantization": p.m.quantization, "bandwidth_gbs": p.m.bandwidth_gbs,
                     "bytes_per_token": p.bytes_per_token, "measured_tps": p.m.decode_tps,
                     "implied_efficiency": p.implied, "roofline_tps": p.ceiling,
                     "in_sample_tps": inside["tps"], "in_sample_low": inside["low"], "in_sample_high": inside["high"],
                     "in_sample_inside": inside["inside"], "in_sample_error": inside["error"],
                     "loso_tps": loso["tps"], "loso_low": loso["low"], "loso_high": loso["high"],
                     "loso_inside": loso["inside"], "loso_error": loso["error"], "loso_basis": loso["basis"],
                     "excluded": p.m.exclude_from_fit})
        if p.in_fit:
            in_judged.append(inside)
            loso_judged.append(loso)
    classes = []
    for key, values in sorted(full.classes.items()):
        effs = [v for v, _ in values]
        eff = full.efficiency(*key)
        classes.append({"runtime": key[0], "backend": key[1], "class": key[2], "rows": len(effs),
                        "sources": len({p.source_id for _, p in values}), "efficiency": eff.value,
                        "min": min(effs), "max": max(effs), "low": eff.low, "high": eff.high})
    summary = {"context_tokens": decode_context(), "sources": len(by_source),
               "leave_one_source_out": _errors(loso_judged), "in_sample": _errors(in_judged),
               "outside_loso": [r["id"] for r in rows if not r["excluded"] and not r["loso_inside"]],
               "prefill": prefill_summary(),
               "note": "inside: the measured decode speed lies in the range the tool shows; errors compare the "
                       "range's centre with the measurement (predicted / measured - 1)"}
    return Calibration(rows, classes, summary)


def prefill_summary() -> dict:
    usable = [p for p in points() if p.in_fit and p.implied_prefill]
    skipped = sorted({p.m.id for p in points() if p.m.prefill_tps and p.m.bug_report})
    if not usable:
        return {"rows": 0, "skipped_bug_reports": skipped,
                "note": "no prefill model: no row with a prefill figure, a FLOPS figure and no bug report"}
    return {"rows": len(usable), "skipped_bug_reports": skipped, "ids": [p.m.id for p in usable]}


def runtime_names() -> list[str]:
    return list(profiles.runtimes())


def default_runtime(os: str) -> str:
    for name, rt in profiles.runtimes().items():
        if os in rt.get("default_for", ()):
            return name
    raise ValueError(f"measurements.json: no default runtime for {os}")


def backend_for(runtime: str, phone: profiles.Phone) -> tuple[str | None, str]:
    """The backend ``runtime`` uses on ``phone``, or None and why it does not run there."""
    rt = profiles.runtimes()[runtime]
    backend = rt["backends"].get(phone.os)
    if backend is None:
        return None, f"{rt['label']} does not run on {profiles.OS_LABELS[phone.os]}"
    if phone.installs_apk is False and phone.os in rt.get("needs_apk_on", ()):
        return None, (f"{rt['label']} ships as an Android APK, and {phone.os_label} installs no APKs "
                      "(HarmonyOS NEXT runs native apps only)")
    if rt.get("socs") and phone.soc.id not in rt["socs"]:
        return None, f"{rt['label']} does not support the {phone.soc.name}"
    if backend == "metal" and (phone.soc.metal_family or 0) < rt.get("metal_min_family", 0):
        return "cpu", f"{rt['label']} uses the CPU below Apple{rt['metal_min_family']} GPUs"
    if backend == "opencl" and not phone.soc.gpu.get("opencl"):
        return backend, f"OpenCL on the {phone.soc.gpu['name']} is not confirmed"
    return backend, ""


@dataclass
class Measured:
    """A measured figure for this phone or its SoC, scaled to the asked model by bytes per token."""

    tps: float  # scaled to the asked model
    measured_tps: float
    scale: float  # bytes per token of the measured model / of the asked model
    where: str  # "this phone" or "same SoC (<device>)"
    runtime: str
    runtime_label: str
    runtime_version: str
    model: str
    quantization: str
    source: str
    date: str
    id: str
    relation: str  # "same runtime", "comparable runtime" or "other runtime"
    corrections: tuple[dict, ...] = ()

    @property
    def leads(self) -> bool:
        """Whether an answer for the asked runtime may lead with this figure."""
        return self.relation != "other runtime"


@dataclass
class Speed:
    runtime: str
    backend: str | None
    context: int
    efficiency: Efficiency | None = None
    decode_tps: float | None = None  # centre at the chosen context
    decode_low: float | None = None
    decode_high: float | None = None
    decode_tps_short: float | None = None  # centre at decode_context(), comparable with measured figures
    decode_low_short: float | None = None
    decode_high_short: float | None = None
    ceiling_tps: float | None = None  # roofline at the chosen context
    ceiling_tps_short: float | None = None
    prefill_tps: float | None = None
    prefill_basis: str = ""
    measured: list[Measured] = field(default_factory=list)
    note: str = ""
    below_calibration: bool = False  # far smaller than any measured model: no speed figure at all

    @property
    def lead(self) -> Measured | None:
        """The measured figure an answer leads with: same runtime first, this phone before its SoC."""
        return self.measured[0] if self.measured and self.measured[0].leads else None


def measured_for(profile: "ModelProfile", phone: profiles.Phone, runtime: str) -> list[Measured]:
    """Rows measured on this phone or its SoC, scaled to ``profile`` by bytes per token.

    Rows of ``runtime`` or a comparable runtime come first (an answer leads with them); rows of other
    runtimes that run on this phone follow, labelled as such.
    """
    rt = profiles.runtimes()[runtime]
    comparable = set(rt.get("comparable", ()))
    family = profile.family
    want = profile.weights_read_bytes + profile.kv_bytes(decode_context())
    out = []
    for p in points():
        m = p.m
        if not p.in_fit or m.device_soc.id != phone.soc.id or backend_for(m.runtime, phone)[0] != m.backend:
            continue
        same_model = family is not None and model_family(m.model) == family and m.quantization == profile.quantization
        scale = 1.0 if same_model else p.bytes_per_token / want
        if not (1 / SCALE_LIMIT <= scale <= SCALE_LIMIT):
            continue
        where = "this phone" if m.phone is not None and m.phone.id == phone.id else f"same SoC ({m.label})"
        relation = ("same runtime" if m.runtime == runtime else
                    "comparable runtime" if m.runtime in comparable else "other runtime")
        out.append(Measured(m.decode_tps * scale, m.decode_tps, scale, where, m.runtime,
                            profiles.runtimes()[m.runtime]["label"], m.runtime_version, m.model, m.quantization,
                            m.source, m.date, m.id, relation, m.corrections))
    order = {"same runtime": 0, "comparable runtime": 1, "other runtime": 2}
    out.sort(key=lambda x: (order[x.relation], x.where != "this phone", x.scale != 1.0, -x.tps))
    return out


def predict(profile: "ModelProfile", phone: profiles.Phone, context: int, runtime: str | None = None) -> Speed:
    runtime = runtime or default_runtime(phone.os)
    if runtime not in profiles.runtimes():
        raise ValueError(f"unknown runtime {runtime!r}")
    backend, note = backend_for(runtime, phone)
    speed = Speed(runtime, backend, context, note=note)
    bandwidth = phone.bandwidth_gbs * 1e9
    short = min(decode_context(), context)
    per_token, per_token_short = (profile.weights_read_bytes + profile.kv_bytes(context),
                                  profile.weights_read_bytes + profile.kv_bytes(short))
    speed.ceiling_tps = bandwidth / per_token
    speed.ceiling_tps_short = bandwidth / per_token_short
    if backend is None:
        return speed
    speed.measured = measured_for(profile, phone, runtime)
    smallest, largest = calibrated_bytes()
    if per_token_short < CALIBRATED_FLOOR * smallest:
        speed.below_calibration = True
        speed.prefill_basis = "no prefill figure for a model this small"
        speed.note = (f"no speed estimate: the model reads {_size(per_token_short)} per token, far below the "
                      f"calibrated range ({_size(smallest)}-{_size(largest)} per token), where fixed per-token "
                      "costs, not bandwidth, set the speed")
        return speed
    hw_class = phone.soc.hw_class(backend)
    eff = speed.efficiency = fitted().efficiency(runtime, backend, hw_class)
    if eff:
        speed.decode_tps, speed.decode_low, speed.decode_high = (
            eff.value * speed.ceiling_tps, eff.low * speed.ceiling_tps, eff.high * speed.ceiling_tps)
        speed.decode_tps_short, speed.decode_low_short, speed.decode_high_short = (
            eff.value * speed.ceiling_tps_short, eff.low * speed.ceiling_tps_short,
            eff.high * speed.ceiling_tps_short)
    flops = phone.soc.compute_gflops(backend)
    prefill = fitted_prefill().efficiency(runtime, backend, hw_class)
    if flops and prefill and not prefill.extrapolated:
        speed.prefill_tps = prefill.value * flops * 1e9 / (2 * profile.params_per_token)
        speed.prefill_basis = f"{prefill.value:.0%} of {flops:g} GFLOPS, {prefill.basis}"
    elif not flops:
        speed.prefill_basis = f"no FLOPS figure for the {backend} unit of the {phone.soc.name}"
    else:
        skipped = prefill_summary()["skipped_bug_reports"]
        speed.prefill_basis = (f"no prefill figure: no measured {runtime}/{backend} prefill on this class outside bug "
                               f"reports" + (f" (not used: {', '.join(skipped)})" if skipped else ""))
    return speed


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"
