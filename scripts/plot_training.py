"""Quality against training minutes, across the consecutive runs of one model (each run --init-from the last).

    python scripts/plot_training.py runs/vq2/log.jsonl [runs/vq3/log.jsonl ...] --out curve.png \\
        [--before MINUTES:PSNR ...] [--label "held-out PSNR (dB)"] [--rename "s26/kl: vgg02=run 8" ...] \\
        [--start-at runs/s28/kl.jsonl=393]

Each ``log.jsonl`` is a run's training log (or a ``scripts/bench_recipe.py`` points file: one curve per
recipe, at its own minutes and ``--recipe-key``, continuing from the runs before it) (``python -m train`` writes one line per logged step). Minutes
are wall-clock training minutes rebuilt from the logged throughput (``images_per_s`` over each logging
window); every run continues the previous one's minutes. ``--before`` adds points of runs whose logs are
gone (e.g. taken from an earlier model card), drawn as such; ``--start-at LOG=MINUTES`` starts one file's curves at
MINUTES instead (a run that continued an earlier export than the file before it); ``--rename`` gives a curve a legend of its own (the default is
the run folder, or the recipe, prefixed with the points file's name when several are given). Prints the points
as JSON.

Run folders do not outlive a session, so a model's curve is kept as a history file in the repository:
``--history FILE`` draws the curves it holds (their own names, minutes counted from the model's first run)
before the logs given, which continue after its last minute unless ``--start-at`` says otherwise;
``--save-history FILE`` writes every curve drawn (history and new, legends as renamed, minutes as drawn,
every numeric field of a points file's rows, so one file serves the PSNR and the ST-LPIPS plots) back as such a
file. The next session passes the same file with its own points file and its renames.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def curve(log: Path, start_minutes: float, key: str, batch: int) -> tuple[list[tuple[float, float, int]], float]:
    """[(minutes, value, step)] of the rows that carry ``key``, and the run's last minute."""
    minutes, previous_step, points = start_minutes, 0, []
    for line in log.read_text().splitlines():
        row = json.loads(line)
        step = int(row["step"])
        if row.get("images_per_s"):
            minutes += (step - previous_step) * batch / row["images_per_s"] / 60
        previous_step = step
        if key in row:
            points.append((minutes, float(row[key]), step))
    return points, minutes


def recipe_curves(path: Path, start_minutes: float, key: str) -> dict[str, list[tuple[float, float, int]]]:
    """{recipe: [(minutes, value, step)]} from a bench_recipe.py points file, minutes after ``start_minutes``."""
    curves: dict[str, list[tuple[float, float, int]]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if key in row:
            curves.setdefault(row["recipe"], []).append((start_minutes + float(row["minutes"]), float(row[key]),
                                                         int(row["step"])))
    return curves


def read_points(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_recipe_file(path: Path) -> bool:
    first = path.read_text().splitlines()[:1]
    return bool(first) and "recipe" in json.loads(first[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("logs", nargs="*", type=Path, help="log.jsonl of each run, oldest first")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--key", default="val_psnr", help="logged value to plot (default val_psnr)")
    p.add_argument("--before", nargs="*", default=[], metavar="MINUTES:VALUE", help="points of earlier runs")
    p.add_argument("--label", default="held-out PSNR (dB)")
    p.add_argument("--recipe-key", default="psnr", help="value to plot from bench_recipe.py points files")
    p.add_argument("--batch-size", type=int, default=16, help="images per step (all ranks), to rebuild minutes")
    p.add_argument("--title", default="Quality against CPU training minutes")
    p.add_argument("--rename", nargs="*", default=[], metavar="LABEL=TEXT",
                   help="legend text for the curve whose default label is LABEL")
    p.add_argument("--start-at", nargs="*", default=[], metavar="LOG=MINUTES",
                   help="start LOG's curves at MINUTES, not where the file before it ended")
    p.add_argument("--history", type=Path, help="points file of the model's earlier curves, at absolute minutes")
    p.add_argument("--save-history", type=Path, help="write every curve drawn here, as a --history file")
    args = p.parse_args(argv)
    if not args.logs and args.history is None:
        p.error("nothing to draw: give run logs or points files, or --history")
    if any("=" not in item for item in args.rename):
        p.error(f"--rename takes LABEL=TEXT, got {args.rename}")
    start_at: dict[Path, float] = {}
    for item in args.start_at:
        log, _, minutes = item.rpartition("=")
        try:
            start_at[Path(log)] = float(minutes)
        except ValueError:
            p.error(f"--start-at takes LOG=MINUTES, got {item!r}")
    unknown_logs = sorted(str(log) for log in set(start_at) - set(args.logs))
    if unknown_logs:
        p.error(f"--start-at: {unknown_logs} not among the logs given ({[str(log) for log in args.logs]})")
    renames = dict(item.split("=", 1) for item in args.rename)
    labels: list[str] = []

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # 20 curves before a colour repeats: a model's history
    report = {}
    before = [tuple(float(v) for v in item.split(":")) for item in args.before]
    start = max((m for m, _ in before), default=0.0)
    if before:
        ax.plot([m for m, _ in before], [v for _, v in before], "o--", color="gray", label="earlier runs (card)")
        report["before"] = before
    saved: list[dict] = []  # the --save-history rows: each curve drawn, at the minutes drawn
    if args.history is not None:
        rows = read_points(args.history)
        saved += [{**row, "recipe": renames.get(row["recipe"], row["recipe"])} for row in rows]  # as drawn
        for name, points in recipe_curves(args.history, 0.0, args.recipe_key).items():
            labels.append(name)
            ax.plot([m for m, _, _ in points], [v for _, v, _ in points], "o-", label=renames.get(name, name))
            report[f"{args.history}:{name}"] = [{"minutes": round(m, 1), args.recipe_key: v, "step": s}
                                                for m, v, s in points]
        start = max([start] + [float(row["minutes"]) for row in rows])
    recipe_files = [log for log in args.logs if is_recipe_file(log)]
    several = len(recipe_files) > 1  # then a recipe's label names its file too (run4: pix)
    stems = [log.stem for log in recipe_files]
    # Files of the same name (s26/vq.jsonl, s27/vq.jsonl) are told apart by their folder: s27/vq: p05gan.
    prefix = {log: f"{log.parent.name}/{log.stem}" if stems.count(log.stem) > 1 else log.stem for log in recipe_files}
    for log in args.logs:
        start = start_at.get(log, start)
        if log in prefix:  # a bench_recipe.py points file (read once, above)
            curves = recipe_curves(log, start, args.recipe_key)
            for name, points in curves.items():
                label = f"{prefix[log]}: {name}" if several else name
                labels.append(label)
                ax.plot([m for m, _, _ in points], [v for _, v, _ in points], "o-", label=renames.get(label, label))
                report[f"{log}:{name}"] = [{"minutes": round(m, 1), args.recipe_key: v, "step": s}
                                           for m, v, s in points]
            for row in read_points(log):
                label = f"{prefix[log]}: {row['recipe']}" if several else row["recipe"]
                saved.append({**row, "recipe": renames.get(label, label), "minutes": start + float(row["minutes"])})
            start = max((m for points in curves.values() for m, _, _ in points), default=start)
            continue
        points, start = curve(log, start, args.key, args.batch_size)
        if points:
            label = log.parent.name
            labels.append(label)
            ax.plot([m for m, _, _ in points], [v for _, v, _ in points], "o-", label=renames.get(label, label))
            saved += [{"recipe": renames.get(label, label), "minutes": m, "step": s, args.recipe_key: v}
                      for m, v, s in points]
        report[str(log)] = [{"minutes": round(m, 1), args.key: v, "step": s} for m, v, s in points]
    unknown = sorted(set(renames) - set(labels))
    if unknown:
        p.error(f"--rename: no curve labelled {unknown}; the curves are {labels}")
    report["legend"] = [renames.get(label, label) for label in labels]
    ax.set_xlabel("training minutes (cumulative, one CPU thread)")
    ax.set_ylabel(args.label)
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    if len(labels) > 8:  # a model's whole history: the legend beside the axes, not over the curves
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, bbox_inches="tight")
    if args.save_history is not None:
        tmp = args.save_history.with_name(args.save_history.name + ".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in saved))
        tmp.replace(args.save_history)  # atomic: the history is never left half-written
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
