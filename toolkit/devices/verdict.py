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
        return self.memory.status

    @property
    def fits(self) -> bool:
        """True for "fits" and "tight": the model loads, with less room to spare when tight."""
        return self.memory.margin >= 0

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

    def line(self) -> str:
        """One line for build summaries: name, verdict, margin, largest context, predicted speed."""
        tps = f"~{self.decode_tps:.1f} tok/s" if self.decode_tps else "speed unknown"
        return (f"{self.phone.name}: {self.status} (need {self.need_bytes / 1e9:.2f} of "
                f"{self.usable_bytes / 1e9:.2f} GB at {self.context} tokens, margin "
                f"{self.margin_bytes / 1e9:+.2f} GB, up to {self.max_context} tokens), {tps} ({self.speed.runtime})")

    def to_dict(self) -> dict:
        m, s, p = self.memory, self.speed, self.phone
        eff = s.efficiency
        return {
            "phone": p.name, "id": p.id, "os": p.os, "os_version": p.os_version, "soc": p.soc.name,
            "ram_gb": p.ram_gb, "ram_type": p.ram_type, "bandwidth_gbs": p.bandwidth_gbs, "year": p.year,
            "model": self.profile.name, "quantization": self.profile.quantization, "context": m.context,
            "status": self.status, "fits": self.fits,
            "memory": {"weights": m.weights, "kv_cache": m.kv_cache, "workspace": m.workspace,
                       "runtime_overhead": m.overhead, "need": m.need, "usable": m.usable.bytes,
                       "usable_basis": m.usable.basis, "ios_default_limit": m.usable.default_bytes,
                       "needs_entitlement": m.needs_entitlement, "margin": m.margin, "max_context": m.max_context,
                       "max_context_limited_by_model": m.max_context_limited_by_model},
            "speed": {"runtime": s.runtime, "backend": s.backend, "efficiency": eff.value if eff else None,
                      "efficiency_basis": eff.basis if eff else s.note,
                      "extrapolated": eff.extrapolated if eff else None,
                      "decode_tps": s.decode_tps, "decode_tps_short": s.decode_tps_short,
                      "short_context": min(speed.decode_context(), m.context),
                      "roofline_tps": s.ceiling_tps, "roofline_tps_short": s.ceiling_tps_short,
                      "prefill_tps": s.prefill_tps, "prefill_basis": s.prefill_basis,
                      "measured": [vars(x) for x in s.measured]},
            "corrections": list(p.corrections), "notes": self.notes,
        }


def evaluate(profile: ModelProfile, phone: profiles.Phone, context: int | None = None,
             runtime: str | None = None, ios_entitlement: bool = True) -> Verdict:
    context = context or profile.default_context
    if context <= 0:
        raise MCPMError(f"context must be a positive number of tokens (got {context})")
    fit = memory.memory_fit(profile, phone, context, ios_entitlement)
    notes = list(profile.notes)
    if fit.needs_entitlement:
        notes.append(f"needs the increased-memory-limit entitlement (default limit "
                     f"{fit.usable.default_bytes / 1e9:.2f} GB)")
    if context > profile.max_context:
        notes.append(f"context {context} exceeds the model's {profile.max_context}-token training context")
    prediction = speed.predict(profile, phone, context, runtime)
    if prediction.note:
        notes.append(prediction.note)
    return Verdict(phone, profile, fit, prediction, notes)


def check_device(profile: ModelProfile, name: str, context: int | None = None, runtime: str | None = None,
                 ios_entitlement: bool = True) -> Verdict:
    """The verdict for one phone. Unknown names raise MCPMError (exit 2) listing the closest matches."""
    return evaluate(profile, profiles.find_phone(name), context, runtime, ios_entitlement)


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
