"""The target table: everything mcpm-mobile knows about a target, in one entry each.

A target says how to compile (the TVM target, in TVM's JSON dict form; ``None`` for this machine's
CPU, which the compiler detects), what kind of library that gives (a static system library
``.tar`` that the app links, or a shared library), how ``build`` lays out a package for it and which
phones ``build`` reports the fit on. Adding a target is adding one entry to ``TARGETS``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from mcpm_mobile.errors import fail

DEFAULT_CUDA_ARCH = "sm_90"  # H100
_AARCH64_ANDROID = {"kind": "llvm", "mtriple": "aarch64-linux-android"}


@dataclass(frozen=True)
class Target:
    name: str
    tvm: dict | None  # None: this machine's CPU
    system_lib: bool | None  # True: static system library (.tar); None: chosen by the output suffix
    suffixes: tuple[str, ...]  # library file suffixes accepted; the first is the default
    os: str | None = None  # the phone OS ("android", "harmonyos", "ios")
    os_label: str | None = None
    package: str | None = None  # `build` package layout: "mlc-android" or "mlc-ios"; None: not packaged
    assets: str | None = None  # package folder that goes into the app as it is (LLMFarm's Documents); None: none
    library_from: str | None = None  # `build` ships the library of this entry instead (HarmonyOS 2-4: Android)
    static_lib: str | None = None  # the .tar's objects as an archive the app links
    runtimes: tuple[str, ...] = ()  # `build --runtime` choices
    reference_phones: tuple[str, ...] = ()  # phones `build` reports the fit on
    description: str = ""

    @property
    def is_host(self) -> bool:
        return self.tvm is None

    @property
    def custom(self) -> bool:
        """A JSON TVM target given on the command line, not an entry of the table."""
        return TARGETS.get(self.name) is not self

    @property
    def key(self) -> str:
        """Identifies the target in library names: the table name, or the JSON of a custom target."""
        return json.dumps(self.tvm, sort_keys=True) if self.custom else self.name

    @property
    def bundles_weights(self) -> bool:
        """Whether the app project can carry the weights in its assets (`build --bundle-weights`)."""
        return self.package == "mlc-android"

    def library_file(self, stem: str) -> str:
        return stem + self.suffixes[0]


TARGETS = {t.name: t for t in (
    Target("host", None, False, (".so", ".dylib", ".dll"),
           description="a shared library for this machine's CPU"),
    Target("android", {"kind": "opencl", "host": _AARCH64_ANDROID}, True, (".tar",), "android", "Android",
           package="mlc-android", static_lib="libmodel_android.a", runtimes=("mlc", "onnxruntime"),
           reference_phones=("Samsung Galaxy S24 Ultra", "Xiaomi 12 Pro", "Xiaomi Mi 8"),
           description="OpenCL, aarch64"),
    Target("android-adreno", {"kind": "opencl", "device": "adreno", "max_threads_per_block": 512,
                              "host": _AARCH64_ANDROID}, True, (".tar",), "android", "Android",
           description="OpenCL tuned for Qualcomm Adreno, aarch64"),
    # HarmonyOS 2-4 install Android APKs: `build` ships the Android package (and a GGUF for HarmonyOS
    # NEXT, which has no MLC/TVM runtime); this entry's own aarch64-linux-ohos library loads nowhere yet
    Target("harmonyos", {"kind": "opencl", "host": {"kind": "llvm", "mtriple": "aarch64-linux-ohos"}}, True,
           (".tar",), "harmonyos", "HarmonyOS", package="mlc-android", library_from="android",
           static_lib="libmodel_android.a", runtimes=("mlc",),
           reference_phones=("Huawei Mate 60 Pro", "Huawei Nova 11 SE"),
           description="OpenCL, aarch64-linux-ohos; no MLC/TVM runtime on HarmonyOS NEXT loads it yet, "
                       "HarmonyOS 2-4 run 'android'"),
    # thread_warp_size 1 as in MLC's iPhone preset (what MLC ships on iPhones): cross-thread
    # reductions go through threadgroup memory rather than simd_shuffle
    Target("ios", {"kind": "metal", "max_threads_per_block": 256, "max_shared_memory_per_block": 32768,
                   "thread_warp_size": 1, "host": {"kind": "llvm", "mtriple": "arm64-apple-darwin"}}, True,
           (".tar",), "ios", "iOS", package="mlc-ios", assets="llmfarm", static_lib="libmodel_iphone.a",
           runtimes=("mlc",), reference_phones=("iPhone 15 Pro", "iPhone 15", "iPhone 12"),
           description="Metal, arm64"),
    Target("cuda", {"kind": "cuda", "arch": DEFAULT_CUDA_ARCH, "max_shared_memory_per_block": 49152,
                    "max_threads_per_block": 1024, "thread_warp_size": 32, "host": {"kind": "llvm"}}, None,
           (".so", ".tar"), description="NVIDIA GPUs, for benchmarks"),
)}
ALIASES = {"llvm": "host", "cpu": "host"}
PACKAGED = tuple(name for name, t in TARGETS.items() if t.package)
OSES = tuple(dict.fromkeys(t.os for t in TARGETS.values() if t.os))
OS_LABELS = {t.os: t.os_label for t in TARGETS.values() if t.os}


def get_target(name: str) -> Target:
    name = ALIASES.get(name, name)
    if name not in TARGETS:
        raise fail("target", f"unknown target '{name}' (choose from {', '.join(TARGETS)} or a JSON TVM target)")
    return TARGETS[name]


def custom_target(spec: dict) -> Target:
    """A target given as a TVM JSON dict: a shared or static library by the output suffix."""
    return Target(spec.get("kind", "custom"), spec, None, (".so", ".tar"), description="a JSON TVM target")


def reference_phones(os: str | None = None) -> list[str]:
    """The phones `build` reports on: those of the packaged targets for ``os``, or of all of them."""
    return list(dict.fromkeys(p for t in TARGETS.values() if t.package and os in (None, t.os)
                              for p in t.reference_phones))
