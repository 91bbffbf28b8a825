"""Decode speed from memory bandwidth: tok/s = efficiency x peak bandwidth / bytes read per token.

Decoding one token streams every weight it multiplies plus the KV cache written so far, so memory
bandwidth bounds it; the efficiency says how much of the theoretical peak a runtime reaches. It is
fitted per (runtime, backend, hardware class) on the measured rows in data/measurements.json, as the
geometric mean of the implied efficiencies (least squares on log tok/s, so errors are relative).
A class without rows falls back to the runtime/backend pooled over classes and is marked
extrapolated. Prefill is compute-bound and is modelled the same way on GPU FLOPS where a source
gives them. Efficiency 1 is the roofline: no runtime can beat it.
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
from mcpm_mobile.devices.model_profile import MODEL_PRESETS, Arch, params_per_token, quantization_named, weight_bytes

if TYPE_CHECKING:
    from mcpm_mobile.devices.model_profile import ModelProfile


def decode_context() -> int:
    """The context at which measured figures are assumed to be taken (no source records it)."""
    return profiles.measurement_data()["decode_context"]


def model_family(model: str) -> str | None:
    if model in MODEL_PRESETS:
        return model
    return profiles.measurement_data()["models"].get(model, {}).get("preset")


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
    def ceiling(self) -> float:
        return self.m.bandwidth_gbs * 1e9 / self.bytes_per_token

    @property
    def implied(self) -> float:
        return self.m.decode_tps / self.ceiling

    @property
    def implied_prefill(self) -> float | None:
        flops = self.m.device_soc.compute_gflops(self.m.backend)
        if not (self.m.prefill_tps and self.params and flops):
            return None
        return self.m.prefill_tps * 2 * self.params / (flops * 1e9)

    @property
    def in_fit(self) -> bool:
        return not self.m.exclude_from_fit


def _terms(m: profiles.Measurement) -> tuple[float, int, int | None]:
    """(weight bytes read per token, KV bytes per context token, weights multiplied per token)."""
    family = model_family(m.model)
    if family:
        arch = Arch(**MODEL_PRESETS[family])
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
    value: float
    rows: int
    basis: str
    extrapolated: bool


class Fitted:
    """Efficiencies fitted on a set of points; ``prefill=True`` fits the compute efficiency instead."""

    def __init__(self, pts, prefill: bool = False):
        self.prefill = prefill
        self.classes: dict[tuple, list[tuple[float, Point]]] = defaultdict(list)
        self.pooled: dict[tuple, list[tuple[float, Point]]] = defaultdict(list)
        for p in pts:
            value = p.implied_prefill if prefill else p.implied
            if p.in_fit and value:
                self.classes[p.key].append((value, p))
                self.pooled[p.key[:2]].append((value, p))

    def efficiency(self, runtime: str, backend: str, hw_class: str) -> Efficiency | None:
        rows = self.classes.get((runtime, backend, hw_class))
        if rows:
            return Efficiency(_geomean([v for v, _ in rows]), len(rows),
                              f"fitted on {len(rows)} row{'s' * (len(rows) > 1)} of {runtime}/{backend}/{hw_class}",
                              False)
        rows = self.pooled.get((runtime, backend))
        if rows:
            classes = sorted({p.hw_class for _, p in rows})
            return Efficiency(_geomean([v for v, _ in rows]), len(rows),
                              f"extrapolated: no {hw_class} rows; {runtime}/{backend} pooled over "
                              f"{', '.join(classes)} ({len(rows)} rows)", True)
        return None


@functools.lru_cache(maxsize=None)
def fitted() -> Fitted:
    return Fitted(points())


@functools.lru_cache(maxsize=None)
def fitted_prefill() -> Fitted:
    return Fitted(points(), prefill=True)


def _relative_error(pred: float | None, measured: float) -> float | None:
    return None if pred is None else pred / measured - 1


@dataclass(frozen=True)
class Calibration:
    rows: list[dict]
    classes: list[dict]
    summary: dict


def _summary(errors: list[float]) -> dict:
    if not errors:
        return {"rows": 0}
    absolute = [abs(e) for e in errors]
    return {"rows": len(errors), "mean_abs_error": statistics.fmean(absolute),
            "median_abs_error": statistics.median(absolute), "max_abs_error": max(absolute),
            "rms_log_error": math.sqrt(statistics.fmean(math.log1p(e) ** 2 for e in errors))}


def calibration() -> Calibration:
    """In-sample and leave-one-out prediction error of the efficiency fit on the measured rows."""
    pts = points()
    full = fitted()
    rows, in_errors, loo_errors = [], [], []
    for i, p in enumerate(pts):
        eff = full.efficiency(*p.key)
        others = Fitted(q for j, q in enumerate(pts) if j != i)
        loo_eff = others.efficiency(*p.key)
        in_pred = eff.value * p.ceiling if eff else None
        loo_pred = loo_eff.value * p.ceiling if loo_eff else None
        row = {"id": p.m.id, "device": p.m.label, "soc": p.m.device_soc.name, "runtime": p.m.runtime,
               "backend": p.m.backend, "class": p.hw_class, "model": p.m.model, "quantization": p.m.quantization,
               "bandwidth_gbs": p.m.bandwidth_gbs, "bytes_per_token": p.bytes_per_token,
               "measured_tps": p.m.decode_tps, "implied_efficiency": p.implied, "roofline_tps": p.ceiling,
               "in_sample_tps": in_pred, "in_sample_error": _relative_error(in_pred, p.m.decode_tps),
               "loo_tps": loo_pred, "loo_error": _relative_error(loo_pred, p.m.decode_tps),
               "loo_basis": loo_eff.basis if loo_eff else "no other row for this runtime/backend",
               "excluded": p.m.exclude_from_fit}
        rows.append(row)
        if p.in_fit and row["loo_error"] is not None:
            in_errors.append(row["in_sample_error"])
            loo_errors.append(row["loo_error"])
    classes = []
    for key, values in sorted(full.classes.items()):
        effs = [v for v, _ in values]
        classes.append({"runtime": key[0], "backend": key[1], "class": key[2], "rows": len(effs),
                        "efficiency": _geomean(effs), "min": min(effs), "max": max(effs)})
    unpredictable = [r["id"] for r in rows if r["loo_tps"] is None]
    summary = {"context_tokens": decode_context(), "in_sample": _summary(in_errors),
               "leave_one_out": _summary(loo_errors),
               "rows_without_loo_prediction": unpredictable,
               "note": "errors are predicted / measured - 1 over rows that have a leave-one-out prediction"}
    return Calibration(rows, classes, summary)


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
    if rt.get("socs") and phone.soc.id not in rt["socs"]:
        return None, f"{rt['label']} does not support the {phone.soc.name}"
    if backend == "metal" and (phone.soc.metal_family or 0) < rt.get("metal_min_family", 0):
        return "cpu", f"{rt['label']} uses the CPU below Apple{rt['metal_min_family']} GPUs"
    if backend == "opencl" and not phone.soc.gpu.get("opencl"):
        return backend, f"OpenCL on the {phone.soc.gpu['name']} is not confirmed"
    return backend, ""


@dataclass
class Measured:
    tps: float
    runtime: str
    quantization: str
    source: str
    id: str
    corrections: tuple[dict, ...] = ()


@dataclass
class Speed:
    runtime: str
    backend: str | None
    context: int
    efficiency: Efficiency | None = None
    decode_tps: float | None = None  # at the chosen context
    decode_tps_short: float | None = None  # at decode_context(), comparable with measured figures
    ceiling_tps: float | None = None  # roofline at the chosen context
    ceiling_tps_short: float | None = None
    prefill_tps: float | None = None
    prefill_basis: str = ""
    measured: list[Measured] = field(default_factory=list)
    note: str = ""


def measured_for(profile: "ModelProfile", phone: profiles.Phone) -> list[Measured]:
    family = profile.family
    if not family:
        return []
    return [Measured(m.decode_tps, m.runtime, m.quantization, m.source, m.id, m.corrections)
            for m in profiles.measurements()
            if m.phone is phone and model_family(m.model) == family and not m.exclude_from_fit]


def predict(profile: "ModelProfile", phone: profiles.Phone, context: int, runtime: str | None = None) -> Speed:
    runtime = runtime or default_runtime(phone.os)
    if runtime not in profiles.runtimes():
        raise ValueError(f"unknown runtime {runtime!r}")
    backend, note = backend_for(runtime, phone)
    speed = Speed(runtime, backend, context, note=note, measured=measured_for(profile, phone))
    bandwidth = phone.bandwidth_gbs * 1e9
    short = min(decode_context(), context)
    speed.ceiling_tps = bandwidth / (profile.weights_read_bytes + profile.kv_bytes(context))
    speed.ceiling_tps_short = bandwidth / (profile.weights_read_bytes + profile.kv_bytes(short))
    if backend is None:
        return speed
    hw_class = phone.soc.hw_class(backend)
    speed.efficiency = fitted().efficiency(runtime, backend, hw_class)
    if speed.efficiency:
        speed.decode_tps = speed.efficiency.value * speed.ceiling_tps
        speed.decode_tps_short = speed.efficiency.value * speed.ceiling_tps_short
    flops = phone.soc.compute_gflops(backend)
    prefill = fitted_prefill().efficiency(runtime, backend, hw_class)
    if flops and prefill:
        speed.prefill_tps = prefill.value * flops * 1e9 / (2 * profile.params_per_token)
        speed.prefill_basis = f"{prefill.value:.0%} of {flops:g} GFLOPS, {prefill.basis}"
    elif not flops:
        speed.prefill_basis = f"no FLOPS figure for the {backend} unit of the {phone.soc.name}"
    else:
        speed.prefill_basis = f"no measured prefill for {runtime}/{backend}"
    return speed
