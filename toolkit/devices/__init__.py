"""Device profiles: will a model fit a given phone, and how fast will it decode?

Library API (used by ``build``)::

    from mcpm_mobile.devices import ModelProfile, model_profile_from_path, fit_report, check_device
    profile = model_profile_from_path("dist/android")          # or ModelProfile.from_preset("minicpm-2b", "q4f16_1")
    print(fit_summary(profile, "android", context=2048))           # one line per reference phone
    verdicts = fit_report(profile, ["Xiaomi 12 Pro", "iPhone 15"], context=2048)
    verdicts = check_variants(profile, "Galaxy S24")                 # every regional SoC variant
    v.speed.lead, v.decode_range                                   # measured figure first, then the range
    require_fit(profile, "Xiaomi 12 Pro")                         # MCPMError exit 1 if it cannot run

No TVM import here: profiles come from JSON and file sizes only.
"""
from mcpm_mobile.devices.model_profile import ModelProfile, model_profile_from_path
from mcpm_mobile.devices.profiles import find_phone
from mcpm_mobile.devices.verdict import (Verdict, check_device, check_variants, evaluate, fit_report, fit_summary,
                                         require_fit)
from mcpm_mobile.target import reference_phones

__all__ = ["ModelProfile", "model_profile_from_path", "find_phone", "Verdict", "check_device", "check_variants",
           "evaluate", "fit_report", "fit_summary", "reference_phones", "require_fit"]
