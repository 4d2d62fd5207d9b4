"""CV report of the view model: per region and source, at the thresholds chosen out of fold.

Numbers are those of the node's rule (dicomnode.view_policy) applied to out-of-fold outputs:
frontal/lateral accuracy, AP-vs-PA accuracy where the view is known, coverage (share of films
the node would write into an empty ViewPosition), wrong writes (a written value that is false:
AP on PA, PA on AP, anything on an oblique, lateral on a frontal, frontal on a lateral), and
Int8-vs-FP32 agreement of what would be written.
"""

from __future__ import annotations

import statistics

import numpy as np

from dicomnode.view_policy import decide_many
from training.calibrate import calibrate, outcomes, reliability
from training.cv import CVResult, family_accuracy
from training.data import data_origin

FAMILY_NAMES = ("frontal", "lateral", "oblique")
TRUTH_ROWS = ("AP", "PA", "frontal (AP/PA unknown)", "lateral", "oblique")
DECIDED_COLS = ("AP", "PA", "LAT", "abstain (frontal)", "abstain")


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def truth_row(sample) -> str:
    if sample.label == "frontal":
        return sample.view if sample.view in ("AP", "PA") else "frontal (AP/PA unknown)"
    return sample.label


def group_metrics(rows: np.ndarray, raw: np.ndarray, result: np.ndarray, decided: np.ndarray,
                  samples, families: np.ndarray, heads: dict[str, np.ndarray],
                  family_decided: np.ndarray) -> dict:
    n = int(rows.sum())
    fl_rows = rows & (families < 2)
    known = rows & np.array([s.label == "frontal" and s.view in ("AP", "PA") for s in samples])
    ap_pa_pred = np.where(heads["ap_pa"][:, 0] >= 0.5, "AP", "PA")
    views = np.array([s.view for s in samples], dtype=object)
    written = rows & (decided != None)  # noqa: E711 - elementwise on an object array
    known_written = known & np.isin(decided, ["AP", "PA"])
    correct = int((result[rows] == "correct").sum())
    wrong = int((result[rows] == "wrong").sum())
    obliques = rows & (families == 2)
    return {
        "n": n,
        "frontal_lateral_n": int(fl_rows.sum()),
        "frontal_lateral_accuracy": (round(family_accuracy(raw[fl_rows], families[fl_rows]), 4)
                                     if fl_rows.any() else None),
        "ap_pa_known_n": int(known.sum()),
        "ap_pa_accuracy": (round(float((ap_pa_pred[known] == views[known]).mean()), 4)
                           if known.any() else None),
        "ap_pa_written_n": int(known_written.sum()),
        "ap_pa_accuracy_written": (
            round(float((decided[known_written] == views[known_written]).mean()), 4)
            if known_written.any() else None),
        "written": int(written.sum()),
        "coverage": round(float(written.sum() / n), 4) if n else None,
        "family_coverage": round(float((family_decided[rows] != None).sum() / n), 4)  # noqa: E711
        if n else None,
        "correct_writes": correct,
        "wrong_writes": wrong,
        "unverifiable_writes": int((result[rows] == "unverifiable").sum()),
        "wrong_write_rate": round(wrong / max(correct + wrong, 1), 4),
        "obliques": int(obliques.sum()),
        "obliques_written": int((obliques & written).sum()),
    }


def summarise_views(cv: CVResult) -> dict:
    from training.report import per_fold_rows

    samples = cv.dataset.samples
    families = cv.dataset.families
    ref = "int8" if "int8" in cv.oof else list(cv.oof)[-1]
    reference = cv.oof.get("fp32") if ref == "int8" else None
    policy = calibrate(cv.oof[ref], samples, cv.recipe.max_wrong_write_rate, reference,
                       cv.recipe.min_int8_fp32_agreement or None)
    calibration, thresholds = policy["calibration"], policy["thresholds"]
    per_variant_decided = {name: decide_many(raw, calibration, thresholds)
                           for name, raw in cv.oof.items()}
    calls = per_variant_decided[ref]
    decided, family_decided = calls["decided"], calls["family_decided"]
    result = outcomes(decided, samples)
    heads = {head: calls[head] for head in ("family", "ap_pa", "region")}

    def metrics_for(rows):
        return group_metrics(rows, cv.oof[ref], result, decided, samples, families, heads,
                             family_decided)

    every = np.ones(len(samples), bool)
    per_region = {r: metrics_for(np.array([s.region == r for s in samples]))
                  for r in sorted({s.region for s in samples})}
    per_source = {r: metrics_for(np.array([s.source == r for s in samples]))
                  for r in sorted({s.source for s in samples})}
    variants = {}
    for name in cv.oof:
        accs = [r.accuracy[name] for r in cv.fold_results]
        variants[name] = {
            "accuracy_mean": round(statistics.fmean(accs), 4),
            "accuracy_sd": round(_sd(accs), 4),
            "accuracy_oof": round(family_accuracy(cv.oof[name], families), 4),
            "size_kb": round(statistics.fmean(r.size_kb[name] for r in cv.fold_results), 1),
            "warmup_ms": round(statistics.fmean(r.warmup_ms[name] for r in cv.fold_results), 2),
            "steady_ms": round(statistics.fmean(r.steady_ms[name] for r in cv.fold_results), 2),
            "would_write": metrics_for(every) if name == ref else None,
        }
    agreement = None
    if "int8" in cv.oof and "fp32" in cv.oof:
        a, b = per_variant_decided["int8"]["decided"], per_variant_decided["fp32"]["decided"]
        agreement = round(float(np.mean([x == y for x, y in zip(a, b, strict=True)])), 4)
    confusion = {row: dict.fromkeys(DECIDED_COLS, 0) for row in TRUTH_ROWS}
    for i, s in enumerate(samples):
        col = decided[i] or ("abstain (frontal)" if family_decided[i] == "frontal"
                             else "abstain")
        confusion[truth_row(s)][col] += 1
    errors = []
    for i, s in enumerate(samples):
        fl_wrong = s.label != "oblique" and int(np.argmax(cv.oof[ref][i, :2])) != families[i]
        if result[i] == "wrong" or fl_wrong:
            errors.append({
                "file": s.path, "label": s.label, "view": s.view, "region": s.region,
                "source": s.source, "fold": int(cv.fold_of[i]) + 1,
                "would_write": decided[i], "outcome": result[i],
                "frontal_lateral_error": bool(fl_wrong),
                "p_frontal": round(float(heads["family"][i, 0]), 4),
                "p_lateral": round(float(heads["family"][i, 1]), 4),
                "p_other": round(float(heads["family"][i, 2]), 4),
                "p_AP_given_frontal": round(float(heads["ap_pa"][i, 0]), 4),
                "p_chest": round(float(heads["region"][i, 0]), 4)})
    return {
        "recipe": cv.recipe.to_json(),
        "heads": "views",
        "protocol": (f"{cv.folds}-fold CV grouped by patient_id, stratified by region and "
                     "label; all images; (region, label) cells weighted"),
        "variants": variants,
        "reference_variant": ref,
        "policy": policy,
        "overall": metrics_for(every),
        "per_region": per_region,
        "per_source": per_source,
        "overall_int8_accuracy": variants[ref]["accuracy_oof"],
        "per_body_part": {k: v["frontal_lateral_accuracy"] for k, v in per_region.items()},
        "int8_fp32_agreement": agreement,
        "int8_fp32_would_write_agreement": agreement,
        "confusion_matrix": {"rows_truth": list(TRUTH_ROWS), "cols_would_write":
                             list(DECIDED_COLS), "counts": confusion},
        "reliability": {"uncalibrated": reliability(cv.oof[ref], samples, None),
                        "calibrated": reliability(cv.oof[ref], samples, calibration)},
        "folds": cv.folds,
        "per_class_n": {f: int((families == i).sum()) for i, f in enumerate(FAMILY_NAMES)},
        "patients": len({s.group for s in samples}),
        **data_origin(samples),
        "per_fold": per_fold_rows(cv),
        "misclassified": errors,
        "skipped": [{"path": s.path, "reason": s.reason} for s in cv.skipped],
        "training_data_sha256": cv.dataset.fingerprint,
        "wall_time_s": round(cv.wall_time_s, 1),
    }


def origin_lines(summary: dict) -> list[str]:
    """Images per data folder and from reviews (reports made before these fields: none)."""
    if "per_folder" not in summary:
        return []
    folders = ", ".join(f"{n} from `{name}`" for name, n in summary["per_folder"].items())
    return [f"Data: {folders}; {summary['reviews_n']} from reviewers' verdicts (source "
            "`reviews`, `dicomnode log export-reviews`).", ""]


def _pct(x) -> str:
    return "–" if x is None else f"{x * 100:.1f}%"


def group_table(title: str, groups: dict[str, dict]) -> list[str]:
    lines = [f"## {title}", "",
             "| group | n | frontal/lateral acc. | AP vs PA acc. (known) | AP vs PA acc. "
             "(written) | coverage | family decided | wrong writes | unverifiable | "
             "obliques written |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, g in groups.items():
        lines.append(
            f"| {name} | {g['n']} | {_pct(g['frontal_lateral_accuracy'])} "
            f"(n {g['frontal_lateral_n']}) | {_pct(g['ap_pa_accuracy'])} (n {g['ap_pa_known_n']})"
            f" | {_pct(g['ap_pa_accuracy_written'])} (n {g['ap_pa_written_n']}) | "
            f"{_pct(g['coverage'])} ({g['written']}) | {_pct(g['family_coverage'])} | "
            f"{g['wrong_writes']} ({_pct(g['wrong_write_rate'])}) | {g['unverifiable_writes']} | "
            f"{g['obliques_written']}/{g['obliques']} |")
    return lines


def would_write_table(cm: dict) -> list[str]:
    """Truth (rows) against what the node would write (columns), counts."""
    lines = ["| truth \\ would write | " + " | ".join(cm["cols_would_write"]) + " |",
             "|---|" + "---|" * len(cm["cols_would_write"])]
    for row in cm["rows_truth"]:
        lines.append(f"| {row} | " + " | ".join(str(cm["counts"][row][c])
                                               for c in cm["cols_would_write"]) + " |")
    return lines


def trade_off_table(policy: dict) -> list[str]:
    rows = policy.get("trade_off", [])
    agreement = bool(rows) and all("int8_fp32_agreement" in row for row in rows)
    lines = ["## Coverage against the wrong-write goal (out of fold; the first row is shipped)", "",
             "| wrong-write goal | thresholds it chooses | coverage (written) | family decided | "
             "correct writes | wrong writes | unverifiable |"
             + (" Int8 = FP32 would_write |" if agreement else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if agreement else "")]
    for row in rows:
        t = row["thresholds"]
        lines.append(f"| ≤ {row['max_wrong_write_rate'] * 100:.1f}% | frontal {t['frontal']}, "
                     f"lateral {t['lateral']}, ap_pa {t['ap_pa']}, chest {t['chest']} | "
                     f"{_pct(row['coverage'])} | {_pct(row['family_coverage'])} | "
                     f"{row['correct_writes']} | {row['wrong_writes']} | "
                     f"{row['unverifiable_writes']} |"
                     + (f" {_pct(row['int8_fp32_agreement'])} |" if agreement else ""))
    return lines


def threshold_rule(policy: dict) -> str:
    """How the thresholds were chosen, in words (report and model card)."""
    rule = (f"most correct writes with wrong writes ≤ {policy['max_wrong_write_rate'] * 100:.1f}% "
            "of checked writes")
    if policy.get("min_int8_fp32_agreement"):
        rule += (f", among the grid points where Int8 and FP32 would write the same on ≥ "
                 f"{policy['min_int8_fp32_agreement'] * 100:.1f}% of films when any such point "
                 "exists")
    return rule


def markdown_views(summary: dict, name: str) -> str:
    v = summary["variants"]
    policy = summary["policy"]
    lines = [f"# CV report: recipe `{name}` (view model: AP, PA, lateral, abstain)", "",
             f"Protocol: {summary['protocol']}; {summary['patients']} patient groups; films per "
             f"family {summary['per_class_n']}; wall time {summary['wall_time_s']:.0f} s "
             "(2 CPU cores, no GPU, every export included).", "",
             *origin_lines(summary),
             f"Calibration (temperatures, fitted on out-of-fold {summary['reference_variant']} "
             f"outputs): {policy['calibration']}. Write thresholds ({threshold_rule(policy)}): "
             f"{policy['thresholds']}.", "",
             "| variant | frontal/lateral acc. (mean ± sd over folds) | out-of-fold | size (KB) | "
             "warm-up (ms) | steady (ms, 1 thread) |", "|---|---|---|---|---|---|"]
    for key, row in v.items():
        lines.append(f"| {key} | {row['accuracy_mean'] * 100:.2f} ± {row['accuracy_sd'] * 100:.2f}%"
                     f" | {_pct(row['accuracy_oof'])} | {row['size_kb']:,.0f} | "
                     f"{row['warmup_ms']:.1f} | {row['steady_ms']:.2f} |")
    lines += ["", f"Int8 and FP32 would write the same ViewPosition (or both abstain) on "
              f"{_pct(summary['int8_fp32_would_write_agreement'])} of films.", ""]
    lines += [*trade_off_table(policy), ""]
    lines += [*group_table("Overall", {"all": summary["overall"]}), ""]
    lines += [*group_table("Per region", summary["per_region"]), ""]
    lines += [*group_table("Per source", summary["per_source"]), ""]
    lines += ["## What the node would write, by truth (out of fold)", "",
              *would_write_table(summary["confusion_matrix"])]
    lines += ["", "Coverage = share of films the node writes into an empty ViewPosition with the "
              "shipped defaults (no body-part defaults). Family decided = share whose frontal or "
              "lateral call is certain (what a configured body-part default completes). "
              "Unverifiable = AP/PA written on a frontal film whose AP/PA the labels do not "
              "state.", "", "## Reliability (calibrated, out of fold)", "",
              "| head | confidence bin | n | mean confidence | accuracy |", "|---|---|---|---|---|"]
    for head, rows in summary["reliability"]["calibrated"].items():
        for r in rows:
            lines.append(f"| {head} | {r['low']:.2f}–{r['high']:.2f} | {r['n']} | "
                         f"{r['confidence']:.3f} | {r['accuracy']:.3f} |")
    lines += ["", f"## Errors ({len(summary['misclassified'])}: wrong writes and frontal/lateral "
              "mistakes, out of fold)", "",
              "| file | truth | region | would write | outcome | p frontal / lateral / other | "
              "p AP given frontal | p chest | fold |", "|---|---|---|---|---|---|---|---|---|"]
    for e in summary["misclassified"]:
        lines.append(f"| {e['file']} | {e['label']} {e['view']} | {e['region']} | "
                     f"{e['would_write'] or '–'} | {e['outcome']} | {e['p_frontal']} / "
                     f"{e['p_lateral']} / {e['p_other']} | {e['p_AP_given_frontal']} | "
                     f"{e['p_chest']} | {e['fold']} |")
    lines += ["", f"Skipped inputs: {len(summary['skipped'])}"]
    lines += [f"- {s['path']}: {s['reason']}" for s in summary["skipped"]]
    return "\n".join(lines) + "\n"


def reliability_figure(summary: dict, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, head in zip(axes, ("family", "ap_pa"), strict=True):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
        for kind, marker in (("uncalibrated", "s"), ("calibrated", "o")):
            rows = summary["reliability"][kind][head]
            ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows],
                    marker=marker, label=kind)
        ax.set_xlabel("mean confidence in bin")
        ax.set_ylabel("accuracy in bin")
        ax.set_title(f"{head} head (out of fold)")
        ax.set_xlim(0.3, 1.0)
        ax.set_ylim(0.3, 1.0)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
