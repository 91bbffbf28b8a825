"""One phone, one model: the memory verdict and the speed prediction together (the library API)."""
from __future__ import annotations

from dataclasses import dataclass, field

from mcpm_mobile.devices import memory, profiles, speed
from mcpm_mobile.devices.model_profile import ModelProfile
from mcpm_mobile.errors import MCPMError
from mcpm_mobile.target import reference_phones


@dataclass
class Verdict:
    phone: profiles.Phone
    profile: ModelProfile
    memory: memory.MemoryFit
    speed: speed.Speed
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """"fits", "tight", "does not fit", or "no runtime" when the runtime cannot run on this phone at all."""
        return "no runtime" if self.speed.backend is None else self.memory.status

    @property
    def fits(self) -> bool:
        """True for "fits" and "tight": the runtime runs here and the model loads, with less room when tight."""
        return self.speed.backend is not None and self.memory.margin >= 0

    @property
    def margin_bytes(self) -> int:
        return self.memory.margin

    @property
    def need_bytes(self) -> int:
        return self.memory.need

    @property
    def usable_bytes(self) -> int:
        return self.memory.usable.bytes

    @property
    def max_context(self) -> int:
        return self.memory.max_context

    @property
    def context(self) -> int:
        return self.memory.context

    @property
    def decode_tps(self) -> float | None:
        return self.speed.decode_tps

    @property
    def decode_range(self) -> tuple[float, float] | None:
        s = self.speed
        return (s.decode_low, s.decode_high) if s.decode_low is not None else None

    def speed_text(self) -> str:
        """Measured first (scaled to this model), then the predicted range."""
        s, parts = self.speed, []
        if s.lead:
            m = s.lead
            parts.append(f"measured {m.tps:.1f} tok/s ({m.where}, {m.runtime_label}, {m.date})")
        if s.decode_low_short is not None:
            parts.append(f"predicted {s.decode_low_short:.1f}-{s.decode_high_short:.1f} tok/s"
                         + (" (no measurement for this GPU/CPU class)" if s.efficiency.extrapolated else ""))
        return "; ".join(parts) or "speed unknown"

    def line(self) -> str:
        """One line for build summaries: name, verdict, margin, largest context, speed."""
        fit = self.status
        if self.status == "no runtime":
            fit = f"no runtime ({self.speed.note})"
        elif not self.fits and self.max_context >= 1:
            fit = f"does not fit at {self.context} tokens (fits at <= {self.max_context})"
        return (f"{self.phone.name}: {fit} (need {self.need_bytes / 1e9:.2f} of "
                f"{self.usable_bytes / 1e9:.2f} GB at {self.context} tokens, margin "
                f"{self.margin_bytes / 1e9:+.2f} GB, up to {self.max_context} tokens), {self.speed_text()} "
                f"({self.speed.runtime})")

    def to_dict(self) -> dict:
        m, s, p = self.memory, self.speed, self.phone
        eff = s.efficiency
        return {
            "phone": p.name, "id": p.id, "os": p.os, "os_version": p.os_version, "installs_apk": p.installs_apk,
            "variant": p.variant, "unverified": list(p.unverified), "soc": p.soc.name,
            "ram_gb": p.ram_gb, "ram_type": p.ram_type, "bandwidth_gbs": p.bandwidth_gbs,
            "bandwidth_basis": p.bandwidth_basis, "year": p.year,
            "model": self.profile.name, "quantization": self.profile.quantization, "context": m.context,
            "status": self.status, "fits": self.fits,
            "memory": {"weights": m.weights, "kv_cache": m.kv_cache, "workspace": m.workspace,
                       "runtime_overhead": m.overhead, "need": m.need, "usable": m.usable.bytes,
                       "usable_basis": m.usable.basis, "ios_default_limit": m.usable.default_bytes,
                       "needs_entitlement": m.needs_entitlement, "margin": m.margin, "max_context": m.max_context,
                       "max_context_limited_by_model": m.max_context_limited_by_model},
            "speed": {"runtime": s.runtime, "backend": s.backend, "efficiency": eff.value if eff else None,
                      "efficiency_range": [eff.low, eff.high] if eff else None,
                      "efficiency_basis": eff.basis if eff else s.note,
                      "extrapolated": eff.extrapolated if eff else None, "note": s.note,
                      "decode_tps": s.decode_tps, "decode_tps_short": s.decode_tps_short,
                      "decode_range": [s.decode_low, s.decode_high] if s.decode_low is not None else None,
                      "decode_range_short": ([s.decode_low_short, s.decode_high_short]
                                             if s.decode_low_short is not None else None),
                      "short_context": min(speed.decode_context(), m.context),
                      "roofline_tps": s.ceiling_tps, "roofline_tps_short": s.ceiling_tps_short,
                      "prefill_tps": s.prefill_tps, "prefill_basis": s.prefill_basis,
                      "measured": [vars(x) for x in s.measured]},
            "corrections": list(p.corrections), "notes": self.notes,
        }


def evaluate(profile: ModelProfile, phone: profiles.Phone, context: int | None = None,
             runtime: str | None = None, ios_entitlement: bool = True) -> Verdict:
    context = context or profile.context_for(phone.os)
    if context <= 0:
        raise MCPMError(f"context must be a positive number of tokens (got {context})")
    runtime = runtime or speed.default_runtime(phone.os)
    fit = memory.memory_fit(profile, phone, context, ios_entitlement, runtime)
    notes = list(profile.notes)
    if fit.needs_entitlement:
        notes.append(f"needs the increased-memory-limit entitlement (default limit "
                     f"{fit.usable.default_bytes / 1e9:.2f} GB)")
    if context > profile.max_context:
        notes.append(f"context {context} exceeds the model's {profile.max_context}-token training context")
    prediction = speed.predict(profile, phone, context, runtime)
    if prediction.note and not prediction.below_calibration:
        notes.append(prediction.note)
    if phone.note:
        notes.append(phone.note)
    if phone.os == "harmonyos" and phone.installs_apk is None:
        notes.append("HarmonyOS version not known: 2-4 install Android APKs, HarmonyOS NEXT (5.x) installs none")
    unverified = [u for u in phone.unverified if u in ("soc", "ram_gb", "ram_type", "os_version", "installs_apk")]
    if unverified:
        notes.append(f"not confirmed in a stored source: {', '.join(unverified)}")
    unverified_soc = [u for u in phone.soc.unverified if u.startswith("memory")]
    if unverified_soc:
        notes.append(f"{phone.soc.name} memory bandwidth not confirmed in a stored source")
    return Verdict(phone, profile, fit, prediction, notes)


def check_device(profile: ModelProfile, name: str, context: int | None = None, runtime: str | None = None,
                 ios_entitlement: bool = True) -> Verdict:
    """The verdict for one phone. Unknown or ambiguous names raise MCPMError (exit 2) naming candidates."""
    return evaluate(profile, profiles.find_phone(name), context, runtime, ios_entitlement)


def check_variants(profile: ModelProfile, name: str, context: int | None = None, runtime: str | None = None,
                   ios_entitlement: bool = True) -> list[Verdict]:
    """Verdicts for every phone ``name`` stands for (regional SoC variants of one model give several)."""
    return [evaluate(profile, p, context, runtime, ios_entitlement) for p in profiles.find_phones(name)]


def fit_report(profile: ModelProfile, phone_names: list[str], context: int | None = None,
               runtime: str | None = None, ios_entitlement: bool = True) -> list[Verdict]:
    return [check_device(profile, name, context, runtime, ios_entitlement) for name in phone_names]


def fit_summary(profile: ModelProfile, target_os: str | None = None, context: int | None = None) -> str:
    """One line per reference phone of ``target_os`` (or of every OS): the fit and the predicted speed."""
    return "\n".join(v.line() for v in fit_report(profile, reference_phones(target_os), context))


def require_fit(profile: ModelProfile, name: str, context: int | None = None,
                ios_entitlement: bool = True) -> Verdict:
    """For ``build --check-device``: the verdict, or MCPMError (exit 1) if the phone cannot run the model."""
    v = check_device(profile, name, context, ios_entitlement=ios_entitlement)
    if not v.fits:
        raise MCPMError(f"{v.phone.name} cannot run this build: {v.line()}", exit_code=1)
    return v
