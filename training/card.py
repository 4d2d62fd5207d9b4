"""models/README.md, the model card, written from the manifest and the CV reports."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from training.report import PAPER_TABLE, recipe_cells
from training.report_views import threshold_rule


def _pct(value) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def licences_by_source(images: Path | list[Path] | None) -> dict[str, Counter]:
    table: dict[str, Counter] = defaultdict(Counter)
    folders = images if isinstance(images, list) else [images] if images is not None else []
    for folder in folders:
        if not (Path(folder) / "labels.csv").is_file():
            continue
        with open(Path(folder) / "labels.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                table[row.get("source") or "unknown"][row.get("licence") or "not stated"] += 1
    return table


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _variant_rows(manifest: dict, reports: dict[str, dict]) -> list[str]:
    names = list(reports)
    lines = ["| variant | publication: size KB | publication: accuracy | "
             + " | ".join(f"recipe {n}: accuracy (5-fold mean ± sd) | size KB | "
                          "steady ms (CV run)" for n in names) + " | shipped file KB |",
             "|---|---|---|" + "---|---|---|" * len(names) + "---|"]
    for variant, paper in PAPER_TABLE.items():
        cells = [recipe_cells(rep, variant) for rep in reports.values()]
        entry = manifest["variants"].get(variant)
        shipped_kb = "– (not shipped)" if entry is None else f"{entry['size_bytes'] / 1024:,.0f}"
        size = "not stated" if paper["size_kb"] is None else f"{paper['size_kb']:,}"
        lines.append(f"| {variant} | {size} | {paper['accuracy']}% | " + " | ".join(cells)
                     + f" | {shipped_kb} |")
    return lines


def _latency_lines(out_dir: Path, manifest: dict, invokes: int) -> list[str]:
    """Time the shipped files now (the CV runs share 2 cores with other work, so their
    latency columns are upper bounds)."""
    from training.litert_eval import run_tflite

    load = os.getloadavg()[0]
    lines = ["", f"## Latency of the shipped files (ai-edge-litert, 1 thread, XNNPACK; median of "
             f"{invokes} invokes; measured when this card was written, load average {load:.1f} "
             "on 2 cores)", "", "| variant | size KB | warm-up ms | steady ms |",
             "|---|---|---|---|"]
    probe = np.full((1, 224, 224), 128, dtype=np.uint8)
    for name, entry in manifest["variants"].items():
        run = run_tflite(out_dir / entry["file"], probe, steady_invokes=invokes)
        lines.append(f"| {name} | {run.size_kb:,.0f} | {run.warmup_ms:.1f} | {run.steady_ms:.2f} |")
    return lines


def goal_rows(report: dict) -> list[str]:
    """The view-model issue's goals against this report's numbers (Int8, out of fold)."""
    overall, regions = report["overall"], report["per_region"]
    big = {r: g for r, g in regions.items() if g["n"] >= 20}
    chest = regions.get("chest", {})
    rows = [
        ("frontal vs lateral, overall", "≥ 99%", overall["frontal_lateral_accuracy"], 0.99),
        *[(f"frontal vs lateral, {r} (n {g['frontal_lateral_n']})", "≥ 97%",
           g["frontal_lateral_accuracy"], 0.97) for r, g in big.items()],
        ("AP vs PA on chest films the node writes", "≥ 95%", chest.get("ap_pa_accuracy_written"),
         0.95),
        ("wrong writes, share of checked writes", "≤ 0.2%", overall["wrong_write_rate"], None),
        ("coverage (written), overall", "≥ 95%", overall["coverage"], 0.95),
        *[(f"coverage (written), {r}", "≥ 90%", g["coverage"], 0.90) for r, g in big.items()],
        ("obliques written", "≤ 10%",
         overall["obliques_written"] / max(overall["obliques"], 1), None),
        ("Int8 and FP32 same would_write", "≥ 99.5%", report.get("int8_fp32_would_write_agreement"),
         0.995),
    ]
    lines = ["| goal | target | measured | met |", "|---|---|---|---|"]
    for name, target, value, floor in rows:
        if value is None:
            met = "–"
        elif floor is not None:
            met = "yes" if value >= floor else "**no**"
        else:
            limit = 0.002 if "wrong" in name else 0.10
            met = "yes" if value <= limit else "**no**"
        lines.append(f"| {name} | {target} | {_pct(value) if value is not None else '–'} | {met} |")
    return lines


def _views_sections(shipped: dict, manifest: dict) -> list[str]:
    from training.report_views import group_table, trade_off_table, would_write_table

    cm = shipped["confusion_matrix"]
    lines = ["", f"## Results of recipe `{manifest['recipe']['name']}` "
             f"({shipped['folds']}-fold CV, Int8 via LiteRT, out of fold)", "",
             f"Protocol: {shipped['protocol']}; {shipped['patients']} patient groups. "
             f"Wall time of the CV with every export: {shipped['wall_time_s'] / 60:.0f} min on "
             "2 CPU cores. Full report: `report/shipped.md`; reliability diagram "
             "`report/shipped.png`; errors `report/shipped-misclassified.csv`.", "",
             "### Against the goals", ""]
    lines += goal_rows(shipped)
    lines += ["", *trade_off_table(shipped["policy"]), "",
              "A hospital that accepts more wrong writes for more coverage sets the thresholds of "
              "that row in `tag.thresholds`; the log records that the config's values applied.",
              ""]
    lines += group_table("Per region", shipped["per_region"])
    lines += ["", *group_table("Per source", shipped["per_source"])]
    lines += ["", "### What the node would write, by truth", "", *would_write_table(cm)]
    lines += ["", "Coverage = films written into an empty ViewPosition with the shipped defaults; "
              "family decided = frontal/lateral certain (a configured `tag.body_part_defaults` "
              "entry completes those frontal films); unverifiable = AP/PA written where the "
              "labels do not say which."]
    return lines


def write_card(out_dir: Path, manifest: dict, images: Path | list[Path] | None,
               latency_invokes: int = 300) -> Path:
    report_dir = out_dir / "report"
    recipe = manifest["recipe"]
    views = manifest.get("heads") == "views"
    # The paper's recipe next to the recipe these files were trained with.
    reports = {name: rep for name in dict.fromkeys(("paper", recipe["name"]))
               if (rep := _load(report_dir / f"{name}.json")) is not None}
    shipped = reports.get(recipe["name"])
    data = manifest["training_data"]
    lines = [
        "# Model card: dicomnode view model (AP, PA, lateral, or abstain)" if views else
        "# Model card: dicomnode view classifier (frontal AP vs lateral LA)",
        "",
        "Generated by `python -m training ship`; numbers come from `report/*.json` "
        "(`python -m training cv`). Do not edit by hand: rerun the commands below.",
        "",
        "## What it is",
        "- MobileNetV2 alpha 1.0 (ImageNet weights), GlobalAveragePooling2D → Dense(128, ReLU) → "
        + ("three heads in one float32 (1, 7) output: **family** (frontal, lateral, "
           "other), **AP vs PA** (given frontal) and **region** (chest, other)"
           + ("; the file emits each head's logits and the node applies the softmax in float "
              "(a softmax inside the Int8 graph is quantised to steps of 1/256, which made "
              "confidences near the write thresholds differ between Int8 and FP32)"
              if manifest.get("scores") == "logits" else ", softmax probabilities")
           if views else "Dense(2, softmax)")
        + f"; input float32 (1, 224, 224, 3), grey 0–255 repeated to 3 channels; pixel scaling "
        f"`{recipe['scaling']}` is a layer inside the model.",
        f"- Quantisation of `{manifest['default_variant']}`: "
        + manifest["variants"].get(manifest["default_variant"], {}).get("quantisation",
                                                                       "not recorded") + ".",
        f"- Classes `{manifest['labels']}`; the node runs `{manifest['default_variant']}` "
        "(`model_int8.tflite`) through ai-edge-litert. `manifest.json` lists every file with its "
        "sha256; the node refuses a file whose hash differs, and a manifest without "
        "calibration and thresholds.",
        f"- Recipe `{recipe['name']}`: {json.dumps(recipe)}",
        f"- Trained on {data['n']} images ({data['per_class_n']}"
        + (f"; AP/PA known for {data.get('ap_pa_known_n')}; {data.get('patients')} patient groups"
           if views else "")
        + f"), training data sha256 `{manifest['training_data_sha256']}`; {manifest['date']}; "
        f"versions {manifest['versions']}.",
    ]
    if "per_folder" in data:  # manifests shipped before several data folders: not said
        folders = ", ".join(f"{n} from `{name}`" for name, n in data["per_folder"].items())
        lines.append(f"- Data: {folders}; **{data['reviews_n']} from reviewers' verdicts** "
                     "(source `reviews`: `dicomnode log export-reviews`, the hospital's own "
                     "films, judged by its reviewers).")
    if views:
        lines += [
            "",
            "## Design: why three heads",
            "- **Family** (frontal / lateral / other) learns from every film. Obliques "
            f"({data['per_class_n'].get('oblique', 0)} here) are the `other` class: data for "
            "abstaining, never written.",
            "- **AP vs PA** is a partial label: only frontal films whose view the source states "
            f"({data.get('ap_pa_known_n')} here) teach it; frontal films of unknown view get "
            "weight 0 there and still teach the family head. A guess is never trained in.",
            "- **Region** (chest / other) gates AP vs PA: the data can check AP vs PA on chest "
            "films only (FracAtlas and AASCE, most limbs and spines, say nothing), so the node "
            "writes AP or PA only on films the model takes for a chest, and abstains on other "
            "frontal films unless the hospital configures `tag.body_part_defaults` (e.g. "
            "`{HAND: PA, KNEE: AP}`; logged as a default).",
            "- (region, family) cells are weighted by count^-0.5 (mean 1), so no region is learnt "
            "as 'always one view' (the shared data have 153 lateral skulls vs 6 frontal, 142 "
            "frontal spines vs 12 lateral).",
            "- Folds are grouped by `patient_id` (no patient on both sides) and stratified by "
            "region and family (scikit-learn StratifiedGroupKFold).",
            "",
            "## Calibration and write thresholds (in `manifest.json`)",
            f"- Temperature scaling per head, fitted on the out-of-fold Int8 outputs of the CV: "
            f"`{manifest['calibration']}` (softmax(z / T) on each head's logits z).",
            f"- Thresholds on the calibrated probabilities: `{manifest['thresholds']}`, chosen on "
            f"{manifest['thresholds_chosen']['chosen_on']} as the grid point with the "
            f"{threshold_rule(manifest['thresholds_chosen'])} (AP/PA writes on films of unknown "
            "AP/PA capped at 2% of writes)."
            + (" A threshold inside a cluster of confidences lets rounding decide which films "
               "get written; preferring points where Int8 and FP32 agree keeps it out of them."
               if manifest["thresholds_chosen"].get("min_int8_fp32_agreement") else ""),
            "- Rule (dicomnode.view_policy): lateral if p(lateral) ≥ `lateral`; frontal if "
            "p(frontal) ≥ `frontal`, then AP or PA only if p(chest) ≥ `chest` and p(AP or PA) ≥ "
            "`ap_pa`; otherwise abstain with the reason logged. The node uses these values; "
            "`tag.thresholds` in the config overrides them, and every log row records which "
            "applied.",
        ]
    lines += [
        "",
        "## Intended use",
        "- Suggest the view (AP, PA, lateral) of a projection radiograph at an edge DICOM "
        "node, which writes ViewPosition with a coercion record only when certain. Not a "
        "diagnostic device; not for CT/MR/US (route by modality first).",
        "- Trained on public research data with mixed licences (below; AASCE is research use "
        "only); for this product's development and evaluation only until retrained on data "
        "cleared for production (`python -m training cv` then `ship --dicom /archive` retrains "
        "on a hospital's own files labelled by their ViewPosition).",
        "",
        "## Data sources and licences (the labels.csv of each data folder)",
        "",
        "| source | images | licence(s) |",
        "|---|---|---|",
    ]
    for source, counter in sorted(licences_by_source(images).items()):
        lic = "; ".join(f"{name} ({n})" for name, n in counter.most_common())
        lines.append(f"| {source} | {sum(counter.values())} | {lic} |")
    if shipped and views:
        lines += _views_sections(shipped, manifest)
    elif shipped:
        lines += ["", f"## Accuracy of recipe `{recipe['name']}` ({shipped['folds']}-fold CV, "
                  "Int8 via LiteRT, out of fold)",
                  "", f"Overall {_pct(shipped['overall_int8_accuracy'])}; Int8 and FP32 agree on "
                  f"{_pct(shipped['int8_fp32_agreement'])} of test images; protocol: "
                  f"{shipped['protocol']}.", "",
                  "| body part | n | errors | accuracy |", "|---|---|---|---|"]
        for part, row in shipped["per_body_part_detail"].items():
            lines.append(f"| {part} | {row['n']} | {row['errors']} | {_pct(row['accuracy'])} |")
    if reports:
        lines += ["", "## Row by row against the paper (Bimbraw & Steines, `../shared/paper.md`)",
                  "", "Paper: lumbar spine only, 400 + 400 images, RTX 4080 / Jetson timings. "
                  "Ours: 2 x86 cores, 1 thread, ai-edge-litert with XNNPACK; `paper` = the "
                  "paper's recipe and protocol (two classes, 359 + 359 of our images, stratified "
                  "folds), `shipped` = the view model on all images (accuracy = frontal vs "
                  "lateral).", ""]
        lines += _variant_rows(manifest, reports)
        if views:
            lines += ["", "The paper's per-body-part accuracy is in `report/paper.md`; the view "
                      "model's per-region figures are above (the two group films differently)."]
        elif "paper" in reports and shipped and recipe["name"] != "paper":
            lines += ["", f"| region or body part (Int8, out of fold, frontal vs lateral) | "
                      f"paper recipe | {recipe['name']} recipe |",
                      "|---|---|---|"]
            for part in sorted(set(reports["paper"]["per_body_part"]) | set(
                    shipped["per_body_part"])):
                lines.append(f"| {part} | {_pct(reports['paper']['per_body_part'].get(part))} | "
                             f"{_pct(shipped['per_body_part'].get(part))} |")
    lines += _latency_lines(out_dir, manifest, latency_invokes)
    checks = manifest.get("checks", {})
    if checks:
        lines += ["", "## Reference DICOM files (node path: dicomnode.preprocess + ViewClassifier "
                  "+ tag policy, empty ViewPosition)",
                  "", "| file | " + " | ".join(next(iter(checks.values()))) + " |",
                  "|---|" + "---|" * len(next(iter(checks.values())))]
        for name, per_variant in checks.items():
            lines.append(f"| {name} | " + " | ".join(
                f"{v['label']} → writes {v['would_write'] or 'nothing'}"
                for v in per_variant.values()) + " |")
    lines += ["", "## Known limits", *known_limits(shipped if views else None)]
    lines += [
        "",
        "## How to regenerate",
        "```sh",
        "make setup-test                      # or: pip install -e '.[training]'",
        ".venv/bin/python -m training cv --recipe paper --balanced 359   # report/paper.*",
        ".venv/bin/python -m training cv --recipe shipped                # report/shipped.*, "
        "calibration + thresholds",
        ".venv/bin/python -m training ship                               # models/*.tflite, "
        "manifest.json, this card",
        "```",
        "Images and weights come from `$DICOMNODE_SHARED` (default `../shared`); nothing is "
        "downloaded. Feature caches and Keras files go to `training-runs/` (git-ignored).",
    ]
    path = out_dir / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def known_limits(report: dict | None) -> list[str]:
    lines = ["- The out-of-fold errors of the shipped recipe, looked at by eye: "
             "`report/error-review.md`."]
    if report:
        thresholds = report["policy"]["thresholds"]
        if thresholds["ap_pa"] >= 1.0:
            chest = report["per_region"].get("chest", {})
            lines.append(
                "- **This model writes no AP or PA by itself** (thresholds.ap_pa 1.0): out of "
                f"fold its AP-vs-PA head is right on {_pct(report['overall']['ap_pa_accuracy'])} "
                f"of the {report['overall']['ap_pa_known_n']} frontal films of known view "
                f"({_pct(chest.get('ap_pa_accuracy'))} on chest), per source from chance to "
                "perfect (it largely recognises the source), and no threshold keeps the wrong "
                "writes within the goal. Frontal films are abstained on (logged with the reason) "
                "unless `tag.body_part_defaults` names their term; laterals are written.")
        for region, g in report["per_region"].items():
            if g["n"] < 20:
                lines.append(f"- {region}: only {g['n']} films; its figures are anecdotes.")
        missed = [r for r, g in report["per_region"].items()
                  if g["n"] >= 20 and (g["coverage"] or 0) < 0.90]
        if missed:
            lines.append(
                "- Coverage is below 90% in " + ", ".join(
                    f"{r} ({_pct(report['per_region'][r]['coverage'])})" for r in missed)
                + ": frontal films are written only as AP or PA, and only where that is certain "
                "(see above); outside the chest the labels state AP/PA for almost no film, so "
                "there it cannot even be checked. What would close it: frontal films with their "
                "AP/PA from the modality's header, chest and other regions, from several sites "
                "(e.g. a hospital's own DICOM with ViewPosition: `cv --dicom` then `ship "
                "--dicom`), or a configured body-part default where the projection is fixed by "
                "protocol.")
    lines += [
        "- FracAtlas (most limb films) comes from one hospital, mostly small originals; lateral "
        "forearms and knees are often flexed, so pose can stand in for projection.",
        "- covid-chestxray-dataset views were typed by volunteers from paper figures; many "
        "images carry burned-in arrows and letters. VQA-Med images carry a watermark.",
        "- MONOCHROME1 films are inverted by the preprocessing; the model is trained on inverted "
        "views too.",
        "- LL vs RL is not learnt (the data almost never states it): laterals get the configured "
        "`tag.la_term` (default LL).",
    ]
    return lines
