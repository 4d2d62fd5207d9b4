"""Tiny end-to-end training run on real data: images + DICOM in, CV report and shipped models out.

2 folds, 1 epoch, a few dozen images; real ImageNet weights; all four TFLite exports; LiteRT
inference; manifest and sha256 checks through the node's own loader.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.shared_data import CHEST_PA, CORPUS_DIR, SHARED, WEIGHTS, XRAY_VIEWS
from training.data import label_from_view_position, load_dicom_tree, load_image_folder
from training.recipes import Recipe

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared absent")

TINY = Recipe(name="tiny", scaling="symmetric", split_layer="out_relu",
              train_views=("orig", "flip", "invert"), epochs=1, batch_size=8,
              learning_rate=1e-3, representative_samples=6)
# The shipped recipe's path: the view heads, head first, then the top of the base fine-tuned on
# cached activations; patient-grouped folds, calibration and thresholds.
TINY_VIEWS = Recipe(name="tiny-views", scaling="symmetric", split_layer="block_16_project_BN",
                    train_views=("orig", "flip"), epochs=1, batch_size=8,
                    learning_rate=1e-3, fine_tune_epochs=1, fine_tune_learning_rate=1e-4,
                    fine_tune_views=("orig",), representative_samples=6, heads="views",
                    int8_float_stem_blocks=1)
PER_CLASS = 12
DICOM_FILES = {
    "CR__RG1_J2KI.dcm": "frontal",  # PA chest, JPEG 2000, MONOCHROME1
    "CR__RG3_J2KI.dcm": "frontal",  # AP extremity
    "CR__77654033_CR1_6154.dcm": "lateral",  # LL C-spine thumbnail
    "CR__77654033_CR2_6247.dcm": "frontal",
}
BAD_DICOM = {
    "CR-headeronly__chrJapMulti.dcm": "cannot preprocess",  # PA, but no pixel data
    "MR-malformed__MR_truncated.dcm": "",  # MR: no ViewPosition -> skipped and counted
}


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dicom")
    for name in [*DICOM_FILES, *BAD_DICOM]:
        (folder / name).symlink_to(CORPUS_DIR / "files" / name)
    (folder / "sub").mkdir()
    (folder / "sub" / CHEST_PA.name).symlink_to(CHEST_PA)
    (folder / "sub" / "not-dicom.txt").write_text("hello")
    return folder


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two images per class from the shared set, one corrupt image and one unknown label."""
    lines = (XRAY_VIEWS / "labels.csv").read_text().splitlines()
    rows = [r for r in lines[1:] if ",frontal," in r][:2] + [r for r in lines[1:]
                                                             if ",lateral," in r][:2]
    for row in rows:
        name = row.split(",")[0]
        (tmp_path / Path(name).name).symlink_to(XRAY_VIEWS / name)
    rows = [",".join([Path(r.split(",")[0]).name, *r.split(",")[1:]]) for r in rows]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    rows += ["broken.jpg,lateral,broken-source,chest", "x.jpg,decubitus,somewhere,chest"]
    (tmp_path / "labels.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    return tmp_path


def test_view_position_labels() -> None:
    assert label_from_view_position("PA") == "frontal"
    assert label_from_view_position("ap ") == "frontal"
    assert label_from_view_position("LL") == "lateral"
    assert label_from_view_position("RL") == "lateral"
    assert label_from_view_position("LATERAL") == "lateral"
    assert label_from_view_position("LLO") == "oblique"  # data for abstaining
    assert label_from_view_position("RLD") is None  # decubitus: no family
    assert label_from_view_position("") is None


def test_grouped_folds_keep_each_patient_in_one_fold() -> None:
    from training.cv import grouped_folds

    data = load_image_folder(XRAY_VIEWS, limit_per_class=40)
    fold_of = grouped_folds([f"{s.region}/{s.label}" for s in data.samples],
                            [s.group for s in data.samples], 3)
    by_patient: dict[str, set[int]] = {}
    for sample, fold in zip(data.samples, fold_of, strict=True):
        by_patient.setdefault(sample.group, set()).add(int(fold))
    assert all(len(folds) == 1 for folds in by_patient.values())
    assert any(len(folds) > 0 for folds in by_patient.values()) and set(fold_of) == {0, 1, 2}
    shared = [g for g in by_patient if sum(s.group == g for s in data.samples) > 1]
    assert shared, "the sample should hold patients with several films"
    # every family lands in every fold (stratified)
    for family in ("frontal", "lateral", "oblique"):
        assert {int(f) for s, f in zip(data.samples, fold_of, strict=True)
                if s.label == family} == {0, 1, 2}


def test_temperature_fit_softens_overconfident_outputs() -> None:
    from training.calibrate import fit_temperatures
    from training.data import Sample

    rng = np.random.default_rng(0)
    samples, raw = [], []
    for i in range(400):
        frontal = i % 2 == 0
        right = rng.random() < 0.8  # 80% right, but always 99% sure: overconfident
        p = 0.99 if right == frontal else 0.01
        raw.append([p, 1 - p - 1e-3, 1e-3, 0.5, 0.5, 0.5, 0.5])
        samples.append(Sample(f"{i}.jpg", "frontal" if frontal else "lateral", view="unknown"))
    temperatures = fit_temperatures(np.array(raw), samples)
    assert temperatures["family"] > 2.0  # 99% sure at 80% right needs softening


IDENTITY_CALIBRATION = {"method": "temperature", "family": 1.0, "ap_pa": 1.0, "region": 1.0}


def family_outputs(p_lateral: np.ndarray, p_other: float) -> np.ndarray:
    """View-model outputs (n, 7) with these p(lateral), p(other) = p_other, p(frontal) the rest,
    and undecided AP/PA and region heads."""
    other = np.full_like(p_lateral, p_other)
    return np.column_stack([1.0 - p_lateral - other, p_lateral, other,
                            np.full((len(p_lateral), 4), 0.5)])


def test_lateral_writes_stay_within_the_wrong_write_goal_however_many_frontal_calls() -> None:
    """One frontal film called lateral at p 0.97 is 0.09% of 1,101 frontal/lateral calls but 1%
    of the 101 lateral writes: the lateral threshold must rise above it, though 50 laterals at
    p 0.96 are then not written."""
    from dicomnode.view_policy import decide_many
    from training.calibrate import choose_thresholds, outcomes
    from training.data import Sample

    identity = IDENTITY_CALIBRATION
    p_lateral = np.concatenate([np.full(50, 0.96), np.full(50, 0.99), np.full(1000, 0.001),
                                [0.97]])
    raw = family_outputs(p_lateral, 1e-4)
    samples = ([Sample(f"l{i}.png", "lateral") for i in range(100)]
               + [Sample(f"f{i}.png", "frontal") for i in range(1001)])
    chosen = choose_thresholds(raw, samples, identity, 0.002)
    assert 0.97 < chosen["lateral"] <= 0.99
    result = outcomes(decide_many(raw, identity, chosen)["decided"], samples)
    assert (result == "correct").sum() == 50 and (result == "wrong").sum() == 0


def test_thresholds_avoid_a_cluster_where_int8_and_fp32_would_write_differently() -> None:
    """Laterals piled up at p 0.984-0.993 (as label smoothing leaves them), two frontal films
    at p lateral 0.986 and 0.988 forcing the lateral threshold into the pile, and FP32 outputs
    that differ from Int8 by rounding noise: the plain rule puts the threshold inside the pile,
    where Int8 and FP32 write different films; preferring agreement moves it above the pile."""
    from dicomnode.view_policy import decide_many
    from training.calibrate import choose_thresholds, would_write_agreement
    from training.data import Sample

    rng = np.random.default_rng(0)
    identity = IDENTITY_CALIBRATION
    piled = rng.uniform(0.984, 0.993, 300)
    sure = rng.uniform(0.9985, 0.9999, 40)
    frontal = rng.uniform(0.0001, 0.0005, 300)
    p_lateral = np.concatenate([piled, sure, frontal, [0.986, 0.988]])
    samples = ([Sample(f"l{i}.png", "lateral") for i in range(340)]
               + [Sample(f"f{i}.png", "frontal") for i in range(302)])
    int8 = family_outputs(p_lateral, 1e-3)
    noise = np.zeros_like(p_lateral)
    noise[:300] = rng.normal(0.0, 0.0015, 300)  # the pile; the sure laterals and frontals alike
    fp32 = family_outputs(np.clip(p_lateral + noise, 0.0, 0.9995), 1e-3)

    plain = choose_thresholds(int8, samples, identity, 0.002)
    assert 0.988 < plain["lateral"] < 0.993  # inside the pile
    assert would_write_agreement(int8, fp32, identity, plain) < 0.995
    steady = choose_thresholds(int8, samples, identity, 0.002, fp32, 0.995)
    assert steady["lateral"] > plain["lateral"]
    assert would_write_agreement(int8, fp32, identity, steady) >= 0.995
    written = decide_many(int8, identity, steady)["decided"]
    assert (written[:340] == "LAT").sum() >= 40 and (written[340:] == None).all()  # noqa: E711
    # no grid point reaches an impossible agreement: the plain rule's choice stands
    assert choose_thresholds(int8, samples, identity, 0.002, fp32, 1.01) == plain


def test_dicom_tree_labels_by_view_position_and_lists_what_it_skips(dicom_folder: Path) -> None:
    dataset = load_dicom_tree(dicom_folder)
    labels = {Path(s.path).name: s.label for s in dataset.samples}
    assert labels == {**DICOM_FILES, CHEST_PA.name: "frontal"}
    chest = next(s for s in dataset.samples if Path(s.path).name == CHEST_PA.name)
    assert (chest.view, chest.region) == ("PA", "chest") and chest.patient_id.startswith("dicom:")
    reasons = {Path(s.path).name: s.reason for s in dataset.skipped}
    assert set(reasons) == {*BAD_DICOM, "not-dicom.txt"}
    assert "cannot preprocess" in reasons["CR-headeronly__chrJapMulti.dcm"]
    assert "ViewPosition" in reasons["MR-malformed__MR_truncated.dcm"]
    assert dataset.pixels.shape == (5, 224, 224)


def test_image_folder_skips_bad_rows_and_lists_why(image_folder: Path) -> None:
    dataset = load_image_folder(image_folder)
    assert sorted(s.label for s in dataset.samples) == ["frontal"] * 2 + ["lateral"] * 2
    assert dataset.pixels.shape == (4, 224, 224)
    reasons = {s.path: s.reason for s in dataset.skipped}
    assert set(reasons) == {"broken.jpg", "x.jpg"}
    assert "cannot read image" in reasons["broken.jpg"] and "decubitus" in reasons["x.jpg"]
    assert len(dataset.fingerprint) == 64
    picked = load_image_folder(XRAY_VIEWS, limit_per_class=3)
    assert sorted(s.label for s in picked.samples) == (
        ["frontal"] * 3 + ["lateral"] * 3 + ["oblique"] * 3)
    assert all(s.patient_id and s.region != "unknown" for s in picked.samples)


def test_missing_weights_file_stops_with_a_clear_message(tmp_path: Path) -> None:
    from training.cli import app

    missing = tmp_path / "nowhere.h5"
    result = CliRunner().invoke(app, ["ship", "--weights", str(missing), "--out",
                                      str(tmp_path / "models"), "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert str(missing) in result.output and "--weights" in result.output
    assert not (tmp_path / "models").exists()


@pytest.fixture(scope="module")
def cv_result(dicom_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    from training.cv import cross_validate

    runs = tmp_path_factory.mktemp("runs")
    return cross_validate(TINY, XRAY_VIEWS, dicom_folder, WEIGHTS, runs, folds=2,
                          limit_per_class=PER_CLASS, steady_invokes=3)


def test_tiny_cross_validation_writes_a_complete_report(cv_result, tmp_path: Path) -> None:
    from training.report import write_report

    n = len(cv_result.dataset.samples)
    assert n == 2 * PER_CLASS + len(DICOM_FILES) + 1
    assert {s.kind for s in cv_result.dataset.samples} == {"image", "dicom"}
    skipped = {Path(s.path).name for s in cv_result.skipped}
    assert {"not-dicom.txt", *BAD_DICOM} <= skipped
    for name, probabilities in cv_result.oof.items():
        assert not np.isnan(probabilities).any(), name  # every image tested exactly once
        assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-2), name
    summary = write_report(cv_result, tmp_path)
    assert set(summary["variants"]) == {"keras", "fp32", "fp16", "dynamic", "int8"}
    for row in summary["variants"].values():
        assert {"accuracy_mean", "accuracy_sd", "size_kb", "warmup_ms", "steady_ms"} <= set(row)
        assert 0.0 <= row["accuracy_mean"] <= 1.0 and row["size_kb"] > 1000
    sizes = summary["variants"]
    assert sizes["int8"]["size_kb"] < sizes["fp16"]["size_kb"] < sizes["fp32"]["size_kb"]
    assert summary["folds"] == 2 and sum(summary["per_class_n"].values()) == n
    assert 0.0 <= summary["int8_fp32_agreement"] <= 1.0
    cm = np.array(summary["confusion_matrix"]["rows_true_cols_predicted"])
    assert cm.sum() == n and len(summary["misclassified"]) == cm[0, 1] + cm[1, 0]
    assert "chest" in summary["per_body_part"]
    for suffix in (".json", ".md", ".png", "-folds.csv", "-misclassified.csv"):
        assert (tmp_path / f"tiny{suffix}").stat().st_size > 0
    assert json.loads((tmp_path / "tiny.json").read_text())["variants"] == summary["variants"]


@pytest.fixture(scope="module")
def reviews_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `dicomnode log export-reviews` writes for a log with verdicts (two films found,
    one in the spool and one in an archive; tests/test_review_export.py checks it in detail):
    the second data folder of the view model's tiny CV and ship."""
    from dicomnode.logdb.review_export import export_reviews
    from dicomnode.logdb.store import LogStore
    from tests.review_helpers import build_reviewed_log

    base = tmp_path_factory.mktemp("reviewed")
    log = build_reviewed_log(base / "node")
    with LogStore.open(log.url, upgrade=False) as store:
        result = export_reviews(store, base / "export", archive=log.archive)
    assert len(result.written) == 2 and len(result.missing) == 1
    return base / "export"


def test_several_data_folders_keep_their_files_and_patients_apart(image_folder: Path,
                                                                  reviews_folder: Path) -> None:
    from training.cli import app
    from training.data import load_data

    data = load_data([image_folder, reviews_folder])
    assert [s.folder for s in data.samples] == [image_folder.name] * 4 + ["export"] * 2
    reviews = [s for s in data.samples if s.source == "reviews"]
    assert sorted(s.path for s in reviews) == [f"reviews/lateral/{p.name}" for p in
                                         sorted((reviews_folder / "reviews" / "lateral").glob(
                                             "*.jpg"))]  # resolved against their own folder
    assert {s.patient_id.split("/")[0] for s in data.samples} == {image_folder.name, "export"}
    assert data.pixels.shape == (6, 224, 224) and len(data.fingerprint) == 64
    alone = [load_data(f).fingerprint for f in (image_folder, reviews_folder)]
    assert data.fingerprint not in alone  # the data sha256 covers both folders
    result = CliRunner().invoke(app, ["cv", "--data", str(image_folder), "--data",
                                      str(reviews_folder / "reviews")])
    assert result.exit_code == 2 and "no labels.csv in" in result.output


@pytest.fixture(scope="module")
def views_cv(dicom_folder: Path, reviews_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """The view model's CV (grouped folds, three heads, calibration) on a tiny pool: the shared
    images plus an export-reviews folder, and a DICOM tree; its report lands where ship reads
    the thresholds from."""
    from training.cv import cross_validate
    from training.report import write_report

    runs = tmp_path_factory.mktemp("runs-views")
    out = tmp_path_factory.mktemp("models")
    result = cross_validate(TINY_VIEWS, [XRAY_VIEWS, reviews_folder], dicom_folder, WEIGHTS,
                            runs, folds=2, limit_per_class=PER_CLASS, steady_invokes=3)
    summary = write_report(result, out / "report")
    return result, summary, out, runs, reviews_folder


def test_views_cross_validation_reports_regions_coverage_and_thresholds(views_cv) -> None:
    result, summary, out, _, _ = views_cv
    n = len(result.dataset.samples)
    folders = summary["per_folder"]  # the report says where the films came from
    assert list(folders)[:2] == ["xray-views", "export"] and list(folders)[2].startswith("dicom:")
    assert list(folders.values()) == [3 * PER_CLASS, 2, len(DICOM_FILES) + 1]
    assert summary["reviews_n"] == 2 and summary["per_source"]["reviews"]["n"] == 2
    assert "2 from reviewers' verdicts" in (out / "report" / "tiny-views.md").read_text()
    assert {s.patient_id.split("/")[0] for s in result.dataset.samples
            if s.source == "reviews"} == {"export"}
    assert {s.label for s in result.dataset.samples} == {"frontal", "lateral", "oblique"}
    for probabilities in result.oof.values():
        assert probabilities.shape == (n, 7) and not np.isnan(probabilities).any()
        for part in (slice(0, 3), slice(3, 5), slice(5, 7)):  # every head is a softmax
            assert np.allclose(probabilities[:, part].sum(axis=1), 1.0, atol=1e-2)
    groups = {}
    for sample, fold in zip(result.dataset.samples, result.fold_of, strict=True):
        groups.setdefault(sample.group, set()).add(int(fold))
    assert all(len(f) == 1 for f in groups.values())  # no patient on both sides of a fold
    policy = summary["policy"]
    assert set(policy["thresholds"]) == {"frontal", "lateral", "ap_pa", "chest"}
    assert all(0.0 <= row["int8_fp32_agreement"] <= 1.0 for row in policy["trade_off"])
    assert all(0.5 <= v <= 1.0 for v in policy["thresholds"].values())
    assert {"family", "ap_pa", "region"} <= set(policy["calibration"])
    overall = summary["overall"]
    assert overall["n"] == n
    assert overall["wrong_writes"] <= 0.002 * max(overall["correct_writes"] +
                                                  overall["wrong_writes"], 1)
    assert overall["written"] == (overall["correct_writes"] + overall["wrong_writes"]
                                  + overall["unverifiable_writes"])
    assert "chest" in summary["per_region"] and "fracatlas" in summary["per_source"]
    counts = summary["confusion_matrix"]["counts"]
    assert sum(sum(row.values()) for row in counts.values()) == n
    assert summary["reliability"]["calibrated"]["family"]
    assert 0.0 <= summary["int8_fp32_would_write_agreement"] <= 1.0
    for suffix in (".json", ".md", ".png", "-folds.csv", "-misclassified.csv"):
        assert (out / "report" / f"tiny-views{suffix}").stat().st_size > 0
    assert "Coverage against the wrong-write goal" in (out / "report" /
                                                       "tiny-views.md").read_text()


@pytest.fixture(scope="module")
def shipped(views_cv, dicom_folder: Path):
    from training.ship import ship

    _, _, out, runs, reviews_folder = views_cv
    manifest = ship(TINY_VIEWS, [XRAY_VIEWS, reviews_folder], dicom_folder, WEIGHTS, out, runs,
                    limit_per_class=PER_CLASS, latency_invokes=3)
    return out, manifest


def test_ship_needs_the_cv_report_of_the_same_data(tmp_path: Path, dicom_folder: Path) -> None:
    from training.ship import ship

    with pytest.raises(FileNotFoundError, match="training cv --recipe tiny-views"):
        ship(TINY_VIEWS, XRAY_VIEWS, dicom_folder, WEIGHTS, tmp_path / "models", tmp_path,
             limit_per_class=PER_CLASS)


def kernel_dtypes(path: Path) -> dict[str, set[str]]:
    """Op name -> the dtypes of its outputs in a TFLite file."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    tensors = interpreter.get_tensor_details()
    found: dict[str, set[str]] = {}
    for op in interpreter._get_ops_details():  # the interpreter's one listing of a graph's ops
        found.setdefault(op["op_name"], set()).add(tensors[op["outputs"][0]]["dtype"].__name__)
    return found


def test_ship_writes_variants_and_a_manifest_the_node_loads(shipped, views_cv) -> None:
    from dicomnode.classify import ViewClassifier, sha256_file
    from dicomnode.preprocess import PREPROCESSING_SPEC, preprocess_file
    from dicomnode.view_policy import HEAD_SLICES

    out, _ = shipped
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["labels"] == ["AP", "PA", "LAT", "OTHER"] and on_disk["heads"] == "views"
    assert on_disk["default_variant"] == "int8"
    assert on_disk["thresholds"] == views_cv[1]["policy"]["thresholds"]
    assert on_disk["calibration"] == views_cv[1]["policy"]["calibration"]
    assert on_disk["preprocessing"] == PREPROCESSING_SPEC
    assert len(on_disk["training_data_sha256"]) == 64
    data = on_disk["training_data"]  # both folders, and how many came from reviews
    assert data["images"] == [str(XRAY_VIEWS), str(views_cv[4])] and data["reviews_n"] == 2
    assert list(data["per_folder"].values()) == [3 * PER_CLASS, 2, len(DICOM_FILES) + 1]
    parts = [load_image_folder(XRAY_VIEWS, PER_CLASS), load_image_folder(views_cv[4], PER_CLASS),
             load_dicom_tree(Path(data["dicom"]), PER_CLASS)]
    assert on_disk["training_data_sha256"] == hashlib.sha256(
        "".join(p.fingerprint for p in parts).encode()).hexdigest()  # covers every folder
    assert {"tensorflow-cpu", "ai-edge-litert"} <= set(on_disk["versions"])
    assert set(on_disk["variants"]) == {"fp32", "fp16", "dynamic", "int8"}
    assert on_disk["scores"] == "logits"  # no softmax inside the Int8 graph
    # Int8 kernels, except the stem the recipe keeps float (int8_float_stem_blocks), and the
    # manifest says so
    kernels = kernel_dtypes(out / on_disk["variants"]["int8"]["file"])
    assert kernels["CONV_2D"] == {"int8", "float32"} and kernels["FULLY_CONNECTED"] == {"int8"}
    assert "blocks 1-1, which stay float32" in on_disk["variants"]["int8"]["quantisation"]
    assert kernel_dtypes(out / on_disk["variants"]["dynamic"]["file"])["CONV_2D"] == {"float32"}
    assert not list(out.glob("*.keras"))  # the Keras file stays in the work folder
    grey = preprocess_file(CHEST_PA)
    for name, entry in on_disk["variants"].items():
        path = out / entry["file"]
        assert entry["sha256"] == sha256_file(path)
        assert entry["size_bytes"] == path.stat().st_size
        assert entry["input_shape"] == [1, 224, 224, 3] and entry["input_dtype"] == "float32"
        classifier = ViewClassifier.from_manifest(out, name)
        prediction = classifier.predict(grey)
        raw = classifier._interpreter.get_tensor(classifier._output_index)[0]
        # logits: a head's values are not probabilities (they need not lie in 0..1 or sum to
        # 1); the node's softmax per head makes them so
        assert any(abs(float(raw[part].sum()) - 1.0) > 1e-3 or raw[part].min() < 0
                   for part in HEAD_SLICES.values()), raw
        assert prediction.label in ("AP", "PA", "LAT", "OTHER")
        assert abs(sum(prediction.probabilities.values()) - 1.0) < 1e-6
        assert prediction.thresholds == on_disk["thresholds"]
    assert set(on_disk["checks"][CHEST_PA.name]) == set(on_disk["variants"])
    assert "fine_tune" in on_disk["training"]
    card = (out / "README.md").read_text()
    assert "Intended use" in card and "CC BY 4.0" in card and "Against the goals" in card
    assert "**2 from reviewers' verdicts**" in card and "| reviews | 2 |" in card
    assert on_disk["training_data_sha256"] in card


def test_manifest_without_thresholds_is_refused(shipped, tmp_path: Path) -> None:
    from dicomnode.classify import ModelError, ViewClassifier

    out, _ = shipped
    copy = tmp_path / "models"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["thresholds"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="thresholds"):
        ViewClassifier.from_manifest(copy)
    manifest["thresholds"] = {"frontal": 0.2, "lateral": 0.9, "ap_pa": 0.9, "chest": 0.9}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"thresholds\.frontal"):
        ViewClassifier.from_manifest(copy)


def test_card_refresh_takes_cv_metrics_without_touching_models(shipped, views_cv,
                                                                tmp_path: Path) -> None:
    from training.report import write_report
    from training.ship import refresh_card

    out, _ = shipped
    copy = tmp_path / "models"
    shutil.copytree(out, copy)
    before = json.loads((copy / "manifest.json").read_text())
    write_report(views_cv[0], copy / "report")  # as if CV ran again after ship
    after = refresh_card(copy, XRAY_VIEWS, latency_invokes=3)
    assert after["variants"] == before["variants"]
    assert after["cv_metrics"]["variants"]["int8"]["accuracy_mean"] >= 0.0
    assert after["cv_metrics"]["overall"]["n"] == len(views_cv[0].dataset.samples)
    assert "Per region" in (copy / "README.md").read_text()


def test_node_refuses_a_tampered_model(shipped, tmp_path: Path) -> None:
    from dicomnode.classify import ModelError, ViewClassifier

    out, _ = shipped
    copy = tmp_path / "models"
    shutil.copytree(out, copy)
    ViewClassifier.from_manifest(copy)  # the untouched copy loads
    target = copy / "model_int8.tflite"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        ViewClassifier.from_manifest(copy)
