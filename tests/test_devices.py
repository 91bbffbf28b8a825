"""Device profiles: data, memory verdicts, the speed model and its calibration, name lookup, CLI and plot."""
import csv
import dataclasses
import io
import json
import math

import pytest
from click.testing import CliRunner

from mcpm_mobile.devices import (ModelProfile, check_device, evaluate, fit_report, fit_summary,
                                 model_profile_from_path, reference_phones, require_fit)
from mcpm_mobile.devices import memory, profiles, speed
from mcpm_mobile.devices.cli import check_cmd as check, check_text, devices_cmd as devices
from mcpm_mobile.devices.model_profile import MODEL_PRESETS
from mcpm_mobile.model.config import MiniCPMConfig
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
# A later revision of the README (commit ac80142, 2024-02-02) added one row.
README_LATER = [("Xiaomi Redmi K50", "HyperOS 1.0.2", "MediaTek Dimensity 8100", "12", 3.5)]


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
    for m in profiles.measurements():
        assert m.source_id and m.date[:4].isdigit() and m.runtime_version, m.id


def test_issue_17_data_errors_are_fixed():
    table, soc_table = profiles.phones(), profiles.socs()
    assert table["huawei-nova-11"].year == 2023
    assert soc_table["sd855plus"].gpu["fp32_gflops"] == 1036 and "672 MHz" in soc_table["sd855plus"].gpu["name"]
    assert "#2686" in table["pixel-8-pro"].source and "#2703" not in table["pixel-8-pro"].source
    assert "expected" in table["meizu-18s"].note and "inference" in table["meizu-18s"].note
    rows = {m.id: m for m in profiles.measurements()}
    assert rows["et-1b-spinquant"].weights_read_bytes == 1_083_000_000  # the model card's size, not fitted
    assert "llamacpp-s23u-qwen" not in rows  # its source could not be found
    assert "abnormal" in rows["llamacpp-8g3-minicpmv2"].exclude_from_fit
    assert rows["mlc-1359-xiaomi14"].bug_report and rows["mlc-1359-iphone15pro"].bug_report
    # The figures issue 17 cites are in, each with its source, date and runtime version.
    cited = {"mlc-1495-pixel8pro": 2.5, "readme-19": 3.5, "minicpmv-paper-8g3": 8.2, "minicpmv-paper-d9300": 4.9,
             "mlc-1881-a34": 4.3, "mlc-1388-iphone14promax": 6.0, "mlc-relax-319-qwen": 11.0,
             "genie-3b-8elite": 23.47, "genie-3b-8elite-gen5": 29.48}
    assert {k: rows[k].decode_tps for k in cited} == cited
    assert rows["minicpmv-paper-8g3"].bandwidth_gbs == rows["minicpmv-paper-d9300"].bandwidth_gbs == 76.8
    # Bandwidth is the SoC maximum unless the phone's own memory speed is recorded, and the answer says which.
    xiaomi14 = table["xiaomi-14"]
    assert xiaomi14.bandwidth_gbs == 76.8 and "not recorded" in xiaomi14.bandwidth_basis
    slower = dataclasses.replace(xiaomi14, memory_mts=8533)
    assert slower.bandwidth_gbs == 68.3 and "as shipped" in slower.bandwidth_basis


def test_every_readme_row_is_kept_with_its_measurement():
    rows = [m.readme_row for m in profiles.measurements() if m.readme_row]
    got = sorted((r["phone"], r["os"], r["processor"], r["memory"], r["tokens_per_s"]) for r in rows)
    assert got == sorted(README_TABLE + README_LATER)


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
    assert len(table) >= 80
    names = {p.name for p in table.values()}
    for wanted in ["iPhone 16", "iPhone 16 Pro Max", "iPhone 17", "iPhone 17 Pro", "Google Pixel 9", "Google Pixel 10",
                   "Samsung Galaxy S24 (Exynos)", "Samsung Galaxy S24 (Snapdragon)", "Samsung Galaxy S25",
                   "Samsung Galaxy A54 5G", "Samsung Galaxy A55 5G", "Xiaomi 14", "Xiaomi 15",
                   "Xiaomi Redmi Note 13 (4G)", "Xiaomi Redmi Note 14 (5G)", "OnePlus 12", "OnePlus 13", "vivo X100",
                   "vivo X200", "OPPO Find X7", "OPPO Find X8", "Honor Magic6", "Honor Magic7", "Huawei Mate 60",
                   "Huawei Mate 70", "Huawei Pura 70", "Huawei nova 12 Pro", "Huawei nova 13 Pro"]:
        assert wanted in names, wanted
    used = {p.soc.id for p in table.values()}
    assert {"sd8g3", "sd8elite", "a17pro", "a18", "a19pro", "d9300", "d9400", "tensor-g3", "tensor-g5",
            "kirin9000s", "exynos2400"} <= used
    for s in profiles.socs().values():
        for m in s.memory:
            assert m.peak_gbs == pytest.approx(m.computed_gbs, rel=0.01), s.id
        if s.vendor == "Apple":
            assert s.gpu["metal_family"] in (6, 7, 8, 9, 10) and s.gpu["class"] == f"apple{s.gpu['metal_family']}"
        else:
            assert s.gpu["metal_family"] is None
    classes = {s.gpu["class"] for s in profiles.socs().values()}
    assert {"adreno5xx", "adreno6xx", "adreno7xx", "adreno8xx", "mali-valhall", "mali-5th-gen", "xclipse", "maleoon",
            "powervr"} <= classes
    assert {p.os for p in table.values()} == set(profiles.OSES)
    for p in table.values():
        assert p.ram_gb in p.ram_variants_gb, p.id
        if p.brand in ("Huawei", "Honor"):
            assert p.installs_apk is not None, p.id  # HarmonyOS NEXT installs no APKs
    assert table["huawei-mate-70-pro"].installs_apk is False and table["huawei-pura-70"].installs_apk is True


# ---------------------------------------------------------------- memory

def test_preset_bytes_match_a_hand_computation(two_b):
    h, layers, ffn, vocab = 2304, 40, 5760, 122753
    layer = 4 * q4f16_1_bytes(h, h) + 2 * q4f16_1_bytes(ffn, h) + q4f16_1_bytes(h, ffn) + 2 * h * 2
    weights = q4f16_1_bytes(vocab, h) + layers * layer + h * 2
    assert two_b.weight_bytes == weights == two_b.weights_read_bytes  # tied: the table is read as lm_head
    assert 1.52e9 < weights < 1.54e9  # 2B at 4.5 bits/weight: 1.53 GB
    assert two_b.kv_bytes(2048) == 40 * 2 * 36 * 64 * 2048 * 2 == 754_974_720
    one_b = ModelProfile.from_preset("minicpm-1b")
    assert one_b.kv_bytes_per_token == 52 * 2 * 8 * 64 * 2
    assert ModelProfile.from_preset("minicpm-2b", "q0f16").weight_bytes == pytest.approx(2 * 2.7246e9, rel=1e-3)


def test_minicpm4_presets_from_their_configs():
    p8 = ModelProfile.from_preset("minicpm4-8b")
    assert p8.kv_bytes_per_token == 32 * 2 * 2 * 128 * 2  # GQA: 2 KV heads of 128
    assert p8.arch.head_dim == 128 and p8.max_context == 32768
    untied = q4f16_1_bytes(73448, 4096)
    assert p8.weight_bytes - p8.weights_read_bytes == untied  # the input table is not read per token
    assert 4.3e9 < p8.weight_bytes < 4.7e9
    assert any("not confirmed" in n and "tie_word_embeddings" in n for n in p8.notes)
    assert ModelProfile.from_preset("minicpm4.1-8b").weight_bytes == p8.weight_bytes
    assert ModelProfile.from_preset("minicpm4.1-8b").max_context == 65536
    # MiniCPM4-0.5B: dimensions from a third-party copy of its config.json (docs/checkpoints.md), tie unconfirmed
    small = ModelProfile.from_preset("minicpm4-0.5b")
    assert (small.arch.hidden_size, small.arch.num_hidden_layers, small.arch.num_key_value_heads) == (1024, 24, 2)
    assert any("not confirmed" in n and "tie_word_embeddings" in n for n in small.notes)


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


def test_memory_from_evidence(two_b):
    # MLC on Android/HarmonyOS may use at most its OpenCL budget, 4352 MiB (mlc-llm #2686), whatever the OS leaves.
    big = check_device(two_b, "Pixel 8 Pro", 2048)
    assert big.usable_bytes == 4352 << 20 and "#2686" in big.memory.usable.basis
    assert check_device(two_b, "Pixel 8 Pro", 2048, runtime="llama.cpp").usable_bytes == int(0.55 * 12 * GIB)
    assert check_device(two_b, "iPhone 15 Pro", 2048).usable_bytes == 6_000_000_000  # no MLC cap on iOS
    # Default context per OS: every phone the README ran fits at its default.
    for m in profiles.measurements():
        if m.readme_row:
            v = evaluate(two_b, m.phone)
            assert v.fits, (m.phone.name, v.line())
            assert v.context == (1024 if m.phone.os == "ios" else 2048)
    # Asked for more than fits, the answer says how much does.
    v = check_device(two_b, "iPhone 12", 2048)
    assert not v.fits and f"fits at <= {v.max_context}" in v.line()


# ---------------------------------------------------------------- speed

def test_decode_range_is_the_class_spread_times_the_roofline(two_b):
    v = check_device(two_b, "OPPO Find N3", 256, runtime="mlc-minicpm-2024")
    bytes_per_token = two_b.weight_bytes + 256 * 368_640
    roofline = 67.2e9 / bytes_per_token
    assert v.speed.ceiling_tps == pytest.approx(roofline)
    eff = v.speed.efficiency
    assert not eff.extrapolated and eff.rows == 3  # adreno7xx: Find N3, S23 Ultra, Xiaomi 12 Pro
    implied = sorted(p.implied for p in speed.points() if p.key == ("mlc-minicpm-2024", "opencl", "adreno7xx"))
    assert eff.value == pytest.approx(math.exp(sum(map(math.log, implied)) / 3))
    assert (eff.low, eff.high) == pytest.approx((implied[0] / speed.SPREAD_MANY, implied[-1] * speed.SPREAD_MANY))
    assert (v.speed.decode_low, v.speed.decode_tps, v.speed.decode_high) == pytest.approx(
        (eff.low * roofline, eff.value * roofline, eff.high * roofline))
    assert v.speed.decode_low <= 6.5 <= v.speed.decode_high  # the README measured 6.5
    first = v.speed.measured[0]
    assert (first.tps, first.where, first.relation, first.scale) == (6.5, "this phone", "same runtime", 1.0)
    for phone in profiles.phones().values():
        s = speed.predict(two_b, phone, 2048)
        assert s.decode_high is None or 0 < s.decode_low < s.decode_tps < s.decode_high <= 0.9 * s.ceiling_tps


def test_fallbacks_are_stated_and_wider(two_b):
    fit = speed.fitted()
    own = fit.efficiency("mlc", "opencl", "adreno7xx")
    pooled = fit.efficiency("mlc", "opencl", "xclipse")  # no MLC row on an Xclipse GPU
    kind = fit.efficiency("executorch", "cpu", "armv8.2-a7x")  # ExecuTorch rows exist, not on Cortex-A7x phones
    nothing = speed.Fitted(p for p in speed.points() if p.m.runtime != "llama.cpp").efficiency("llama.cpp", "cpu",
                                                                                              "apple")
    assert own.level == "class" and not own.extrapolated
    assert pooled.level == "runtime" and "no mlc/opencl measurement on xclipse" in pooled.basis
    assert pooled.high / pooled.low > own.high / own.low
    assert kind.level == "runtime" and "armv9.2, oryon" in kind.basis
    assert nothing.level == "kind" and "no llama.cpp/cpu measurement at all" in nothing.basis
    assert fit.efficiency("genie", "npu", "hexagon").level == "class"
    # Runtime versions stay apart: the 2024 MiniCPM fork's rows never enter current MLC's classes.
    assert all(p.m.runtime == "mlc" for _, p in fit.classes[("mlc", "opencl", "adreno7xx")])


def test_the_contradicting_cases_fall_inside_their_runtimes_ranges(two_b):
    rows = {r["id"]: r for r in speed.calibration().rows}
    for rid in ["mlc-1495-pixel8pro", "readme-19", "minicpmv-paper-8g3", "minicpmv-paper-d9300",
                "readme-03", "readme-04", "readme-05", "readme-11", "readme-13"]:
        r = rows[rid]
        assert r["in_sample_low"] <= r["measured_tps"] <= r["in_sample_high"], rid
    # The default answer for these phones no longer promises 10-18 tok/s: MiniCPM-2B on a Pixel 8 Pro leads
    # with the measured MLC figure scaled to MiniCPM-2B, and the predicted range reaches down to it.
    pixel = check_device(two_b, "Pixel 8 Pro", 256)
    lead = pixel.speed.lead
    assert lead.id == "mlc-1495-pixel8pro" and lead.where == "this phone" and lead.relation == "same runtime"
    assert lead.tps == pytest.approx(2.5 * speed.points()[[p.m.id for p in speed.points()].index(lead.id)]
                                     .bytes_per_token / (two_b.weights_read_bytes + two_b.kv_bytes(256)))
    assert pixel.speed.decode_low_short < lead.tps < pixel.speed.decode_high_short
    assert "measured 2.4 tok/s (this phone" in pixel.line() and "mlc-llm/issues/1495" in check_text(pixel)


def test_measured_first_same_soc_and_other_runtimes(two_b):
    s24 = check_device(two_b, "Samsung Galaxy S24 (Snapdragon)", 256).speed
    assert s24.lead.where.startswith("same SoC") and s24.lead.runtime == "mlc"
    iphone12 = check_device(two_b, "iPhone 12", 1024).speed  # MLC asked; only LLMFarm measured it
    assert iphone12.measured and iphone12.measured[0].relation == "other runtime" and iphone12.lead is None
    k50 = check_device(two_b, "Redmi K50", 256).speed  # MLC asked; the 2024 MiniCPM fork is comparable
    assert k50.lead.relation == "comparable runtime" and k50.lead.tps == 3.5


def test_runtime_backend_rules(two_b):
    assert speed.predict(two_b, profiles.find_phone("iPhone 11"), 256, "llmfarm-2024").backend == "cpu"
    assert speed.predict(two_b, profiles.find_phone("iPhone 15"), 256, "llmfarm-2024").backend == "metal"
    assert speed.predict(two_b, profiles.find_phone("Xiaomi 12 Pro"), 256, "llmfarm-2024").decode_tps is None
    assert speed.predict(two_b, profiles.find_phone("Galaxy S24 Exynos"), 256).efficiency.extrapolated
    next_ = evaluate(two_b, profiles.find_phone("Mate 70 Pro"))
    assert next_.speed.backend is None and any("installs no APKs" in n for n in next_.notes)
    assert next_.status == "no runtime" and not next_.fits and "installs no APKs" in next_.line()
    r = CliRunner().invoke(check, ["mate70pro"])
    assert r.exit_code == 1 and "NO RUNTIME" in r.output
    assert evaluate(two_b, profiles.find_phone("Pura 70")).fits  # HarmonyOS 4.2 installs APKs


def test_models_outside_the_calibrated_range_get_no_speed():
    tiny = ModelProfile.from_arch(MiniCPMConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=4, intermediate_size=128), "q4f16_1", "tiny")
    v = check_device(tiny, "Xiaomi 14", 256)
    assert v.decode_tps is None and v.speed.decode_low is None and v.speed.measured == []
    assert "below the calibrated range" in v.speed.note and "speed unknown" in v.line()
    assert v.speed.ceiling_tps > 10_000  # the roofline is still shown, labelled as such


def test_calibration_leave_one_source_out():
    cal = speed.calibration()
    loso, inside = cal.summary["leave_one_source_out"], cal.summary["in_sample"]
    assert loso["rows"] == inside["rows"] >= 30 and cal.summary["sources"] >= 10
    assert loso["inside_share"] >= 0.8 and inside["inside_share"] == 1.0
    assert loso["median_abs_error"] > inside["median_abs_error"]
    # Recompute one row by hand: without mlc-llm #1881 (the Galaxy A34), MLC on Mali Valhall has one row left,
    # the Pixel 8 Pro, so the range is that row's efficiency widened by SPREAD_FEW both ways.
    pts = {p.m.id: p for p in speed.points()}
    a34, pixel = pts["mlc-1881-a34"], pts["mlc-1495-pixel8pro"]
    row = next(r for r in cal.rows if r["id"] == "mlc-1881-a34")
    assert row["loso_low"] == pytest.approx(pixel.implied / speed.SPREAD_FEW * a34.ceiling)
    assert row["loso_high"] == pytest.approx(pixel.implied * speed.SPREAD_FEW * a34.ceiling)
    assert not row["loso_inside"] and "mlc-1881-a34" in cal.summary["outside_loso"]
    # All 19 MiniCPM README rows go together: the fork's classes are then empty and the range is the wide
    # every-GPU-runtime one, which says so.
    readme = [r for r in cal.rows if r["source_id"] == "minicpm-readme" and r["runtime"] == "mlc-minicpm-2024"]
    assert len(readme) == 14 and all("every measured GPU runtime" in r["loso_basis"] for r in readme)
    # Prefill: the only rows with a prefill and a FLOPS figure come from a bug report, so there is no prefill model.
    assert cal.summary["prefill"]["rows"] == 0 and "mlc-1359-xiaomi14" in cal.summary["prefill"]["skipped_bug_reports"]
    two_b = ModelProfile.from_preset("minicpm-2b")
    assert speed.predict(two_b, profiles.find_phone("Xiaomi 14"), 256).prefill_tps is None


def test_calibration_command_prints_the_headline():
    result = CliRunner().invoke(devices, ["--calibration"])
    assert result.exit_code == 0, result.output
    loso = speed.calibration().summary["leave_one_source_out"]
    assert f"Leave-one-source-out: {loso['inside']} of {loso['rows']} measured rows ({loso['inside_share']:.0%})" \
        in result.output
    assert "no prefill model" in result.output
    data = json.loads(CliRunner().invoke(devices, ["--calibration", "--json"]).output)
    assert data["summary"]["leave_one_source_out"]["rows"] == loso["rows"]


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


# Forty names as users type them (lower case, no spaces, marketing names, "+" models): each resolves to
# exactly the phone meant, or, for models sold with different chips, to all of their variants.
USER_NAMES = [
    ("iphone16promax", ["iphone-16-pro-max"]), ("iPhone 16 Pro", ["iphone-16-pro"]), ("iphone16", ["iphone-16"]),
    ("iphone 16 plus", ["iphone-16-plus"]), ("iphone16e", ["iphone-16e"]), ("iphone17pro", ["iphone-17-pro"]),
    ("iPhone Air", ["iphone-air"]), ("iphone15promax", ["iphone-15-pro-max"]), ("iphone 13 mini", ["iphone-13-mini"]),
    ("pixel9", ["pixel-9"]), ("pixel 9 pro xl", ["pixel-9-pro-xl"]), ("google pixel 10 pro", ["pixel-10-pro"]),
    ("pixel8a", ["pixel-8a"]), ("s24ultra", ["galaxy-s24-ultra"]), ("galaxy s24", ["galaxy-s24", "galaxy-s24-us"]),
    ("s24+", ["galaxy-s24-plus", "galaxy-s24-plus-us"]), ("Galaxy S24 Plus", ["galaxy-s24-plus", "galaxy-s24-plus-us"]),
    ("samsung s23+", ["galaxy-s23-plus"]), ("s23", ["galaxy-s23"]), ("galaxy s25", ["galaxy-s25"]),
    ("s25ultra", ["galaxy-s25-ultra"]), ("galaxya54", ["galaxy-a54"]), ("Samsung Galaxy A55 5G", ["galaxy-a55"]),
    ("xiaomi14", ["xiaomi-14"]), ("xiaomi 14 pro", ["xiaomi-14-pro"]), ("xiaomi15ultra", ["xiaomi-15-ultra"]),
    ("redmi note 13", ["redmi-note-13-4g", "redmi-note-13-5g"]), ("redminote13pro+", ["redmi-note-13-pro-plus"]),
    ("redmi note 14 pro 5g", ["redmi-note-14-pro-5g"]), ("oneplus12", ["oneplus-12"]), ("oneplus 13", ["oneplus-13"]),
    ("oneplus8pro", ["oneplus-8-pro"]), ("vivox200pro", ["vivo-x200-pro"]), ("vivo x100", ["vivo-x100"]),
    ("oppofindx8", ["oppo-find-x8"]), ("find x7 ultra", ["oppo-find-x7-ultra"]), ("honormagic6", ["honor-magic6"]),
    ("mate60pro+", ["huawei-mate-60-pro-plus"]), ("huawei mate 60 pro", ["huawei-mate-60-pro"]),
    ("pura70ultra", ["huawei-pura-70-ultra"]),
]


def test_forty_names_as_users_type_them():
    assert len(USER_NAMES) == 40
    for name, ids in USER_NAMES:
        assert sorted(p.id for p in profiles.find_phones(name)) == ids, name


def test_variants_stay_distinct():
    """"+", Pro, Max, Ultra and regional chips never silently resolve to another model."""
    pairs = [("s24+", "s24"), ("mate60pro+", "mate60pro"), ("s23+", "s23"), ("iphone16pro", "iphone16promax"),
             ("pixel9pro", "pixel9proxl"), ("redminote13pro+", "redminote13pro"), ("xiaomi14", "xiaomi14ultra")]
    for a, b in pairs:
        assert {p.id for p in profiles.find_phones(a)}.isdisjoint(p.id for p in profiles.find_phones(b)), (a, b)
    with pytest.raises(MCPMError, match="sold with different chips.*Exynos 2400.*Snapdragon 8 Gen 3"):
        profiles.find_phone("galaxy s24")
    for name in ["iphone 16 pro maxx", "galaxy s24 fe", "pixel 9 pro fold", "honor magic7 lite", "xiaomi 14t pro"]:
        with pytest.raises(MCPMError):
            profiles.find_phones(name)


def test_unknown_names_suggest_the_family_and_the_soc_route():
    with pytest.raises(MCPMError) as e:
        profiles.find_phone("Xiaomi 12 Prp")
    msg = str(e.value)
    assert e.value.exit_code == 2 and "Xiaomi 12 Pro" in msg and "--soc" in msg and "\n" not in msg
    with pytest.raises(MCPMError) as e:
        profiles.find_phone("iPhone 18 Pro Max")
    assert "family: iPhone" in str(e.value) and "Galaxy" not in str(e.value)
    with pytest.raises(MCPMError) as e:
        profiles.find_phone("galaxy s24 fe")
    assert "Samsung Galaxy S24" in str(e.value)


# ---------------------------------------------------------------- check command

def test_check_exit_codes():
    runner = CliRunner()
    ok = runner.invoke(check, ["Xiaomi 12 Pro"])
    assert ok.exit_code == 0 and "FITS" in ok.output and "8+3" in ok.output
    no = runner.invoke(check, ["iPhone 12", "--context", "2048"])
    assert no.exit_code == 1 and "DOES NOT FIT" in no.output and "pass --context" in no.output
    assert runner.invoke(check, ["iphone12"]).exit_code == 0  # iOS default context 1024
    assert runner.invoke(check, ["iphone12", "--context", "512"]).exit_code == 0
    assert runner.invoke(check, ["iPhone 15", "--context", "4096"]).exit_code == 0
    assert runner.invoke(check, ["iPhone 15", "--context", "4096", "--no-entitlement"]).exit_code == 1
    unknown = runner.invoke(check, ["Xiaomi 99"])
    assert unknown.exit_code == 2 and "family" in unknown.output and "--soc" in unknown.output
    assert runner.invoke(check, ["Xiaomi 12 Pro", "--context", "0"]).exit_code == 2
    assert runner.invoke(check, ["Xiaomi 12 Pro", "--model", "/no/such/dir"]).exit_code == 2
    assert runner.invoke(check, ["Xiaomi 12 Pro", "--model", ".", "--preset", "minicpm-2b"]).exit_code == 2
    assert runner.invoke(check, []).exit_code == 2


def test_check_by_soc_and_ram():
    runner = CliRunner()
    r = runner.invoke(check, ["--soc", "Snapdragon 8 Gen 3", "--ram", "12", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["soc"] == "Snapdragon 8 Gen 3" and data["ram_gb"] == 12 and data["os"] == "android"
    assert data["memory"]["usable"] == 4352 << 20 and data["speed"]["decode_range_short"]
    assert data["speed"]["measured"][0]["where"].startswith("same SoC")
    for soc in ["snapdragon8gen3", "SM8650", "dimensity 9300", "Apple A17 Pro", "kirin 9000s", "tensor g4", "sd855+"]:
        assert runner.invoke(check, ["--soc", soc, "--ram", "8"]).exit_code == 0, soc
    assert json.loads(runner.invoke(check, ["--soc", "a17 pro", "--ram", "8", "--json"]).output)["os"] == "ios"
    kirin = json.loads(runner.invoke(check, ["--soc", "kirin 9010", "--ram", "12", "--json"]).output)
    assert kirin["os"] == "harmonyos" and any("HarmonyOS NEXT" in n for n in kirin["notes"])
    assert json.loads(runner.invoke(check, ["--soc", "kirin 9000s", "--ram", "12", "--os", "android",
                                            "--json"]).output)["os"] == "android"
    assert runner.invoke(check, ["--soc", "A17 Pro", "--ram", "8", "--os", "android"]).exit_code == 2
    assert runner.invoke(check, ["--soc", "Snapdragon 8 Gen 3"]).exit_code == 2  # --ram missing
    bad = runner.invoke(check, ["--soc", "Snapdragon 8 Gen 9", "--ram", "12"])
    assert bad.exit_code == 2 and "unknown SoC" in bad.output and "Snapdragon 8 Gen" in bad.output
    assert runner.invoke(check, ["Pixel 9", "--soc", "Tensor G4", "--ram", "12"]).exit_code == 2
    # With a name, --ram picks one of the phone's RAM options and nothing else.
    assert json.loads(runner.invoke(check, ["xiaomi 14 pro", "--ram", "16", "--json"]).output)["ram_gb"] == 16
    wrong = runner.invoke(check, ["xiaomi 14 pro", "--ram", "8"])
    assert wrong.exit_code == 2 and "comes with 12 or 16 GB" in wrong.output


def test_check_shows_every_regional_variant():
    r = CliRunner().invoke(check, ["galaxys24", "--json"])
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert [v["soc"] for v in data["variants"]] == ["Exynos 2400", "Snapdragon 8 Gen 3"]
    text = CliRunner().invoke(check, ["galaxy s24"]).output
    assert "sold with different chips" in text and "Exynos 2400" in text and "Snapdragon 8 Gen 3" in text


def test_check_json():
    result = CliRunner().invoke(check, ["iPhone 15 Pro", "--json", "--preset", "minicpm-1b"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["status"] == "fits" and data["soc"] == "Apple A17 Pro" and data["model"] == "minicpm-1b"
    assert data["context"] == 1024 and data["memory"]["kv_cache"] == 52 * 2 * 8 * 64 * 2 * 1024
    low, high = data["speed"]["decode_range_short"]
    assert 0 < low < data["speed"]["decode_tps_short"] < high


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


def test_plot_draws_ranges_not_points():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from mcpm_mobile.devices import plot

    cal = speed.calibration()
    rows = plot.speed_rows(cal)
    fig, ax = plt.subplots()
    try:
        plot._speed_panel(ax, rows, cal.summary)
        bars = [b for b in ax.patches if b.get_height() < 0.5]  # the range bars (roofline bars are taller)
        spans = sorted((round(b.get_x(), 6), round(b.get_x() + b.get_width(), 6)) for b in bars)
        expected = sorted((round(r["loso_low"], 6), round(r["loso_high"], 6))
                          for r in rows if r["loso_low"] is not None)
        assert spans == expected and all(high > low for low, high in spans)
        lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 2]  # in-sample ranges
        assert len(lines) == sum(r["in_sample_low"] is not None for r in rows)
    finally:
        plt.close(fig)


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

