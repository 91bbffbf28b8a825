"""--bundle-weights as Play install-time asset packs: the Gradle layout re-read, APKs built from it with
Android's aapt (Debian package `aapt`) honouring our noCompress list and checked for STORED + aligned model
files (also with `zipalign -c`), Play's size limits, and the generated ModelAssets.kt run on the JVM."""
import filecmp
import hashlib
import shutil
import subprocess
import zipfile

import pytest

from jvm import jvm_classpath, run  # noqa: F401  (fixture)
from mcpm_mobile.support.atomic import MARKER
from mcpm_mobile.errors import MCPMError
from mcpm_mobile.targets.android import asset_pack

MODEL_ID = "MiniCPM-test-q4f16_1-MLC"


@pytest.fixture
def layout(quantized_dir, tmp_path):
    stage = tmp_path / "pkg"
    stage.mkdir()
    summary = asset_pack.write(stage, quantized_dir("mha_untied_sharded"), MODEL_ID)
    return stage / asset_pack.ROOT, summary


def _pack_assets(root, pack="model_assets"):
    return root / pack / "src" / "main" / "assets"


def test_layout_reads_back(layout, quantized_dir):
    root, summary = layout
    checked = asset_pack.check_layout(root)
    assert checked["packs"] == ["model_assets"] and set(checked["no_compress"]) >= {"bin", "json", "txt"}
    weights = quantized_dir("mha_untied_sharded")
    copied = _pack_assets(root) / MODEL_ID
    for f in weights.iterdir():
        if f.name == MARKER:  # the output marker is not app content
            assert not (copied / f.name).exists()
            continue
        assert filecmp.cmp(f, copied / f.name, shallow=False)
    index = (copied / asset_pack.INDEX).read_text().splitlines()
    names = [line.split("\t")[1] for line in index]
    assert names[-1] == "mlc-chat-config.json" and "tensor-cache.json" in names[-3:]  # the app's markers last
    assert sum(int(line.split("\t")[0]) for line in index) == summary["bytes"]


def test_split_into_several_packs(quantized_dir, tmp_path):
    weights = quantized_dir("mha_untied_sharded")
    biggest = max(f.stat().st_size for f in weights.iterdir())
    summary = asset_pack.write(tmp_path, weights, MODEL_ID, limit=biggest + 1)
    names = [p["name"] for p in summary["packs"]]
    assert len(names) > 1 and names[:2] == ["model_assets", "model_assets_2"]
    checked = asset_pack.check_layout(tmp_path / asset_pack.ROOT)
    assert checked["packs"] == names and all(p["bytes"] <= biggest + 1 for p in summary["packs"])
    settings = (tmp_path / asset_pack.ROOT / "settings.gradle.snippet").read_text()
    assert all(f"include ':{n}'" in settings for n in names)


def test_play_limits(quantized_dir, tmp_path, monkeypatch):
    weights = quantized_dir("mha_tied")
    with pytest.raises(MCPMError, match="over the .* Play limit for one asset pack"):
        asset_pack.plan([("params_shard_0.bin", 2_000_000_000)])
    monkeypatch.setattr(asset_pack, "INSTALL_TIME_LIMIT", 1000)
    with pytest.raises(MCPMError, match="4 GB for all modules"):
        asset_pack.write(tmp_path, weights, MODEL_ID)


def test_check_layout_catches_gradle_mistakes(layout):
    root, _ = layout
    app = root / "app" / "build.gradle.snippet"
    app.write_text(app.read_text().replace("'bin', ", ""))
    with pytest.raises(MCPMError, match=r"noCompress lacks \['bin'\]"):
        asset_pack.check_layout(root)
    app.write_text(app.read_text().replace('":model_assets"', '":other"'))
    with pytest.raises(MCPMError, match="declares"):
        asset_pack.check_layout(root)


def _aapt_apk(assets, tmp_path, extensions, name="split.apk"):
    """An asset-pack split as aapt packages it (-0: its noCompress), then zipalign'd like AGP does."""
    for tool in ("aapt", "zipalign"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (Debian packages aapt, zipalign)")
    manifest = tmp_path / "AndroidManifest.xml"
    manifest.write_text('<manifest package="ai.mcpm.test" split="model_assets"/>')
    raw, apk = tmp_path / ("raw-" + name), tmp_path / name
    flags = [a for e in extensions for a in ("-0", e)]
    subprocess.run(["aapt", "package", "-f", "-M", manifest, "-A", assets, "-F", raw, *flags], check=True,
                   capture_output=True)
    subprocess.run(["zipalign", "-f", "4", raw, apk], check=True, capture_output=True)
    return apk


def test_apk_built_with_aapt_keeps_model_files_stored_and_aligned(layout, tmp_path):
    root, _ = layout
    exts = asset_pack.check_layout(root)["no_compress"]
    apk = _aapt_apk(_pack_assets(root), tmp_path, exts)
    assert subprocess.run(["zipalign", "-c", "4", apk], capture_output=True).returncode == 0
    files = [p for p in (_pack_assets(root) / MODEL_ID).iterdir()]
    expected = {f"{MODEL_ID}/{p.name}": (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files}
    assert asset_pack.check_apk(apk, expected)["stored_aligned"] >= len(files)
    listing = subprocess.run(["aapt", "list", "-v", apk], capture_output=True, text=True).stdout
    lines = [line for line in listing.splitlines() if f"assets/{MODEL_ID}/" in line]
    assert len(lines) == len(files) and all(" Stored " in line for line in lines)


def test_apk_without_no_compress_is_rejected(layout, tmp_path):
    root, _ = layout
    apk = _aapt_apk(_pack_assets(root), tmp_path, [], "compressed.apk")
    with pytest.raises(MCPMError, match="compressed: add its extension to noCompress"):
        asset_pack.check_apk(apk)


def _stored_zip(path, entries):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def test_check_apk_catches_misalignment_and_changed_bytes(layout, tmp_path):
    root, _ = layout
    src = _pack_assets(root) / MODEL_ID / "tensor-cache.json"
    name = f"assets/{MODEL_ID}/tensor-cache.json"
    for pad in range(4):  # a leading entry of `pad` bytes moves our entry's data off the 4-byte grid
        apk = _stored_zip(tmp_path / f"odd{pad}.apk", [("assets/x", b"x" * pad), (name, src.read_bytes())])
        info = zipfile.ZipFile(apk).getinfo(name)
        if (info.header_offset + 30 + len(info.filename) + len(info.extra)) % 4:
            break
    with pytest.raises(MCPMError, match="not 4-byte aligned: run zipalign"):
        asset_pack.check_apk(apk)
    aligned = tmp_path / "aligned.apk"
    if shutil.which("zipalign"):
        subprocess.run(["zipalign", "-f", "4", apk, aligned], check=True)
        expected = {f"{MODEL_ID}/tensor-cache.json": (src.stat().st_size, "0" * 64)}
        with pytest.raises(MCPMError, match="differs from the package"):
            asset_pack.check_apk(aligned, expected)


def test_model_assets_kotlin_copies_and_resumes(jvm_classpath, layout, tmp_path):  # noqa: F811
    root, _ = layout
    files = tmp_path / "external-files"
    r = run(jvm_classpath, "ModelAssetsCheckKt", _pack_assets(root), files, MODEL_ID)
    assert r.returncode == 0, r.stderr
    dest = files / MODEL_ID
    assert r.stdout.strip() == str(dest)
    src = _pack_assets(root) / MODEL_ID
    for f in src.iterdir():
        if f.name != asset_pack.INDEX:
            assert filecmp.cmp(f, dest / f.name, shallow=False), f.name
    shard = dest / "params_shard_0.bin"
    shard.write_bytes(shard.read_bytes()[:10])  # an interrupted copy
    (dest / "mlc-chat-config.json").unlink()
    r = run(jvm_classpath, "ModelAssetsCheckKt", _pack_assets(root), files, MODEL_ID)
    assert r.returncode == 0, r.stderr
    assert filecmp.cmp(src / "params_shard_0.bin", shard, shallow=False)
    assert not list(dest.glob("*.part"))
