"""Will the model fit? Memory need (weights + KV cache + workspace + runtime) against what an app may use.

Usable memory: on iOS the jetsam limit for the phone's RAM (default and
with the increased-memory-limit entitlement); on Android and HarmonyOS a fraction of physical RAM,
since there is no per-app cap, only the low-memory killer, and for MLC no more than its measured
OpenCL budget (4352 MiB, mlc-llm #2686). The figures live in data/phones.json (``app_memory``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mcpm_mobile.devices import profiles

if TYPE_CHECKING:
    from mcpm_mobile.devices.model_profile import ModelProfile
    from mcpm_mobile.model.config import MiniCPMConfig

# Reports of the same limit differ by about this much (2.87 vs 3.12 GB on 6 GB iPhones; 4.0 vs 4.2 GB
# with the entitlement), so a margin smaller than this is called tight rather than fits.
TIGHT_FRACTION = 0.10
MB = 1_000_000
GB = 1_000_000_000


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, tokens: int, dtype_bytes: int) -> int:
    """K and V for every layer: layers x 2 x kv_heads x head_dim x tokens x bytes."""
    return layers * 2 * kv_heads * head_dim * tokens * dtype_bytes


def estimate_workspace(arch: "MiniCPMConfig", dtype_bytes: int, prefill_chunk: int) -> int:
    """Activation memory when no compiled library's ``memory_usage`` is at hand.

    One prefill chunk holds about 6 hidden-sized and 3 FFN-sized activations per token (residual,
    norm, q/k/v, attention output; gate, up and their product); the memory planner keeps about two
    of them alive at once. Logits and sampling take two fp32 vocab-sized rows.
    """
    per_token = 6 * arch.hidden_size + 3 * arch.intermediate_size
    return 2 * prefill_chunk * per_token * dtype_bytes + 2 * arch.vocab_size * 4


@dataclass(frozen=True)
class Usable:
    bytes: int
    basis: str
    default_bytes: int | None = None  # iOS: the limit without the entitlement


def usable_memory(phone: profiles.Phone, ios_entitlement: bool = True, runtime: str | None = None) -> Usable:
    """What one app may use. ``ios_entitlement=False`` judges iPhones by the default jetsam limit;
    ``runtime`` applies that runtime's own memory budget where one is measured (MLC on OpenCL)."""
    usable = _usable(phone)
    if not ios_entitlement and usable.default_bytes is not None:
        usable = Usable(usable.default_bytes, "default iOS limit (app without the increased-memory-limit "
                        "entitlement); " + usable.basis.split("; ", 1)[-1])
    cap = runtime_cap(runtime, phone.os)
    if cap and cap[0] < usable.bytes:
        usable = Usable(cap[0], f"{cap[1]} (below the {usable.bytes / GB:.2f} GB the OS leaves: {usable.basis})",
                        usable.default_bytes)
    return usable


def runtime_cap(runtime: str | None, os: str) -> tuple[int, str] | None:
    """(bytes, basis) of a runtime's own memory budget on ``os``, if one is measured."""
    caps = profiles.app_memory().get("runtime_caps", {})
    cap = caps.get(runtime or "")
    if cap and "same_as" in cap:
        cap = caps[cap["same_as"]]
    if not cap or os not in cap["oses"]:
        return None
    return cap["mib"] << 20, cap["basis"]


def default_context(os: str) -> int:
    """Context reserved when neither the artifact nor --context gives one (per OS; see phones.json)."""
    return profiles.app_memory()["default_context"][os]


def _usable(phone: profiles.Phone) -> Usable:
    rules = profiles.app_memory()
    os_rules = rules[phone.os]
    if "same_as" in os_rules:
        os_rules = rules[os_rules["same_as"]]
    if phone.os == "ios":
        known = os_rules["by_ram_gb"].get(f"{phone.ram_gb:g}")
        if known:
            return Usable(int(known["increased_gb"] * GB),
                          f"iOS limit for {phone.ram_gb:g} GB iPhones with the increased-memory-limit entitlement "
                          f"({known['default_gb']:g} GB without); {known['source']}",
                          int(known["default_gb"] * GB))
        fb = os_rules["fallback"]
        return Usable(int(fb["increased_fraction"] * phone.ram_bytes),
                      f"{fb['increased_fraction']:.0%} of RAM with the entitlement ({fb['basis']})",
                      int(fb["default_fraction"] * phone.ram_bytes))
    for rule in os_rules["rules"]:
        if phone.ram_gb >= rule["min_ram_gb"]:
            return Usable(int(rule["fraction"] * phone.ram_bytes),
                          f"{rule['fraction']:.0%} of {phone.ram_gb:g} GB: {rule['basis']}")
    raise ValueError(f"phones.json: no {phone.os} memory rule for {phone.ram_gb} GB")


def runtime_overhead_bytes() -> int:
    return int(profiles.app_memory()["runtime_overhead_mb"] * MB)


@dataclass(frozen=True)
class MemoryFit:
    context: int
    weights: int
    kv_cache: int
    workspace: int
    overhead: int
    usable: Usable
    max_context: int
    max_context_limited_by_model: bool

    @property
    def need(self) -> int:
        return self.weights + self.kv_cache + self.workspace + self.overhead

    @property
    def margin(self) -> int:
        return self.usable.bytes - self.need

    @property
    def status(self) -> str:
        if self.margin < 0:
            return "does not fit"
        return "tight" if self.margin < TIGHT_FRACTION * self.usable.bytes else "fits"

    @property
    def needs_entitlement(self) -> bool:
        """iOS only: fits with the increased-memory-limit entitlement but not under the default limit."""
        return self.usable.default_bytes is not None and self.margin >= 0 and self.need > self.usable.default_bytes


def memory_fit(profile: "ModelProfile", phone: profiles.Phone, context: int,
               ios_entitlement: bool = True, runtime: str | None = None) -> MemoryFit:
    usable = usable_memory(phone, ios_entitlement, runtime)
    overhead = runtime_overhead_bytes()
    fixed = profile.weight_bytes + profile.workspace_bytes + overhead
    room = max(usable.bytes - fixed, 0) // profile.kv_bytes_per_token
    return MemoryFit(context=context, weights=profile.weight_bytes, kv_cache=profile.kv_bytes(context),
                     workspace=profile.workspace_bytes, overhead=overhead, usable=usable,
                     max_context=int(min(room, profile.max_context)),
                     max_context_limited_by_model=room > profile.max_context)
