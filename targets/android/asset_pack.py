"""``--bundle-weights`` for Android: the weights as Play Asset Delivery install-time asset packs.

The pattern of OpenBMB's MiniCPM Android app (weights in APK assets, copied to the external files dir
at first launch), brought to Gradle's current way of shipping large assets: asset-pack modules
(``com.android.asset-pack``, install-time delivery), the app-module lines that add them and keep model
files uncompressed (``noCompress``), and Kotlin that copies them to where the engine loads them.
Limits: Google Play Console Help, "Optimize your app's size and stay within Google Play app size
limits" (answer 9859372): compressed download sizes, base module 200 MB, each asset pack 1.5 GB, all
modules plus install-time asset packs 4 GB. Weights are INT4 and barely compress, so we compare stored sizes.
"""
from __future__ import annotations

import re
import shutil
import string
import zipfile
from importlib import resources
from pathlib import Path

from mcpm_mobile.errors import MCPMError, fail
from mcpm_mobile.support.atomic import MARKER

LIMIT_SOURCE = "Google Play Console Help answer 9859372 (Google Play maximum size limits)"
BASE_MODULE_LIMIT = 200_000_000
ASSET_PACK_LIMIT = 1_500_000_000
INSTALL_TIME_LIMIT = 4_000_000_000
ROOT = "android-app"
INDEX = "mcpm-assets.txt"
KOTLIN_PACKAGE = "ai.mcpm.assets"
CONFIGS_LAST = ("tensor-cache-b16.json", "tensor-cache.json", "mlc-chat-config.json")  # the app's "done" markers
ALIGNMENT = 4  # what zipalign and AGP give uncompressed entries (page alignment is for .so files only)


class _Template(string.Template):
    delimiter = "@"


def _render(name: str, **values) -> str:
    text = resources.files("mcpm_mobile.targets.android").joinpath("templates", name).read_text(encoding="utf-8")
    return _Template(text).substitute(**values)


def pack_names(count: int) -> list[str]:
    return ["model_assets"] + [f"model_assets_{i + 1}" for i in range(1, count)]


def plan(files: list[tuple[str, int]], limit: int = ASSET_PACK_LIMIT) -> list[list[tuple[str, int]]]:
    """Split files into packs of at most ``limit`` bytes, in order (a file never spans two packs)."""
    packs: list[list[tuple[str, int]]] = [[]]
    for rel, size in files:
        if size > limit:
            raise MCPMError(f"{rel} is {size / 1e9:.2f} GB, over the {limit / 1e9:.1f} GB Play limit "
                            "for one asset pack")
        if packs[-1] and sum(s for _, s in packs[-1]) + size > limit:
            packs.append([])
        packs[-1].append((rel, size))
    return packs


def ordered_files(weights_dir: Path) -> list[tuple[str, int]]:
    files = sorted(p for p in weights_dir.rglob("*") if p.is_file() and p.name != MARKER)  # not app content
    files.sort(key=lambda p: CONFIGS_LAST.index(p.name) + 1 if p.name in CONFIGS_LAST else 0)
    return [(p.relative_to(weights_dir).as_posix(), p.stat().st_size) for p in files]


def extensions(names) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n in names if "." in Path(n).name})


def write(stage: Path, weights_dir: Path, model_id: str, limit: int = ASSET_PACK_LIMIT) -> dict:
    """Lay out ``android-app/`` in ``stage``; raise with a clear message when Play's limits are exceeded."""
    files = ordered_files(weights_dir)
    total = sum(s for _, s in files)
    if total > INSTALL_TIME_LIMIT:
        raise MCPMError(f"the weights of {model_id} are {total / 1e9:.2f} GB: Google Play allows 4 GB for all modules "
                        "and install-time asset packs together; ship them with push-weights.sh or a download "
                        f"(model_url) instead ({LIMIT_SOURCE})")
    packs = plan(files, limit)
    names = pack_names(len(packs))
    root = stage / ROOT
    exts = extensions([rel for rel, _ in files] + [INDEX])
    for i, (name, members) in enumerate(zip(names, packs)):
        assets = root / name / "src" / "main" / "assets" / model_id
        for rel, _ in members:
            (assets / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(weights_dir / rel, assets / rel)
        (root / name / "build.gradle").write_text(
            _render("asset-pack.build.gradle.tmpl", pack=name, index=i + 1, count=len(packs), model_id=model_id))
    (root / names[0] / "src" / "main" / "assets" / model_id / INDEX).write_text(
        "".join(f"{size}\t{rel}\n" for rel, size in files))
    (root / "settings.gradle.snippet").write_text(_render(
        "settings.gradle.snippet.tmpl", model_id=model_id, includes="\n".join(f"include ':{n}'" for n in names)))
    (root / "app" / "build.gradle.snippet").parent.mkdir(parents=True)
    (root / "app" / "build.gradle.snippet").write_text(_render(
        "app.build.gradle.snippet.tmpl", model_id=model_id, packs=", ".join(f'":{n}"' for n in names),
        extensions=", ".join(f"'{e}'" for e in exts)))
    kt = root / "app" / "src" / "main" / "java" / Path(*KOTLIN_PACKAGE.split(".")) / "ModelAssets.kt"
    kt.parent.mkdir(parents=True)
    kt.write_text(_render("ModelAssets.kt.tmpl", model_id=model_id, kotlin_package=KOTLIN_PACKAGE))
    return {"root": ROOT, "packs": [{"name": n, "bytes": sum(s for _, s in m), "files": len(m)}
                                    for n, m in zip(names, packs)],
            "bytes": total, "no_compress": exts, "notices": f"{ROOT}/{names[0]}/src/main/assets"}


def check_layout(root: Path) -> dict:
    """Re-read ``android-app/`` as Gradle would: every pack module is included, declared install-time and
    named consistently, every model file's extension is in ``noCompress``, sizes within Play's limits."""
    root = Path(root)
    settings = (root / "settings.gradle.snippet").read_text()
    app = (root / "app" / "build.gradle.snippet").read_text()
    included = re.findall(r"include ':(\w+)'", settings)
    declared = re.findall(r'":(\w+)"', re.search(r"assetPacks = \[(.*?)\]", app).group(1))
    no_compress = set(re.findall(r"'([^']+)'", re.search(r"noCompress (.*)", app).group(1)))
    if not included or included != declared:
        raise fail(root / "settings.gradle.snippet", f"includes {included} but the app declares {declared}")
    total = 0
    for name in included:
        gradle = (root / name / "build.gradle").read_text()
        if f'packName = "{name}"' not in gradle or 'deliveryType = "install-time"' not in gradle \
                or "id 'com.android.asset-pack'" not in gradle:
            raise fail(root / name / "build.gradle", f"not an install-time asset pack named {name}")
        files = [p for p in (root / name / "src" / "main" / "assets").rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        if size > ASSET_PACK_LIMIT:
            raise fail(root / name, f"{size / 1e9:.2f} GB, over Play's 1.5 GB per asset pack")
        missing = set(extensions(p.name for p in files)) - no_compress - {"md"}
        if missing:
            raise fail(root / "app" / "build.gradle.snippet", f"noCompress lacks {sorted(missing)} used in {name}")
        total += size
    if total > INSTALL_TIME_LIMIT:
        raise fail(root, f"{total / 1e9:.2f} GB of install-time asset packs, over Play's 4 GB")
    return {"packs": included, "bytes": total, "no_compress": sorted(no_compress)}


def check_apk(apk: Path, expected: dict[str, tuple[int, str]] | None = None) -> dict:
    """An APK (or asset-pack split) built from our layout: every model file under ``assets/`` is STORED
    and 4-byte aligned; with ``expected`` ({asset path: (size, sha256)}), also present and unchanged."""
    import hashlib

    try:
        zf = zipfile.ZipFile(apk)
    except (OSError, zipfile.BadZipFile) as e:
        raise fail(apk, f"not a readable APK: {e}")
    checked = 0
    with zf, open(apk, "rb") as raw:
        for info in zf.infolist():
            if not info.filename.startswith("assets/") or info.filename.endswith(("/", ".md")):
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                raise fail(apk, f"{info.filename} is compressed: add its extension to noCompress")
            raw.seek(info.header_offset + 26)
            name_len, extra_len = int.from_bytes(raw.read(2), "little"), int.from_bytes(raw.read(2), "little")
            offset = info.header_offset + 30 + name_len + extra_len
            if offset % ALIGNMENT:
                raise fail(apk, f"{info.filename} starts at byte {offset}, not {ALIGNMENT}-byte aligned: run zipalign")
            rel = info.filename[len("assets/"):]
            if expected is not None and rel in expected:
                size, digest = expected[rel]
                if info.file_size != size or hashlib.sha256(zf.read(info)).hexdigest() != digest:
                    raise fail(apk, f"{info.filename} differs from the package")
            checked += 1
    if expected is not None:
        names = set(zf.namelist())
        absent = [rel for rel in expected if f"assets/{rel}" not in names]
        if absent and len(absent) == len(expected):
            raise fail(apk, "holds none of the package's model files")
    return {"apk": str(apk), "stored_aligned": checked}
