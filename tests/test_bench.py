"""``break-a-scene bench``: every configuration is measured in one process and reported with ratios."""

import json

import pytest

from breakascene.bench.timing import OPTIONS, format_report, parse_configuration
from breakascene.cli import main
from breakascene.errors import ConfigError


def test_configuration_names_combine_with_plus():
    assert parse_configuration("lora+bf16") == ({"lora_rank": 4, "mixed_precision": "bf16"}, None, "paper", True)
    assert parse_configuration("research-defaults") == ({}, "research-defaults", "official", True)
    # ours at the research code's work (prior preservation, AdamW), and with the class row never skipped
    assert parse_configuration("official") == ({}, None, "official", True)
    assert parse_configuration("official+prior-unpruned+bf16") == ({"mixed_precision": "bf16"}, None, "official", False)
    with pytest.raises(ConfigError, match="unknown configuration 'fast'"):
        parse_configuration("lora+fast")


def test_bench_compares_configurations_in_one_process(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--model", "builtin:tiny", "--resolution", "128", "--steps", "1", "--device", "cpu",
                 "--compare", "explicit-everywhere", "default", "lora", "8bit-adam", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    results = {r["name"]: r for r in report["results"]}
    assert list(results) == ["explicit-everywhere", "default", "lora", "8bit-adam"]
    assert report["reference"] == "explicit-everywhere"

    for name in ("explicit-everywhere", "default", "lora"):
        r = results[name]
        assert r["ok"] and set(r["phases"]) == {"phase1", "phase2"}
        for numbers in r["phases"].values():
            assert numbers["median_s_per_step"] > 0 and numbers["peak_gb"] > 0 and numbers["losses_finite"]
        assert r["projected_full_run_s"] == pytest.approx(
            400 * r["phases"]["phase1"]["median_s_per_step"] + 400 * r["phases"]["phase2"]["median_s_per_step"])
        ratio = r["ratio"]["phase2"]["s_per_step"]
        expected = r["phases"]["phase2"]["median_s_per_step"] / results["explicit-everywhere"]["phases"]["phase2"]["median_s_per_step"]
        assert ratio == pytest.approx(expected)
    # the baseline keeps the research code's maps; ours keeps none
    assert results["explicit-everywhere"]["phases"]["phase1"]["research_maps_kept"] > 0
    assert results["default"]["phases"]["phase1"]["research_maps_kept"] == 0
    # what trains: phase 1 only the handles; LoRA's phase 2 a small fraction of the full phase 2
    assert results["default"]["phases"]["phase1"]["trainable_params"] == 3 * 32
    assert results["lora"]["phases"]["phase2"]["trainable_params"] < results["default"]["phases"]["phase2"]["trainable_params"] / 5
    assert not results["8bit-adam"]["ok"] and "CUDA" in results["8bit-adam"]["error"]

    table = capsys.readouterr().out
    assert "phase2 time/mem vs explicit-everywhere" in table and "skipped: --use-8bit-adam" in table


def test_bench_rejects_unknown_configurations_before_building_anything(capsys):
    assert main(["bench", "--model", "builtin:tiny", "--compare", "default", "turbo"]) == 2
    assert "unknown configuration 'turbo'" in capsys.readouterr().err


def test_every_named_option_is_an_extract_config_field():
    from breakascene.config import ExtractConfig

    fields = set(ExtractConfig.__dataclass_fields__)
    for overrides in OPTIONS.values():
        assert set(overrides) <= fields


def test_report_formats_skipped_rows():
    report = {"phases": ["phase1"], "reference": "a", "model": "m", "resolution": 64, "steps": 1, "warmup": 0,
              "machine": {"cpu": "x"},
              "results": [{"name": "a", "ok": True, "memory": "rss", "ratio": {"phase1": {"s_per_step": 1.0, "peak": 1.0}},
                           "phases": {"phase1": {"median_s_per_step": 0.5, "peak_gb": 1.0}}},
                          {"name": "b", "ok": False, "error": "out of memory"}]}
    lines = format_report(report).splitlines()
    assert lines[1].split()[:3] == ["a", "0.500", "1.00"]
    assert lines[2].startswith("b") and "skipped: out of memory" in lines[2]


def test_bench_measures_equal_work_with_and_without_the_class_row_in_phase1(tmp_path):
    out = tmp_path / "bench.json"
    code = main(["bench", "--model", "builtin:tiny", "--resolution", "128", "--steps", "1", "--warmup", "0",
                 "--device", "cpu", "--compare", "research-defaults", "official+prior-unpruned", "official",
                 "--json", str(out)])
    assert code == 0
    results = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert all(r["ok"] and r["prior_preservation"] and r["preset"] == "official" for r in results.values())
    # the research baseline runs the class row in every phase, whatever the configuration says; ours skips it
    # where only the handles train (phase 1)
    assert [r["prune_class_branch"] for r in results.values()] == [False, False, True]
    rows = {name: {phase: n["batch_rows"] for phase, n in r["phases"].items()} for name, r in results.items()}
    assert rows == {"research-defaults": {"phase1": [2], "phase2": [2]},
                    "official+prior-unpruned": {"phase1": [2], "phase2": [2]},
                    "official": {"phase1": [1], "phase2": [2]}}
    assert all(numbers["losses_finite"] for r in results.values() for numbers in r["phases"].values())
