"""Every loader reads a tiny copy of its dataset's REAL layout, quirks included, and fails or skips loudly."""
from __future__ import annotations

import warnings

import pandas as pd
import pytest
from typer.testing import CliRunner

from microface.cli import app
from microface.data.datasets import (
    DATASETS, ClipError, LoadReport, MEGC2019_LABELS, load_bp4d, load_casme, load_casme2, load_casme2x, load_casme3,
    load_dataset, load_megc2019, load_samm, load_smic, load_synth,
)
from microface.data.datasets._common import frame_number, parse_aus, parse_frame_value

try:
    from tests import dataset_fixtures as F
except ImportError:  # pytest run from inside tests/
    import dataset_fixtures as F


def by_key(records):
    return {r.key: r for r in records}


def frame_nums(record):
    return [frame_number(p) for p in record.frames]


# ---------------------------------------------------------------- CASME II

@pytest.mark.parametrize("frames, prefix", [(".", "img"), ("CASME2_RAW_selected", "img"), ("Cropped", "reg_img")])
def test_casme2_reads_real_layouts(tmp_path, frames, prefix):
    root = F.make_casme2(tmp_path / "CASME2", frames=frames, prefix=prefix)
    records = load_casme2(root)
    assert len(records) == len(F.CASME2_ROWS)
    assert [r.subject for r in records] == ["sub01", "sub01", "sub02", "sub02", "sub10", "sub10", "sub10"]
    rec = by_key(records)["casme2/sub01/EP02_01f"]
    # numeric sort: img10 comes after img9, not after img1
    assert frame_nums(rec) == [8, 9, 10, 11, 12] == rec.frame_numbers
    assert (rec.onset, rec.apex, rec.offset) == (0, 2, 4)
    assert rec.frames[rec.apex].name == f"{prefix}10.jpg"
    assert rec.apex_source == "annotated" and rec.emotion == "happiness" and rec.label is None
    assert rec.aus == ["10", "12"] and rec.au_sides == ["L", "R"]


def test_casme2_slash_apex_is_filled_with_middle_frame(tmp_path):
    records = by_key(load_casme2(F.make_casme2(tmp_path / "c")))
    rec = records["casme2/sub01/EP03_02"]  # onset 46, apex '/', offset 52
    assert rec.apex_source == "middle"
    assert rec.frame_numbers[rec.apex] == 49
    assert all(r.apex_source == "annotated" for k, r in records.items() if k != "casme2/sub01/EP03_02")


def test_casme2_class_maps(tmp_path):
    root = F.make_casme2(tmp_path / "c")
    report = LoadReport()
    five = load_casme2(root, class_map="5class", report=report)
    assert sorted(r.emotion for r in five) == ["disgust", "happiness", "others", "repression", "surprise"]
    assert all(r.label == r.emotion for r in five)
    assert sorted(c for c, _ in report.excluded) == ["casme2/sub02/EP01_11f", "casme2/sub10/EP15_05"]  # fear, sadness
    merged = by_key(load_casme2(root, class_map="5class-merge"))
    assert len(merged) == len(F.CASME2_ROWS)
    assert merged["casme2/sub02/EP01_11f"].label == "others" and merged["casme2/sub10/EP15_05"].label == "others"
    with pytest.raises(ValueError, match="unknown class_map"):
        load_casme2(root, class_map="7class")


# ---------------------------------------------------------------- SAMM

def test_samm_header_on_row_14_and_zero_padded_subjects(tmp_path):
    records = by_key(load_samm(F.make_samm(tmp_path / "SAMM")))
    assert len(records) == len(F.SAMM_ROWS)
    rec = records["samm/006/006_1_2"]
    assert rec.frames[0].name == "006_05562.jpg" and rec.frame_numbers == [5562, 5563, 5564, 5565, 5566]
    assert (rec.onset, rec.apex, rec.offset) == (0, 2, 4)
    assert rec.emotion == "anger" and rec.aus == ["14"] and rec.au_sides == ["R"]
    assert records["samm/007/007_3_1"].frame_numbers[:4] == [998, 999, 1000, 1001]  # numeric across digit counts


def test_samm_five_class_drops_disgust_fear_sadness(tmp_path):
    report = LoadReport()
    records = load_samm(F.make_samm(tmp_path / "SAMM"), class_map="5class", report=report)
    assert {r.label for r in records} == {"anger", "happiness", "surprise", "others", "contempt"}
    assert by_key(records)["samm/011/011_2_4"].label == "others"  # SAMM's "Other"
    assert [c for c, _ in report.excluded] == ["samm/006/006_1_5"]


def test_samm_wrong_header_row_is_a_clear_error(tmp_path):
    root = tmp_path / "SAMM"
    F.write_sheet(root / "SAMM_Micro_FACS_Codes_v2.xlsx", [F.SAMM_HEADER, [6, "006_1_2"]])  # header on row 1
    (root / "006").mkdir(parents=True)
    with pytest.raises(ValueError, match="row 14"):
        load_samm(root)


# ---------------------------------------------------------------- CASME, SMIC, CAS(ME)^2, CAS(ME)^3, BP4D

def test_casme_numeric_suffix_frames_and_apexf1(tmp_path):
    records = by_key(load_casme(F.make_casme(tmp_path / "CASME")))
    rec = records["casme/sub01/EP01_5"]
    assert rec.frames[0].name == "reg_EP01_5-1.jpg" and rec.frame_numbers == list(range(1, 10))
    assert rec.apex == 3 and rec.offset == 8
    assert records["casme/sub01/EP03_2"].apex_source == "middle"
    assert records["casme/sub01/EP03_2"].frame_numbers[records["casme/sub01/EP03_2"].apex] == 12


def test_smic_folder_classes_and_middle_apex(tmp_path):
    records = by_key(load_smic(F.make_smic(tmp_path / "SMIC")))
    assert len(records) == len(F.SMIC_CLIPS)
    rec = records["smic/s02/s2_sur_01"]  # 7 frames 500..506
    assert (rec.onset, rec.apex, rec.offset) == (0, 3, 6) and rec.apex_source == "middle"
    assert rec.emotion == rec.label == "surprise"
    po = records["smic/s01/s1_po_02"]
    assert [p.name for p in po.frames] == ["image000009.jpg", "image000010.jpg", "image000011.jpg", "image000012.jpg"]
    assert {r.label for r in records.values()} == {"negative", "positive", "surprise"}


def test_smic_unknown_class_folder_names_the_clip(tmp_path):
    root = F.make_smic(tmp_path / "SMIC")
    F.write_frames(root / "HS" / "s01" / "micro" / "happy" / "s1_x_01", range(3), lambda n: f"image{n:06d}.jpg")
    with pytest.raises(ClipError, match="smic/s01/s1_x_01"):
        load_smic(root)
    report = LoadReport()
    with pytest.warns(UserWarning, match="skipped 1"):
        records = load_smic(root, on_error="skip", report=report)
    assert len(records) == len(F.SMIC_CLIPS) and report.skipped[0][0] == "smic/s01/s1_x_01"


def test_casme2x_headerless_sheet_type_and_long_video(tmp_path):
    root = F.make_casme2x(tmp_path / "CASME^2")
    report = LoadReport()
    micro = by_key(load_casme2x(root, report=report))
    assert sorted(micro) == ["casme2x/s15/anger1_1", "casme2x/s16/happy2_1"]
    assert [c for c, _ in report.excluded] == ["casme2x/row2/anger1_2"]  # the macro row
    rec = micro["casme2x/s15/anger1_1"]
    assert rec.frame_numbers == [3, 4, 5, 6, 7, 8]  # restricted to onset..offset of the long video
    assert (rec.onset, rec.apex, rec.offset) == (0, 2, 5)
    assert micro["casme2x/s16/happy2_1"].frames[0].parent.name == "16_happy2"
    macro = load_casme2x(root, kind="macro")
    assert [(r.clip_id, r.kind, r.emotion) for r in macro] == [("anger1_2", "macro", "positive")]
    assert len(load_casme2x(root, kind="all")) == 3


def test_casme3_label_sheet_and_color_frames(tmp_path):
    records = by_key(load_casme3(F.make_casme3(tmp_path / "CASME3"), class_map="4class"))
    assert sorted(records) == ["casme3/spNO.1/a_10", "casme3/spNO.1/a_2", "casme3/spNO.2/b_3"]
    rec = records["casme3/spNO.1/a_10"]
    assert rec.frame_numbers == [10, 11, 12, 13, 14] and rec.apex == 2
    assert rec.frames[0].parent.name == "color"
    assert rec.label == "positive" and records["casme3/spNO.1/a_2"].label == "negative"


def test_bp4d_macro_clips_from_au_occurrence(tmp_path):
    records = by_key(load_bp4d(F.make_bp4d(tmp_path / "BP4D")))
    rec = records["bp4d/F001/T1"]
    assert rec.kind == "macro" and rec.emotion == "happiness"
    assert rec.frame_numbers == [3, 4, 5, 6, 7, 8]  # the coded span only
    assert rec.frame_numbers[rec.apex] == 6 and rec.apex_source == "max_au_count"
    assert rec.aus == ["1", "2", "12"]  # AU4 coded 9 (unknown) at frame 5 is not active
    assert records["bp4d/M002/T8"].emotion == "disgust"


# ---------------------------------------------------------------- synthetic benchmark, MEGC 2019

def test_synth_reuses_casme2_path_with_ground_truth(tmp_path):
    root = F.make_synth(tmp_path / "synth")
    micro = load_synth(root)
    assert [r.key for r in micro] == ["synth/sub01/EP01_01", "synth/sub01/EP01_02", "synth/sub02/EP02_01"]
    assert all(r.dataset == "synth" and r.kind == "micro" for r in micro)
    assert micro[0].ground_truth == root / "ground_truth" / "sub01" / "EP01_01.npz"
    assert micro[1].apex_source == "middle"  # '/' apex, as in CASME II
    macro = load_synth(root, kind="macro")
    assert [(r.clip_id, r.kind) for r in macro] == [("MA01_01", "macro"), ("MA02_01", "macro")]
    assert macro[0].ground_truth == root / "ground_truth" / "macro" / "sub01" / "MA01_01.npz"
    assert len(load_synth(root, kind="all")) == 5


def test_synth_checks_manifest_and_ground_truth(tmp_path):
    root = F.make_synth(tmp_path / "synth")
    (root / "ground_truth" / "sub02" / "EP02_01.npz").unlink()
    with pytest.raises(ClipError, match="synth/sub02/EP02_01.*ground truth"):
        load_synth(root)
    report = LoadReport()
    with pytest.warns(UserWarning):
        assert len(load_synth(root, on_error="skip", report=report)) == 2
    assert report.loaded == 2 and len(report.skipped) == 1
    (root / "synth_manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="microface-synth"):
        load_synth(root)
    casme2_root = F.make_casme2(tmp_path / "real")
    with pytest.raises(FileNotFoundError, match="synth_manifest.json"):
        load_synth(casme2_root)


def test_megc2019_composite_mapping_and_label_order(tmp_path):
    root = F.make_megc2019(tmp_path / "megc")
    report = LoadReport()
    records = load_megc2019(root, report=report)
    assert MEGC2019_LABELS == ("negative", "positive", "surprise")
    labels = {(r.dataset, r.emotion): r.label for r in records}
    assert labels == {
        ("casme2", "happiness"): "positive", ("casme2", "disgust"): "negative", ("casme2", "repression"): "negative",
        ("casme2", "surprise"): "surprise",
        ("samm", "anger"): "negative", ("samm", "disgust"): "negative", ("samm", "contempt"): "negative",
        ("samm", "happiness"): "positive", ("samm", "surprise"): "surprise",
        ("smic", "negative"): "negative", ("smic", "positive"): "positive", ("smic", "surprise"): "surprise",
    }
    # CASME II others, fear, sadness and SAMM other are out, and counted
    assert sorted(c.split("/")[-1] for c, _ in report.excluded) == ["011_2_4", "EP01_11f", "EP05_03", "EP15_05"]
    assert len(records) == len(F.CASME2_ROWS) + len(F.SAMM_ROWS) + len(F.SMIC_CLIPS) - 4
    subjects = {r.subject for r in records}
    assert "casme2_sub01" in subjects and "samm_006" in subjects and "smic_s01" in subjects
    assert all(r.subject.startswith(r.dataset + "_") for r in records)
    same = load_megc2019(casme2_root=root / "CASME2", samm_root=root / "SAMM", smic_root=root / "SMIC")
    assert [r.key for r in same] == [r.key for r in records]


# ---------------------------------------------------------------- bad input

def test_wrong_root_and_missing_sheet_name_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_casme2(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub01").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="CASME2-coding-20140508.xlsx"):
        load_casme2(tmp_path / "empty")
    root = F.make_casme2(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="subject folders"):
        load_casme2(root, frames_dir="Cropped")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("casme9", root)
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['kind'\]"):
        load_dataset("casme2", root, kind="macro")
    assert len(load_dataset("CASME_II", root)) == len(F.CASME2_ROWS)  # aliases, any case


def test_missing_frames_raise_naming_clip_or_skip_counted(tmp_path):
    root = F.make_casme2(tmp_path / "c")
    for path in (root / "sub02" / "EP05_03").iterdir():
        path.unlink()
    (root / "sub02" / "EP05_03").rmdir()
    with pytest.raises(ClipError, match="casme2/sub02/EP05_03"):
        load_casme2(root)
    report = LoadReport()
    with pytest.warns(UserWarning, match="skipped 1 of 7"):
        records = load_casme2(root, on_error="skip", report=report)
    assert len(records) == 6 and report.rows == 7 and report.loaded == 6
    assert report.skipped[0][0] == "casme2/sub02/EP05_03" and "does not exist" in report.skipped[0][1]


def test_unreadable_image_and_onset_after_offset(tmp_path):
    root = F.make_casme2(tmp_path / "c")
    (root / "sub01" / "EP02_01f" / "img10.jpg").write_bytes(b"not a jpeg")  # the apex frame
    with pytest.raises(ClipError, match="casme2/sub01/EP02_01f.*img10.jpg cannot be read"):
        load_casme2(root)
    assert len(load_casme2(root, check_images="none")) == len(F.CASME2_ROWS)

    rows = [(1, "EP02_01f", 12, 10, 8, "12", "happiness")]
    bad = F.make_casme2(tmp_path / "bad", rows=[(1, "EP02_01f", 8, 10, 12, "12", "happiness")])
    F.write_sheet(bad / "CASME2-coding-20140508.xlsx",
                  [F.CASME2_HEADER] + [[s, f, None, on, ap, off, None, au, em] for s, f, on, ap, off, au, em in rows])
    with pytest.raises(ClipError, match="casme2/sub01/EP02_01f: onset frame 12 is after offset frame 8"):
        load_casme2(bad)


def test_onset_not_among_frames(tmp_path):
    root = F.make_casme2(tmp_path / "c")
    (root / "sub01" / "EP02_01f" / "img8.jpg").unlink()
    with pytest.raises(ClipError, match="EP02_01f: onset frame 8 is not among"):
        load_casme2(root)


def test_on_error_value_checked(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        load_casme2(F.make_casme2(tmp_path / "c"), on_error="ignore")


def test_no_warning_when_nothing_skipped(tmp_path):
    root = F.make_casme2(tmp_path / "c")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_casme2(root)


def test_parsers():
    assert parse_frame_value("/") is None and parse_frame_value(float("nan")) is None
    assert parse_frame_value(46.0) == 46 and parse_frame_value(" 46 ") == 46 and parse_frame_value(-1) is None
    with pytest.raises(ValueError, match="neither an integer"):
        parse_frame_value("abc")
    assert parse_aus("L10+R12") == (["10", "12"], ["L", "R"])
    assert parse_aus("R14A+12B") == (["14", "12"], ["R", ""])
    assert parse_aus(4.0) == (["4"], [""])
    assert parse_aus("AU4 + ?") == (["4", "?"], ["", ""])


def test_registry_names_every_loader():
    assert set(DATASETS) == {"casme2", "samm", "casme", "smic", "casme2x", "casme3", "megc2019", "synth", "bp4d"}


# ---------------------------------------------------------------- CLI

def test_index_cli_writes_csv_and_counts(tmp_path):
    root = F.make_casme2(tmp_path / "c")
    out = tmp_path / "out" / "index.csv"
    result = CliRunner().invoke(app, ["index", "--dataset", "casme2", "--root", str(root), "--out", str(out),
                                      "--class-map", "5class"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert len(table) == 5 and set(table["label"]) == {"happiness", "surprise", "disgust", "repression", "others"}
    assert {"first_frame", "onset", "apex", "offset", "subject", "au_sides"} <= set(table.columns)
    assert table.loc[table["clip_id"] == "EP03_02", "apex_source"].item() == "middle"
    assert "excluded casme2/sub02/EP01_11f" in result.output and "sub10: 2" in result.output
    assert not [p for p in out.parent.iterdir() if p.name != "index.csv"]  # no temp file left


def test_index_cli_reports_bad_root(tmp_path):
    result = CliRunner().invoke(app, ["index", "--dataset", "samm", "--root", str(tmp_path / "none"),
                                      "--out", str(tmp_path / "i.csv")])
    assert result.exit_code == 1 and "none" in result.output
    assert not (tmp_path / "i.csv").exists()


def test_synth_loader_reads_the_generator_output(tmp_path):
    """The loader's onset/apex/offset indices agree with the generator's own ground truth."""
    import numpy as np

    from microface.data import synth
    root = synth.generate(tmp_path / "bench", synth.SynthConfig(subjects=2, clips=1, macro_clips=1, image_size=32),
                          show_progress=False)
    records = load_synth(root, kind="all")
    assert sorted(r.kind for r in records) == ["macro", "macro", "micro", "micro"]
    for record in records:
        gt = np.load(record.ground_truth)
        assert (record.onset, record.apex, record.offset) == (int(gt["onset"]), int(gt["apex"]), int(gt["offset"]))
        assert record.frame_numbers == gt["frame_numbers"].tolist()
