"""Device profiles: data, memory verdicts, the speed model and its calibration, name lookup, CLI and plot."""
import csv
import io
import json
import math

import pytest
from click.testing import CliRunner

from mcpm_mobile.devices import (ModelProfile, check_device, fit_report, fit_summary, model_profile_from_path,
                                 reference_phones, require_fit)
from mcpm_mobile.devices import memory, profiles, speed
from mcpm_mobile.devices.cli import check_cmd as check, devices_cmd as devices
from mcpm_mobile.errors import MCPMError

GIB = 1 << 30

# The MiniCPM README's phone table, verbatim (phone, OS, processor, memory, tokens/s); one row appears twice.
README_TABLE = [
    ("OPPO Find N3", "Android 13", "snapdragon 8 Gen2", "12", 6.5),
    ("Samsung S23 Ultra", "Android 14", "snapdragon 8 Gen2", "12", 6.4),
    ("Meizu M182Q", "Android 11", "snapdragon 888Plus", "8", 3.7),
    ("Xiaomi 12 Pro", "Android 13", "snapdragon 8 Gen1", "8+3", 3.7),
    ("Xiaomi Redmi K40", "Android 11", "snapdragon 870", "8", 3.5),
    ("Oneplus LE 2100", "Android 13", "snapdragon 870", "12", 3.5),
    ("Oneplus HD1900", "Android 11", "snapdragon 865", "8", 3.2),
    ("Oneplus HD1900", "Android 11", "snapdragon 855", "8", 3.0),
    ("Oneplus HD1905", "Android 10", "snapdragon 855", "8", 3.0),
    ("Oneplus HD1900", "Android 11", "snapdragon 855", "8", 3.0),
    ("Xiaomi MI 8", "Android 9", "snapdragon 845", "6", 2.3),
    ("Huawei Nova 11SE", "Harmony 4.0.0", "snapdragon 778", "12", 1.9),
    ("Xiaomi MIX 2", "Android 9", "snapdragon 835", "6", 1.3),
    ("iPhone 15 Pro", "iOS 17.2.1", "A16", "8", 18.0),
    ("iPhone 15", "iOS 17.2.1", "A16", "6", 15.0),
    ("iPhone 12 Pro", "iOS 16.5.1", "A14", "6", 5.8),
    ("iPhone 12", "iOS 17.2.1", "A14", "4", 5.8),
    ("iPhone 11", "iOS 16.6", "A13", "4", 4.6),
]


def q4f16_1_bytes(n, k):
    """By hand: 4-bit codes (k/2 bytes) plus one fp16 scale per 32 weights, per row."""
    return n * (k // 2 + (k // 32) * 2)


@pytest.fixture
def two_b():
    return ModelProfile.from_preset("minicpm-2b", "q4f16_1")


# ---------------------------------------------------------------- data

def test_data_files_are_versioned_and_every_row_cites_a_source():
    for data, rows in [(profiles.soc_data(), "socs"), (profiles.phone_data(), "phones"),
                       (profiles.measurement_data(), "measurements")]:
        assert data["version"]
        for row in data[rows]:
            assert row["source"].strip(), row["id"]


def test_every_readme_row_is_kept_with_its_measurement():
    rows = [m.readme_row for m in profiles.measurements() if m.readme_row]
    got = sorted((r["phone"], r["os"], r["processor"], r["memory"], r["tokens_per_s"]) for r in rows)
    assert got == sorted(README_TABLE)


def test_readme_errors_are_corrected_with_reasons():
    table = profiles.phones()
    pro = table["iphone-15-pro"]
    assert pro.soc.id == "a17pro" and pro.soc.metal_family == 9
    assert pro.corrections[0]["readme_said"] == "A16" and pro.corrections[0]["reason"]
    nova = table["huawei-nova-11-se"]
    assert nova.soc.id == "sd680" and nova.ram_gb == 8 and nova.os == "harmonyos"
    assert {c["field"] for c in nova.corrections} == {"soc", "ram_gb"}
    assert table["oneplus-7t"].soc.id == "sd855plus"
    seven_t = [m for m in profiles.measurements() if m.phone is table["oneplus-7t"]]
    assert len(seven_t) == 4 and all(m.corrections and m.corrections[0]["field"] == "soc" for m in seven_t)
    assert sum(1 for m in seven_t if m.exclude_from_fit) == 1  # the README's duplicated row
    assert table["xiaomi-12-pro"].ram_gb == 8
    # The measurement stays what the README said.
    assert next(m for m in profiles.measurements() if m.phone is pro and m.runtime == "llmfarm-2024").decode_tps == 18.0


def test_phone_coverage_and_consistent_specs():
    table = profiles.phones()
    assert len(table) >= 30
    used = {p.soc.id for p in table.values()}
    assert {"sd8g3", "sd8elite", "a17pro", "a18", "d9300", "tensor-g3", "kirin9000s"} <= used
    for s in profiles.socs().values():
        for m in s.memory:
            assert m.peak_gbs == pytest.approx(m.computed_gbs, rel=0.01), s.id
        if s.vendor == "Apple":
            assert s.gpu["metal_family"] in (6, 7, 8, 9)
        else:
            assert s.gpu["metal_family"] is None
    assert {p.os for p in table.values()} == set(profiles.OSES)


# ---------------------------------------------------------------- memory

def test_preset_bytes_match_a_hand_computation(two_b):
    h, layers, ffn, vocab = 2304, 40, 5760, 122753
    layer = 4 * q4f16_1_bytes(h, h) + 2 * q4f16_1_bytes(ffn, h) + q4f16_1_bytes(h, ffn) + 2 * h * 2
    weights = q4f16_1_bytes(vocab, h) + layers * layer + h * 2
    assert two_b.weight_bytes == weights == two_b.weights_read_bytes  # tied: the table is read as lm_head
    assert 1.52e9 < weights < 1.54e9  # devices.md: 1.53 GB
    assert two_b.kv_bytes(2048) == 40 * 2 * 36 * 64 * 2048 * 2 == 754_974_720
    one_b = ModelProfile.from_preset("minicpm-1b")
    assert one_b.kv_bytes_per_token == 52 * 2 * 8 * 64 * 2
    assert ModelProfile.from_preset("minicpm-2b", "q0f16").weight_bytes == pytest.approx(2 * 2.7246e9, rel=1e-3)


def test_verdicts_for_known_phones(two_b):
    v = check_device(two_b, "Xiaomi 12 Pro", 2048)
    usable = int(0.45 * 8 * GIB)
    need = two_b.weight_bytes + 754_974_720 + two_b.workspace_bytes + 300_000_000
    assert (v.usable_bytes, v.need_bytes, v.margin_bytes) == (usable, need, usable - need)
    assert v.status == "fits" and v.fits and v.max_context == 4096  # capped by the model's training context

    small = check_device(two_b, "iPhone 12", 2048)
    assert small.usable_bytes == 2_400_000_000 and small.status == "does not fit" and not small.fits
    room = 2_400_000_000 - two_b.weight_bytes - two_b.workspace_bytes - 300_000_000
    assert small.max_context == room // 368_640
    assert check_device(two_b, "iPhone 12", small.max_context).fits
    assert not check_device(two_b, "iPhone 12", small.max_context + 1).fits

    iphone15 = check_device(two_b, "iPhone 15", 4096)
    assert iphone15.fits and iphone15.memory.needs_entitlement and iphone15.usable_bytes == 4_000_000_000
    default = check_device(two_b, "iPhone 15", 4096, ios_entitlement=False)
    assert default.usable_bytes == 2_867_000_000 and not default.fits
    assert not check_device(two_b, "iPhone 15", 1024).memory.needs_entitlement


def test_tight_is_a_small_positive_margin(two_b):
    statuses = {ctx: check_device(two_b, "Xiaomi Mi 8", ctx).status for ctx in (1024, 2200, 3000)}
    assert statuses == {1024: "fits", 2200: "tight", 3000: "does not fit"}
    tight = check_device(two_b, "Xiaomi Mi 8", 2200)
    assert 0 <= tight.margin_bytes < memory.TIGHT_FRACTION * tight.usable_bytes


# ---------------------------------------------------------------- speed

def test_decode_prediction_is_efficiency_times_roofline(two_b):
    v = check_device(two_b, "OPPO Find N3", 256, runtime="mlc-minicpm-2024")
    bytes_per_token = two_b.weight_bytes + 256 * 368_640
    roofline = 67.2e9 / bytes_per_token
    assert v.speed.ceiling_tps == pytest.approx(roofline)
    eff = v.speed.efficiency
    assert not eff.extrapolated and eff.rows == 11
    assert v.decode_tps == pytest.approx(eff.value * roofline)
    assert v.decode_tps == pytest.approx(6.5, rel=0.2)  # the README measured 6.5
    assert [m.tps for m in v.speed.measured] == [6.5]
    for phone in profiles.phones().values():
        s = speed.predict(two_b, phone, 2048)
        assert s.decode_tps is None or 0 < s.decode_tps < s.ceiling_tps


def test_runtime_backend_rules(two_b):
    assert speed.predict(two_b, profiles.find_phone("iPhone 11"), 256, "llmfarm-2024").backend == "cpu"
    assert speed.predict(two_b, profiles.find_phone("iPhone 15"), 256, "llmfarm-2024").backend == "metal"
    assert speed.predict(two_b, profiles.find_phone("Xiaomi 12 Pro"), 256, "llmfarm-2024").decode_tps is None
    assert speed.predict(two_b, profiles.find_phone("Google Pixel 8"), 256).efficiency.extrapolated


def test_calibration_is_computed_from_the_rows():
    cal = speed.calibration()
    loo, inside = cal.summary["leave_one_out"], cal.summary["in_sample"]
    assert loo["rows"] == inside["rows"] >= 20
    assert math.isfinite(loo["mean_abs_error"]) and math.isfinite(inside["mean_abs_error"])
    assert loo["mean_abs_error"] > inside["mean_abs_error"]
    # Recompute the MIX 2 row by hand: without it, its Adreno 5xx class is empty and the prediction
    # falls back to the geometric mean of the other fitted Android rows of the same runtime.
    pts = [p for p in speed.points() if p.in_fit and p.m.runtime == "mlc-minicpm-2024"]
    mix2 = next(p for p in pts if p.m.id == "readme-13")
    others = [p.implied for p in pts if p is not mix2]
    expected = math.exp(sum(map(math.log, others)) / len(others)) * mix2.ceiling
    row = next(r for r in cal.rows if r["id"] == "readme-13")
    assert row["loo_tps"] == pytest.approx(expected)
    assert row["in_sample_tps"] == pytest.approx(1.3)  # alone in its class, it fits itself exactly
    assert row["loo_error"] == pytest.approx(expected / 1.3 - 1)


def test_calibration_command_prints_the_computed_error():
    result = CliRunner().invoke(devices, ["--calibration"])
    assert result.exit_code == 0, result.output
    loo = speed.calibration().summary["leave_one_out"]
    assert "Leave-one-out" in result.output
    assert f"mean |error| {loo['mean_abs_error']:.1%}" in result.output
    data = json.loads(CliRunner().invoke(devices, ["--calibration", "--json"]).output)
    assert data["summary"]["leave_one_out"]["rows"] == loo["rows"]


# ---------------------------------------------------------------- names

@pytest.mark.parametrize("name,pid", [
    ("xiaomi12pro", "xiaomi-12-pro"), ("XIAOMI 12 PRO", "xiaomi-12-pro"), ("  xiaomi   12 pro ", "xiaomi-12-pro"),
    ("2201122C", "xiaomi-12-pro"), ("HD1900", "oneplus-7t"), ("hd1905", "oneplus-7t"),
    ("Oneplus HD1900", "oneplus-7t"), ("LE2100", "oneplus-9r"), ("Oneplus LE 2100", "oneplus-9r"),
    ("M182Q", "meizu-18s"), ("meizu-m182q", "meizu-18s"), ("iPhone16,1", "iphone-15-pro"),
    ("iphone 15", "iphone-15"), ("Huawei Nova 11SE", "huawei-nova-11-se"), ("Redmi K40", "redmi-k40"),
    ("sm-s918b", "galaxy-s23-ultra"), ("Pixel 8 Pro", "pixel-8-pro"),
])
def test_name_matching(name, pid):
    assert profiles.find_phone(name).id == pid


def test_unknown_names_suggest_the_closest():
    with pytest.raises(MCPMError) as e:
        profiles.find_phone("Xiaomi 12 Prp")
    assert e.value.exit_code == 2 and "closest" in str(e.value) and "Xiaomi 12 Pro" in str(e.value)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- check command

def test_check_exit_codes():
    runner = CliRunner()
    ok = runner.invoke(check, ["Xiaomi 12 Pro"])
    assert ok.exit_code == 0 and "FITS" in ok.output and "8+3" in ok.output
    no = runner.invoke(check, ["iPhone 12", "--context", "2048"])
    assert no.exit_code == 1 and "DOES NOT FIT" in no.output
    assert runner.invoke(check, ["iphone12", "--context", "512"]).exit_code == 0
    assert runner.invoke(check, ["iPhone 15", "--context", "4096"]).exit_code == 0
    assert runner.invoke(check, ["iPhone 15", "--context", "4096", "--no-entitlement"]).exit_code == 1
    unknown = runner.invoke(check, ["Xiaomi 99"])
    assert unknown.exit_code == 2 and "closest" in unknown.output
    assert runner.invoke(check, ["Xiaomi 12 Pro", "--context", "0"]).exit_code == 2
    assert runner.invoke(check, ["Xiaomi 12 Pro", "--model", "/no/such/dir"]).exit_code == 2
    assert runner.invoke(check, ["Xiaomi 12 Pro", "--model", ".", "--preset", "minicpm-2b"]).exit_code == 2


def test_check_json():
    result = CliRunner().invoke(check, ["iPhone 15 Pro", "--json", "--preset", "minicpm-1b"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["status"] == "fits" and data["soc"] == "Apple A17 Pro" and data["model"] == "minicpm-1b"
    assert data["memory"]["kv_cache"] == 52 * 2 * 8 * 64 * 2 * 2048
    assert data["speed"]["measured"] == []  # measured rows are for MiniCPM-2B only


# ---------------------------------------------------------------- devices command

def test_devices_filters_and_formats():
    runner = CliRunner()
    data = json.loads(runner.invoke(devices, ["--os", "ios", "--json"]).output)
    assert data["phones"] and {p["os"] for p in data["phones"]} == {"ios"}
    text = runner.invoke(devices, ["--min-ram", "12", "--csv"]).output
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and all(float(r["ram_gb"]) >= 12 for r in rows)
    assert {"status", "decode_tps", "measured_tps", "max_context"} <= set(rows[0])
    table = runner.invoke(devices, ["--os", "android"])
    assert table.exit_code == 0 and "Xiaomi 12 Pro" in table.output and "iPhone" not in table.output
    assert runner.invoke(devices, ["--csv", "--json"]).exit_code == 2
    assert runner.invoke(devices, ["--os", "windows"]).exit_code == 2


def test_plot_is_a_sensible_png(tmp_path):
    out = tmp_path / "devices.png"
    result = CliRunner().invoke(devices, ["--plot", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    raw = out.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    assert 20_000 < len(raw) < 5_000_000
    from PIL import Image

    with Image.open(out) as img:
        width, height = img.size
    assert width >= 1000 and height >= 700


# ---------------------------------------------------------------- model artifacts

def write_weights_dir(d, shard_sizes, context=1024, quantization="q4f16_1"):
    d.mkdir(parents=True)
    model_config = {"vocab_size": 122753, "hidden_size": 2304, "num_hidden_layers": 40, "num_attention_heads": 36,
                    "num_key_value_heads": 36, "intermediate_size": 5760, "tie_word_embeddings": True,
                    "max_position_embeddings": 4096, "head_dim": 64}
    (d / "mlc-chat-config.json").write_text(json.dumps(
        {"quantization": quantization, "model_config": model_config, "context_window_size": context,
         "prefill_chunk_size": 128}))
    records = []
    for i, size in enumerate(shard_sizes):
        (d / f"params_shard_{i}.bin").write_bytes(b"\0" * size)
        records.append({"dataPath": f"params_shard_{i}.bin", "format": "raw-shard", "nbytes": size,
                        "records": [{"name": f"t{i}", "shape": [size], "dtype": "uint8", "format": "raw",
                                     "nbytes": size, "byteOffset": 0}]})
    (d / "tensor-cache.json").write_text(json.dumps({"metadata": {}, "records": records}))
    return d


def test_profile_from_mlc_weights_dir_uses_real_shard_bytes(tmp_path):
    d = write_weights_dir(tmp_path / "weights", [1000, 2000, 3000])
    profile = model_profile_from_path(d)
    assert profile.weight_bytes == 6000 and profile.weights_read_bytes == 6000
    assert profile.context_window == 1024 and profile.family == "minicpm-2b"
    assert "tensor-cache.json" in profile.weight_source
    assert CliRunner().invoke(check, ["Xiaomi 12 Pro", "--model", str(d), "--quantization", "q0f16"]).exit_code == 2
    result = CliRunner().invoke(check, ["Xiaomi 12 Pro", "--model", str(d), "--json"])
    data = json.loads(result.output)
    assert data["memory"]["weights"] == 6000 and data["context"] == 1024


def test_profile_from_package_reads_library_metadata(tmp_path):
    package = tmp_path / "dist" / "android"
    write_weights_dir(package / "bundle" / "minicpm-2b-q4f16_1", [4096])
    (package / "lib").mkdir()
    (package / "lib" / "minicpm.tar").write_bytes(b"not a real library")
    (package / "lib" / "minicpm.metadata.json").write_text(json.dumps(
        {"quantization": "q4f16_1", "memory_usage": {"prefill": 5_000_000, "decode": 9632, "embed": 131072}}))
    for path in (package, package / "lib" / "minicpm.tar", package / "bundle" / "minicpm-2b-q4f16_1"):
        profile = model_profile_from_path(path)
        assert profile.weight_bytes == 4096 and profile.workspace_bytes == 5_000_000
        assert "metadata" in profile.workspace_source
    write_weights_dir(package / "bundle" / "other", [1])
    with pytest.raises(MCPMError, match="several weight directories"):
        model_profile_from_path(package)


def test_profile_from_hf_checkpoint(tmp_path):
    config = {"architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm", "vocab_size": 122753,
              "hidden_size": 2304, "num_hidden_layers": 40, "num_attention_heads": 36, "num_key_value_heads": 36,
              "intermediate_size": 5760, "tie_word_embeddings": True, "max_position_embeddings": 4096}
    (tmp_path / "config.json").write_text(json.dumps(config))
    preset = ModelProfile.from_preset("minicpm-2b", "q4f32_1")
    profile = model_profile_from_path(tmp_path, "q4f32_1")
    assert profile.weight_bytes == preset.weight_bytes and profile.kv_dtype_bytes == 4
    untied = dict(config, tie_word_embeddings=False)
    (tmp_path / "config.json").write_text(json.dumps(untied))
    profile = model_profile_from_path(tmp_path)
    # Untied: the lm_head is an extra matrix that is read each token; the input table is not.
    assert profile.weights_read_bytes == ModelProfile.from_preset("minicpm-2b", "q4f16_1").weight_bytes
    assert profile.weight_bytes - profile.weights_read_bytes == q4f16_1_bytes(122753, 2304)
    assert profile.family is None  # not the tied preset, so no measured MiniCPM-2B figures are shown


# ---------------------------------------------------------------- library API for build

def test_build_api(two_b):
    verdicts = fit_report(two_b, reference_phones("android"), context=2048)
    assert [v.phone.name for v in verdicts] == reference_phones("android")
    assert all(v.fits and v.decode_tps > 0 and "tok/s" in v.line() for v in verdicts)
    assert len(fit_report(two_b, reference_phones(), context=2048)) == len(reference_phones()) >= 6
    summary = fit_summary(two_b, "ios", context=2048).splitlines()
    assert len(summary) == len(reference_phones("ios")) and "iPhone 12: does not fit" in summary[-1]
    assert require_fit(two_b, "Xiaomi 12 Pro", 2048).fits
    with pytest.raises(MCPMError) as e:
        require_fit(two_b, "iPhone 12", 2048)
    assert e.value.exit_code == 1
    with pytest.raises(MCPMError) as e:
        check_device(two_b, "Nokia 3310", 2048)
    assert e.value.exit_code == 2


def test_commands_are_registered():
    from mcpm_mobile.cli import main

    assert {"devices", "check"} <= set(main.commands)
