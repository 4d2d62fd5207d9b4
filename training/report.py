"""CV report: JSON (machine), Markdown + CSV (people), PNG (the paper's Figure 1 in spirit)."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np

from training.cv import CVResult
from training.data import LABELS, data_origin

PAPER_TABLE = {  # ../shared/paper.md, headline results (5-fold mean)
    "keras": {"size_kb": 11273, "accuracy": 99.5},
    "fp32": {"size_kb": None, "accuracy": 99.5},
    "fp16": {"size_kb": 4677, "accuracy": 99.5},
    "dynamic": {"size_kb": 2603, "accuracy": 99.25},
    "int8": {"size_kb": None, "accuracy": 99.0},
}


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _accuracy_by(groups: list[str], correct: np.ndarray) -> dict[str, dict]:
    out = {}
    for name in sorted(set(groups)):
        mask = np.array([g == name for g in groups])
        out[name] = {"accuracy": round(float(correct[mask].mean()), 4), "n": int(mask.sum()),
                     "errors": int((~correct[mask]).sum())}
    return out


def per_fold_rows(cv: CVResult) -> list[dict]:
    return [
        {"fold": r.fold + 1, "n_train": r.n_train, "n_test": r.n_test,
         "accuracy": {k: round(v, 4) for k, v in r.accuracy.items()},
         "steady_ms": {k: round(v, 2) for k, v in r.steady_ms.items()},
         "warmup_ms": {k: round(v, 2) for k, v in r.warmup_ms.items()},
         "size_kb": {k: round(v, 1) for k, v in r.size_kb.items()},
         "wall_s": round(r.wall_s, 1)}
        for r in cv.fold_results
    ]


def summarise(cv: CVResult) -> dict:
    y = cv.dataset.labels
    names = list(cv.oof)
    variants = {}
    for name in names:
        accs = [r.accuracy[name] for r in cv.fold_results]
        variants[name] = {
            "accuracy_mean": round(statistics.fmean(accs), 4),
            "accuracy_sd": round(_sd(accs), 4),
            "accuracy_oof": round(float((cv.oof[name].argmax(1) == y).mean()), 4),
            "size_kb": round(statistics.fmean(r.size_kb[name] for r in cv.fold_results), 1),
            "warmup_ms": round(statistics.fmean(r.warmup_ms[name] for r in cv.fold_results), 2),
            "steady_ms": round(statistics.fmean(r.steady_ms[name] for r in cv.fold_results), 2),
        }
    ref = "int8" if "int8" in cv.oof else names[-1]
    predicted = cv.oof[ref].argmax(1)
    correct = predicted == y
    samples = cv.dataset.samples
    confusion = np.zeros((2, 2), dtype=int)
    for truth, guess in zip(y, predicted, strict=True):
        confusion[truth, guess] += 1
    agreement = None
    if "int8" in cv.oof and "fp32" in cv.oof:
        agreement = round(float((cv.oof["int8"].argmax(1) == cv.oof["fp32"].argmax(1)).mean()), 4)
    misclassified = [
        {"file": s.path, "label": s.label, "predicted": LABELS[int(predicted[i])],
         "p_AP": round(float(cv.oof[ref][i, 0]), 4), "source": s.source,
         "body_part": s.body_part, "fold": int(cv.fold_of[i]) + 1}
        for i, s in enumerate(samples) if not correct[i]
    ]
    return {
        "recipe": cv.recipe.to_json(),
        "protocol": (f"{cv.folds}-fold stratified CV, "
                     + (f"balanced {cv.balanced} per class" if cv.balanced
                        else "all images, class-weighted")),
        "variants": variants,
        "reference_variant": ref,
        "overall_int8_accuracy": round(float(correct.mean()), 4),
        "per_body_part": {k: v["accuracy"] for k, v in
                          _accuracy_by([s.body_part for s in samples], correct).items()},
        "per_body_part_detail": _accuracy_by([s.body_part for s in samples], correct),
        "per_source": _accuracy_by([s.source for s in samples], correct),
        "per_class": _accuracy_by([s.label for s in samples], correct),
        "int8_fp32_agreement": agreement,
        "confusion_matrix": {"labels": list(LABELS), "rows_true_cols_predicted":
                             confusion.tolist()},
        "folds": cv.folds,
        "per_class_n": {label: int((y == i).sum()) for i, label in enumerate(LABELS)},
        **data_origin(samples),
        "per_fold": per_fold_rows(cv),
        "misclassified": misclassified,
        "skipped": [{"path": s.path, "reason": s.reason} for s in cv.skipped],
        "wall_time_s": round(cv.wall_time_s, 1),
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.1f}%"


def markdown(summary: dict, name: str) -> str:
    from training.report_views import origin_lines

    v = summary["variants"]
    lines = [f"# CV report: recipe `{name}`", "",
             f"Protocol: {summary['protocol']}; images per class {summary['per_class_n']}; "
             f"wall time {summary['wall_time_s']:.0f} s (2 CPU cores, no GPU).", "",
             *origin_lines(summary),
             "| variant | accuracy (mean ± sd over folds) | out-of-fold | size (KB) | "
             "warm-up (ms) | steady (ms, 1 thread) |",
             "|---|---|---|---|---|---|"]
    for key, row in v.items():
        lines.append(f"| {key} | {row['accuracy_mean'] * 100:.2f} ± {row['accuracy_sd'] * 100:.2f}%"
                     f" | {_pct(row['accuracy_oof'])} | {row['size_kb']:,.0f} | "
                     f"{row['warmup_ms']:.1f} | {row['steady_ms']:.2f} |")
    agreement = _pct(summary["int8_fp32_agreement"])
    lines += ["", f"Int8 vs FP32 same label: {agreement} of test images.",
              "", "## Per fold (accuracy)", "",
              "| fold | n test | " + " | ".join(v) + " |", "|---|---|" + "---|" * len(v)]
    for row in summary["per_fold"]:
        lines.append(f"| {row['fold']} | {row['n_test']} | "
                     + " | ".join(_pct(row["accuracy"][k]) for k in v) + " |")
    ref = summary["reference_variant"]
    for title, key in (("body part", "per_body_part_detail"), ("source", "per_source"),
                       ("class", "per_class")):
        lines += ["", f"## Out-of-fold accuracy per {title} ({ref})", "",
                  f"| {title} | n | errors | accuracy |", "|---|---|---|---|"]
        for group, row in summary[key].items():
            lines.append(f"| {group} | {row['n']} | {row['errors']} | {_pct(row['accuracy'])} |")
    cm = summary["confusion_matrix"]["rows_true_cols_predicted"]
    lines += ["", f"## Confusion matrix ({ref}, out of fold)", "",
              "| true \\ predicted | AP | LA |",
              "|---|---|---|", f"| AP | {cm[0][0]} | {cm[0][1]} |",
              f"| LA | {cm[1][0]} | {cm[1][1]} |", "",
              f"## Misclassified ({len(summary['misclassified'])}, {ref}, out of fold)", "",
              "| file | label | predicted | p(AP) | body part | fold |",
              "|---|---|---|---|---|---|"]
    for row in summary["misclassified"]:
        lines.append(f"| {row['file']} | {row['label']} | {row['predicted']} | {row['p_AP']} | "
                     f"{row['body_part']} | {row['fold']} |")
    lines += ["", f"Skipped inputs: {len(summary['skipped'])}"]
    lines += [f"- {s['path']}: {s['reason']}" for s in summary["skipped"]]
    return "\n".join(lines) + "\n"


def figure(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = summary["variants"]
    names = list(v)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in names:
        left.errorbar(v[name]["size_kb"], v[name]["accuracy_mean"] * 100,
                      yerr=v[name]["accuracy_sd"] * 100, fmt="o", capsize=3)
        left.annotate(name, (v[name]["size_kb"], v[name]["accuracy_mean"] * 100),
                      textcoords="offset points", xytext=(5, 5))
    left.set_xlabel("size (KB)")
    left.set_ylabel("accuracy (%), mean ± sd over folds")
    left.set_title("accuracy vs size")
    x = np.arange(len(names))
    right.bar(x - 0.2, [v[n]["warmup_ms"] for n in names], 0.4, label="warm-up")
    right.bar(x + 0.2, [v[n]["steady_ms"] for n in names], 0.4, label="steady (median)")
    right.set_xticks(x, names)
    right.set_yscale("log")
    right.set_ylabel("ms per image, 1 thread")
    right.set_title("latency")
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_views_report(cv: CVResult, report_dir: Path, name: str) -> dict:
    from training.report_views import markdown_views, reliability_figure, summarise_views

    summary = summarise_views(cv)
    (report_dir / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (report_dir / f"{name}.md").write_text(markdown_views(summary, name))
    with open(report_dir / f"{name}-folds.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fold", "variant", "frontal_lateral_accuracy", "size_kb", "warmup_ms",
                         "steady_ms"])
        for row in summary["per_fold"]:
            for variant in summary["variants"]:
                writer.writerow([row["fold"], variant, row["accuracy"][variant],
                                 row["size_kb"][variant], row["warmup_ms"][variant],
                                 row["steady_ms"][variant]])
    with open(report_dir / f"{name}-misclassified.csv", "w", newline="") as handle:
        rows = summary["misclassified"]
        fields = list(rows[0]) if rows else ["file"]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    reliability_figure(summary, report_dir / f"{name}.png",
                       f"recipe {name}: reliability of the view model")
    write_comparison(report_dir)
    return summary


def write_report(cv: CVResult, report_dir: Path, name: str | None = None) -> dict:
    name = name or cv.recipe.name
    report_dir.mkdir(parents=True, exist_ok=True)
    if cv.recipe.heads == "views":
        return write_views_report(cv, report_dir, name)
    summary = summarise(cv)
    (report_dir / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (report_dir / f"{name}.md").write_text(markdown(summary, name))
    with open(report_dir / f"{name}-folds.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fold", "variant", "accuracy", "size_kb", "warmup_ms", "steady_ms"])
        for row in summary["per_fold"]:
            for variant in summary["variants"]:
                writer.writerow([row["fold"], variant, row["accuracy"][variant],
                                 row["size_kb"][variant], row["warmup_ms"][variant],
                                 row["steady_ms"][variant]])
        for variant, row in summary["variants"].items():
            writer.writerow(["mean", variant, row["accuracy_mean"], row["size_kb"],
                             row["warmup_ms"], row["steady_ms"]])
            writer.writerow(["sd", variant, row["accuracy_sd"], "", "", ""])
    with open(report_dir / f"{name}-misclassified.csv", "w", newline="") as handle:
        fields = ["file", "label", "predicted", "p_AP", "source", "body_part", "fold"]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(summary["misclassified"])
    figure(summary, report_dir / f"{name}.png", f"recipe {name}: {summary['protocol']}")
    write_comparison(report_dir)
    return summary


def recipe_cells(report: dict, variant: str) -> str:
    """One variant of one CV report as three table cells: accuracy mean ± sd | KB | steady ms."""
    row = report["variants"].get(variant)
    if row is None:
        return "– | – | –"
    return (f"{row['accuracy_mean'] * 100:.2f} ± {row['accuracy_sd'] * 100:.2f}% | "
            f"{row['size_kb']:,.0f} | {row['steady_ms']:.2f}")


def write_comparison(report_dir: Path) -> None:
    """Side-by-side table of every recipe report present, next to the paper's numbers."""
    reports = {p.stem: json.loads(p.read_text()) for p in sorted(report_dir.glob("*.json"))}
    if not reports:
        return
    heads = " | ".join(f"recipe {n}: accuracy | KB | steady ms" for n in reports)
    lines = ["# Recipes side by side (Int8 etc. evaluated with ai-edge-litert, 1 thread)", "",
             f"| variant | publication accuracy | publication KB | {heads} |",
             "|---|---|---|" + "---|---|---|" * len(reports)]
    for variant, paper in PAPER_TABLE.items():
        cells = [recipe_cells(rep, variant) for rep in reports.values()]
        size = "–" if paper["size_kb"] is None else f"{paper['size_kb']:,}"
        lines.append(f"| {variant} | {paper['accuracy']}% | {size} | " + " | ".join(cells) + " |")
    parts = sorted({p for rep in reports.values() for p in rep["per_body_part"]})
    lines += ["", "Out-of-fold Int8 accuracy per body part:", "",
              "| body part | " + " | ".join(reports) + " |", "|---|" + "---|" * len(reports)]
    for part in parts:
        lines.append(f"| {part} | " + " | ".join(
            _pct(rep["per_body_part"].get(part)) for rep in reports.values()) + " |")
    lines += ["", "| | " + " | ".join(reports) + " |", "|---|" + "---|" * len(reports),
              "| protocol | " + " | ".join(r["protocol"] for r in reports.values()) + " |",
              "| Int8 = FP32 label | " + " | ".join(
                  _pct(r["int8_fp32_agreement"]) for r in reports.values()) + " |",
              "| wall time (s) | " + " | ".join(
                  f"{r['wall_time_s']:.0f}" for r in reports.values()) + " |"]
    (report_dir / "README.md").write_text("\n".join(lines) + "\n")
