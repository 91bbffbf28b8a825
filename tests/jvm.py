"""Compile and run our Kotlin transcriptions of app code (tests/contracts/) with kotlinc, javac and Gson.

Debian packages: kotlin, default-jdk (or any JDK 17), libgoogle-gson-java. Tests skip, naming what is
missing, when a tool is absent.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CONTRACTS = Path(__file__).parent / "contracts"
GSON = [Path("/usr/share/java/gson.jar")]


def _missing() -> str | None:
    for tool in ("kotlinc", "javac", "java"):
        if not shutil.which(tool):
            return f"{tool} not installed (Debian: kotlin, default-jdk)"
    if not any(p.is_file() for p in GSON):
        return "Gson not installed (Debian: libgoogle-gson-java)"
    return None


def build(out: Path, kotlin_sources: list[Path]) -> list[str]:
    """Compile the Java test doubles and ``kotlin_sources`` into ``out``; return the run classpath."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    out.mkdir(parents=True, exist_ok=True)
    stubs = out / "stubs"
    java = sorted(str(p) for p in (CONTRACTS / "android").rglob("*.java"))
    subprocess.run(["javac", "-nowarn", "-d", str(stubs), *java], check=True, capture_output=True)
    gson = str(next(p for p in GSON if p.is_file()))
    jar = out / "check.jar"
    r = subprocess.run(["kotlinc", "-nowarn", "-include-runtime", "-cp", f"{stubs}:{gson}", "-d", str(jar),
                        *map(str, kotlin_sources)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return [str(jar), str(stubs), gson]


def run(classpath: list[str], main: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["java", "-cp", ":".join(classpath), main, *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="session")
def jvm_classpath(tmp_path_factory) -> list[str]:
    """MLCChat's config loading (our transcription) and the generated ModelAssets.kt, compiled once."""
    from mcpm_mobile.targets.android import asset_pack

    out = tmp_path_factory.mktemp("jvm")
    model_assets = out / "ModelAssets.kt"
    model_assets.write_text(asset_pack._render("ModelAssets.kt.tmpl", model_id="unused-default",
                                               kotlin_package=asset_pack.KOTLIN_PACKAGE))
    return build(out, [CONTRACTS / "MLCChatConfig.kt", model_assets, CONTRACTS / "ModelAssetsCheck.kt"])
