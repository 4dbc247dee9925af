"""A fair comparison of the five optimizers: the same tuning for each, every choice made on validation data.

    python tune_optimizers.py                  # the whole study: writes runs/tuning/ (docs/07-fair-comparison.md)
    python tune_optimizers.py --optimizers sgd adam --lrs 0.01 0.1 --seeds 0 --epochs 2 --train-subset 5000

The protocol, after Choi et al. 2019 ("On Empirical Comparisons of Optimizers for Deep Learning"):
- Split: the last --val-size (10,000) of the 60,000 training images are held out for validation,
  the same for every seed; the models train on the 50,000 before them. The test set is used
  only to report the settings that validation chose.
- Equal budget: every optimizer gets the same grid of learning rates (LRS: log-spaced, a factor
  sqrt(10) = 3.16 apart, from 1e-5 to 0.316), the same seeds and the same epochs; its other
  hyperparameters stay at mlp_mnist.py's defaults.
- Selection: for each optimizer, the learning rate with the highest mean validation accuracy
  at the last epoch. A run whose loss diverged counts as chance (10%) and is marked diverged.
  A selected rate at either end of the grid is reported as not bracketed.
- Inclusion: Adam is also tuned over learning rate x eps (ADAM_EPS), one more entry,
  "adam (lr x eps)": with a large eps Adam becomes momentum SGD, so tuned this way it should
  do at least as well as tuned momentum (Choi et al.'s claim).
- Time to result: for each selected setting, the epochs until the validation accuracy first
  reaches 97% and 98% (the median over seeds, or never).
With --vmap (the default) every (learning rate, eps, seed) of one optimizer trains at once, as one
JAX program (many_models.train_many); --no-vmap trains them one after another (mlp_mnist.train).
--reuse DIR widens an earlier study: its runs whose settings are this study's are taken as they
are, and only the others are trained.
Writes, atomically, into a new or empty --out folder (default runs/tuning, numbered when taken):
  summary.json    the protocol, every grid point, the selected settings, every run's per-epoch records
  summary.md      the selected table and the grid of validation accuracies
  sensitivity.png final validation error against learning rate, one line per optimizer
Exit status: 0 done, 2 bad input, 130 interrupted (the optimizers finished so far are written).
"""
import argparse
import json
import math
import statistics
import sys
import time

import numpy as np
import torch
from matplotlib.ticker import FormatStrFormatter

import many_models
import mlp_mnist
import reporting
from optimized_sgd import OPTIMIZERS

# --- The protocol's defaults ---------------------------------------------------------------
LRS = [round(10 ** (k / 2), 10) for k in range(-10, 0)]  # 1e-5 .. 0.316, a factor sqrt(10) apart: 10 rates
ADAM_EPS = [1e-8, 1e-4, 1e-2]  # Adam's default eps, then two that reach the gradients' scale (~1e-3)
SEEDS = [0, 1, 2]  # three seeds for a mean and a spread
EPOCHS = 10  # the recipe's epochs
VAL_SIZE = 10_000  # the last 10,000 training images: as many as the test set
CHANCE = 0.10  # what a diverged run counts as: ten classes
TARGETS = (0.97, 0.98)  # time to result: epochs until the validation accuracy reaches these
INCLUSION = "adam (lr x eps)"  # the label of Adam tuned over lr x eps


def build_parser():
    p = argparse.ArgumentParser(description="Tune every optimizer's learning rate on the same grid, choose on "
                                            "validation accuracy, report test accuracy once.",
                                epilog="Exit status: 0 done, 2 bad input, 130 interrupted.")
    p.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS), default=list(OPTIMIZERS),
                   help="optimizers to tune (default: all five)")
    p.add_argument("--lrs", type=mlp_mnist.positive_float, nargs="+", default=LRS, metavar="LR",
                   help="the learning-rate grid, the same for every optimizer (default: " +
                        " ".join(f"{lr:g}" for lr in LRS) + ")")
    p.add_argument("--adam-eps", type=mlp_mnist.positive_float, nargs="+", default=ADAM_EPS, metavar="EPS",
                   help="eps values of the entry 'adam (lr x eps)' (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=SEEDS, help="seeds of every grid point (default: 0 1 2)")
    p.add_argument("--epochs", type=mlp_mnist.positive_int, default=EPOCHS, help="epochs per run (default: %(default)s)")
    mlp_mnist.add_val_size_argument(p, default=VAL_SIZE)
    p.add_argument("--train-subset", type=mlp_mnist.positive_int, default=None, metavar="N",
                   help="train on the first N of the images before the validation split (default: all of them)")
    p.add_argument("--vmap", action=argparse.BooleanOptionalAction, default=True,
                   help="train every (lr, eps, seed) of an optimizer at once, as one program (default: on; "
                        "--no-vmap trains them one after another)")
    p.add_argument("--reuse", metavar="DIR",
                   help="an earlier study's folder: its runs whose settings are this study's (same optimizer, "
                        "lr, eps, seed, epochs, split) are taken as they are; only the others are trained")
    mlp_mnist.add_data_dir_argument(p)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="new or empty folder for summary.json, summary.md and sensitivity.png (default: "
                        "runs/tuning, or runs/tuning-2, -3, ... when that one holds files)")
    return p


# --- The runs ----------------------------------------------------------------------------


def entries(optimizers, lrs, adam_eps):
    """label -> the grid points it tunes over, each a dict {lr} or {lr, eps}."""
    grid = {name: [dict(lr=lr) for lr in lrs] for name in optimizers}
    if "adam" in optimizers:
        grid[INCLUSION] = [dict(lr=lr, eps=eps) for eps in adam_eps for lr in lrs]
    return grid


def optimizer_of(label):
    return "adam" if label == INCLUSION else label


def run_config(args, name, point, seed):
    """The full mlp_mnist configuration of one run: mlp_mnist.py's defaults, the grid point, the seed."""
    config = mlp_mnist.resolve_config(mlp_mnist.build_parser().parse_args(["--optimizer", name]))
    config.update(point, seed=seed, epochs=args.epochs, val_size=args.val_size, train_subset=args.train_subset,
                  data_dir=args.data_dir, loader="device", out=None)
    return config


def run_key(config):
    """Runs that share this key are the same run: 'adam' and 'adam (lr x eps)' share eps = 1e-8."""
    return config["optimizer"], config["lr"], config["eps"] if config["optimizer"] in ("rmsprop", "adam") else None, \
        config["seed"]


def train_optimizer(args, name, configs, data):
    """Every config of one optimizer -> the runs mlp_mnist.train returns, in order; all at once under --vmap."""
    train_set, val_set, test_set = data
    log = lambda line: print("   " + line, flush=True)  # noqa: E731
    if args.vmap:
        print(f"== {name}: {len(configs)} models at once", flush=True)
        return many_models.train_many(configs, train_set, test_set, val_set, log=log, train_accuracy=False)
    runs = []
    for i, config in enumerate(configs):
        print(f"== {name} lr {config['lr']} eps {config['eps']} seed {config['seed']} ({i + 1} of {len(configs)})",
              flush=True)
        runs.append(mlp_mnist.train(config, train_set, test_set, val_set, log=log, train_accuracy=False))
        if runs[-1]["status"] == "interrupted":
            break
    return runs


# --- Choosing on validation data -----------------------------------------------------------


def final_accuracy(run, key, epochs):
    """The last epoch's accuracy; a diverged run counts as chance; None for a run that is not finished."""
    if run["status"].startswith("diverged"):
        return CHANCE
    if run["status"] != "completed" or len(run["records"]) < epochs:
        return None
    return run["records"][-1][key]


def epochs_to(records, target):
    """The first epoch whose validation accuracy reaches target, or None."""
    return next((r["epoch"] for r in records if r["val_accuracy"] >= target), None)


def median_epochs(values):
    """Median over seeds of epochs-to-target, None ('never') counted as infinitely many."""
    middle = statistics.median([math.inf if v is None else v for v in values])
    return None if math.isinf(middle) else middle


def mean_std(values):
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def grid_point(point, seeds, runs, epochs):
    """One grid point's runs (one per seed) -> its row of summary.json's grid."""
    val = [final_accuracy(r, "val_accuracy", epochs) for r in runs]
    test = [final_accuracy(r, "test_accuracy", epochs) for r in runs]
    row = dict(point, seeds=list(seeds), val_accuracies=val, test_accuracies=test,
               statuses=[r["status"] for r in runs])
    complete = None not in val
    row["val_accuracy_mean"], row["val_accuracy_std"] = mean_std(val) if complete else (None, None)
    return row


def select(rows, point_runs, args):
    """The grid point with the highest mean validation accuracy -> the selected setting, with its test accuracy."""
    finished = [i for i, row in enumerate(rows) if row["val_accuracy_mean"] is not None]
    if not finished:
        return None
    best = rows[max(finished, key=lambda i: rows[i]["val_accuracy_mean"])]
    runs = point_runs[rows.index(best)]
    test_mean, test_std = mean_std(best["test_accuracies"])
    chosen = dict({k: best[k] for k in ("lr", "eps") if k in best}, val_accuracy_mean=best["val_accuracy_mean"],
                  val_accuracy_std=best["val_accuracy_std"], test_accuracy_mean=test_mean, test_accuracy_std=test_std,
                  diverged_seeds=sum(s.startswith("diverged") for s in best["statuses"]))
    for target in TARGETS:
        chosen[f"epochs_to_{round(100 * target)}"] = median_epochs([epochs_to(r["records"], target) for r in runs])
    chosen["bracketed"] = min(args.lrs) < best["lr"] < max(args.lrs)  # a grid point on both sides
    if "eps" in best:
        chosen["eps_bracketed"] = min(args.adam_eps) < best["eps"] < max(args.adam_eps)
    return chosen


def summarise(args, grid, results):
    """grid (label -> points) and results ({run_key: (config, run)}) -> (grid rows, selected), per label."""
    rows, selected = {}, {}
    for label, points in grid.items():
        found = [[results.get(run_key(run_config(args, optimizer_of(label), p, s))) for s in args.seeds]
                 for p in points]
        if any(r is None for point in found for r in point):
            continue  # this optimizer did not finish (interrupted): left out, not guessed
        point_runs = [[run for _, run in point] for point in found]
        rows[label] = [grid_point(p, args.seeds, runs, args.epochs) for p, runs in zip(points, point_runs)]
        selected[label] = select(rows[label], point_runs, args)
    return rows, selected


# --- Reporting ------------------------------------------------------------------------------


def percent(value, std=None):
    if value is None:
        return "-"
    return f"{100 * value:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def markdown(args, rows, selected):
    """summary.md: the selected settings (the table of docs/07), then every grid point's validation accuracy."""
    never = lambda e: "never" if e is None else f"{e:g}"  # noqa: E731
    lines = ["| optimizer | selected lr | validation accuracy (%) | test accuracy (%) | epochs to 97% (val) | "
             "epochs to 98% (val) |", "| --- | --- | --- | --- | --- | --- |"]
    for label, s in selected.items():
        if s is None:
            continue
        setting = f"{s['lr']:g}" + (f", eps {s['eps']:g}" if label == INCLUSION else "")
        edge = "" if s["bracketed"] else " (at the grid's edge)"
        lines.append(f"| {label} | {setting}{edge} | {percent(s['val_accuracy_mean'], s['val_accuracy_std'])} | "
                     f"{percent(s['test_accuracy_mean'], s['test_accuracy_std'])} | {never(s['epochs_to_97'])} | "
                     f"{never(s['epochs_to_98'])} |")
    lines += ["", f"Mean over seeds {', '.join(map(str, args.seeds))} at epoch {args.epochs}; validation: the last "
              f"{args.val_size:,} training images; test: the test set, for the selected setting only.",
              "", "Mean validation accuracy (%) at every grid point (D: every seed diverged, d: some did; "
              "a diverged run counts as 10%):", ""]
    columns = [(label, row_eps) for label in rows for row_eps in sorted({r.get("eps") for r in rows[label]},
                                                                          key=lambda e: -1 if e is None else e)]
    header = [label if eps is None else f"{label}, eps {eps:g}" for label, eps in columns]
    lines += ["| lr | " + " | ".join(header) + " |", "| --- |" + " --- |" * len(columns)]
    for lr in args.lrs:
        cells = []
        for label, eps in columns:
            row = next(r for r in rows[label] if r["lr"] == lr and r.get("eps") == eps)
            diverged = sum(s.startswith("diverged") for s in row["statuses"])
            mark = "" if not diverged else (" D" if diverged == len(row["statuses"]) else " d")
            best = selected.get(label) and selected[label]["lr"] == lr and selected[label].get("eps") == eps
            cell = percent(row["val_accuracy_mean"]) + mark
            cells.append(f"**{cell}**" if best else cell)
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sensitivity(args, rows, selected, path):
    """Final validation error against lr (log-log): mean over seeds, band min to max, the selected lr starred."""
    fig, ax = reporting.plt.subplots(figsize=(9, 5.2))
    for i, (label, label_rows) in enumerate(rows.items()):
        for eps in sorted({r.get("eps") for r in label_rows}, key=lambda e: -1 if e is None else e):
            if label == INCLUSION and eps == 1e-8:
                continue  # the same runs as plain adam's line
            mine = [r for r in label_rows if r.get("eps") == eps]
            lrs = np.array([r["lr"] for r in mine])
            errors = 100 * (1 - np.array([r["val_accuracies"] for r in mine]))  # (lrs, seeds)
            color = reporting.plt.cm.tab10.colors[i % 10]
            style = dict(linestyle="-" if eps is None else ("--" if eps == 1e-2 else ":"),
                         marker="os^vDP"[i % 6], markersize=4)
            name = label if eps is None else f"adam, eps {eps:g}"
            ax.plot(lrs, errors.mean(axis=1), color=color, label=name, **style)
            ax.fill_between(lrs, errors.min(axis=1), errors.max(axis=1), color=color, alpha=0.15)
            best = selected.get(label)
            if best and best.get("eps") == eps:
                ax.plot([best["lr"]], [100 * (1 - best["val_accuracy_mean"])], marker="*", markersize=16,
                        color=color, markeredgecolor="black", linestyle="none")
    ax.set(xscale="log", yscale="log", xlabel="learning rate", ylim=(1, 100),
           ylabel="validation error (%) = 100 - validation accuracy, final epoch",
           title=f"How forgiving is each optimizer? {len(args.seeds)} seeds: line = mean, band = min to max; "
                 f"★ = selected; 90% = diverged (chance)")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    reporting.save_figure(fig, path)


SAME_RUN = ("optimizer", "lr", "mu", "rho", "beta1", "beta2", "eps", "seed", "epochs", "batch_size", "val_size",
            "train_subset", "loader")  # what two runs must share to be the same run


def earlier_runs(path):
    """An earlier study's summary.json -> ({run_key: (config, run)}, its seconds per optimizer); exit 2 if unreadable."""
    try:
        with open(f"{path}/summary.json") as f:
            earlier = json.load(f)
        runs = {run_key(r["config"]): (r["config"], dict(status=r["status"], records=r["records"]))
                for r in earlier["runs"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        mlp_mnist.fail(f"--reuse {path}: not a study's folder ({err})", mlp_mnist.EXIT_BAD_INPUT)
    return runs, earlier.get("seconds", {})


def write_results(out, args, grid, results, seconds, interrupted):
    """summary.json, summary.md and sensitivity.png into out -> (rows, selected)."""
    rows, selected = summarise(args, grid, results)
    reporting.write_json(f"{out}/summary.json", dict(
        command=" ".join(sys.argv), status="interrupted" if interrupted else "completed",
        val_size=args.val_size, seeds=args.seeds, epochs=args.epochs, lrs=args.lrs, adam_eps=args.adam_eps,
        vmap=args.vmap, train_subset=args.train_subset, seconds=seconds, reused_from=args.reuse,
        reused_runs=args.reused_runs, reused_study_seconds=args.reused_seconds, environment=mlp_mnist.environment(),
        grid=rows, selected=selected,
        runs=[dict(config=config, status=run["status"], records=run["records"]) for config, run in results.values()]))
    reporting.write_text(f"{out}/summary.md", markdown(args, rows, selected))
    if rows:
        plot_sensitivity(args, rows, selected, f"{out}/sensitivity.png")
    return rows, selected


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.lrs = sorted(set(args.lrs))
    args.out = args.out or reporting.default_out_dir("tuning")
    torch.set_num_threads(1)  # as in mlp_mnist.py: the cores are XLA's
    data = mlp_mnist.load_splits_or_exit(parser, args.data_dir, args.train_subset, args.val_size,
                                         mlp_mnist.BATCH_SIZE, args.out)
    if data[1] is None:
        parser.error("argument --val-size: must be at least 1: the learning rates are chosen on validation data")

    grid = entries(args.optimizers, args.lrs, args.adam_eps)
    results, seconds, interrupted = {}, {}, False  # run_key -> (config, run); optimizer -> seconds
    earlier, args.reused_seconds = earlier_runs(args.reuse) if args.reuse else ({}, None)
    args.reused_runs = 0
    try:
        for name in args.optimizers:
            configs = {}
            for label, points in grid.items():
                if optimizer_of(label) == name:
                    for point in points:
                        for seed in args.seeds:
                            config = run_config(args, name, point, seed)
                            configs.setdefault(run_key(config), config)
            for key, config in list(configs.items()):
                old = earlier.get(key)
                if old and all(old[0].get(k) == config[k] for k in SAME_RUN):
                    results[key] = (config, old[1])
                    args.reused_runs += 1
                    del configs[key]
            start = time.perf_counter()
            runs = train_optimizer(args, name, list(configs.values()), data) if configs else []
            seconds[name] = time.perf_counter() - start
            results.update({key: (config, run) for (key, config), run in zip(configs.items(), runs)})
            if any(run["status"] == "interrupted" for run in runs):
                interrupted = True
                break
            mlp_mnist.write_or_fail(args.out, lambda out: write_results(out, args, grid, results, seconds, False),
                                    "the files written before it are complete")
    except KeyboardInterrupt:
        interrupted = True
    rows, selected = mlp_mnist.write_or_fail(
        args.out, lambda out: write_results(out, args, grid, results, seconds, interrupted),
        "the files written before it are complete")
    print(markdown(args, rows, selected))
    print(f"{len(results)} runs in {sum(seconds.values()) / 60:.1f} minutes; wrote {args.out}/summary.json, "
          f"summary.md, sensitivity.png")
    for label, chosen in selected.items():
        if chosen and not chosen["bracketed"]:
            print(f"note: {label}'s selected lr {chosen['lr']:g} is at the edge of the grid: widen --lrs",
                  file=sys.stderr)
    if interrupted:
        print(f"interrupted: {args.out} holds the optimizers that finished", file=sys.stderr)
        sys.exit(mlp_mnist.EXIT_INTERRUPTED)


if __name__ == "__main__":
    mlp_mnist.run_script(main)
