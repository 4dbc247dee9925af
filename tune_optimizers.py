"""A fair comparison of the optimizers: the same tuning for each, every choice made on validation data.

    python tune_optimizers.py --vmap           # the whole study: writes runs/tuning/ (docs/06-fair-comparison.md)
    python tune_optimizers.py --optimizers sgd adam --lrs 0.01 0.1 --seeds 0 --report-seeds 1 2 --epochs 2

The protocol, after Choi et al. 2019 ("On Empirical Comparisons of Optimizers for Deep Learning"):
- Split: the last --val-size (10,000) of the 60,000 training images are held out for validation,
  the same for every seed; the models train on the 50,000 before them.
- Grid: every optimizer gets the same learning rates (LRS: log-spaced, a factor sqrt(10) = 3.16
  apart, from 1e-5 to 0.316), the same seeds (--seeds) and the same epochs; its other
  hyperparameters stay at their defaults. "adam (lr x eps)" also tries ADAM_EPS: 30 settings
  against 10 (the tables say how many settings each tried).
- Selection: for each optimizer, the grid point with the highest mean validation accuracy at the
  last epoch. A diverged run counts as chance (10%). A selected rate at either end of the grid is
  reported as not bracketed. No test image is looked at in this phase: it is not even evaluated.
- Report: each selected setting is trained again on --report-seeds (ten seeds not used to select),
  and only now the test set is evaluated. The selection's own validation accuracy is a maximum over
  the grid, so biased upward; the report seeds' validation and test accuracies are not. Each entry's
  test accuracy is compared with the winner's (the best validation accuracy on the report seeds),
  paired by seed, with a 95% interval.
- Time to result: for each selected setting, the epochs until the validation accuracy first
  reaches 97% and 98% (the median over the report seeds, or never).
With --vmap every (learning rate, eps, seed) of one optimizer trains at once, as one JAX program
(many_models.train_many); without it they train one after another (mlp_mnist.train), through
the loader --loader names. Either way one compiled training program per optimizer serves every
learning rate, eps and seed: they are data to it, not constants in it.
--reuse DIR widens an earlier study: its selection runs whose settings are this study's are taken
as they are, and only the others are trained.
Writes, atomically, into a new or empty --out folder (default runs/tuning, numbered when taken):
  summary.json    the protocol, every grid point, the selected settings, the report, every run's records
  summary.md      the report table and the grid of validation accuracies
  sensitivity.png final validation error against learning rate, one line per optimizer
  checkpoints/    each run's checkpoint (with --vmap, each group's) and study.json: --resume DIR goes on
With --vmap the study can run as several processes, on one machine or many, that share every optimizer's models
(JAX's multi-controller runtime): the same command in each, with --coordinator HOST:PORT --num-processes N
--process-id I, or none of them under srun or mpirun. Only process 0 writes (docs/A4-many-machines.md).
Exit status: 0 done, 2 bad input or a disk error, 5 the study lost one of its processes, 130 interrupted (what
finished is written).
"""
import argparse
import hashlib
import json
import math
import statistics
import sys
import time

import numpy as np
import torch
from matplotlib.ticker import FormatStrFormatter

import checkpoint
import many_models
import mlp_mnist
from plumbing import cli, exits, files, plots, processes, provenance, stats
from optimized_sgd import OPTIMIZERS, hyperparameters

# --- The protocol's defaults ---------------------------------------------------------------
LRS = [round(10 ** (k / 2), 10) for k in range(-10, 0)]  # 1e-5 .. 0.316, a factor sqrt(10) apart: 10 rates
ADAM_EPS = [1e-8, 1e-4, 1e-2]  # Adam's default eps, then two that reach the gradients' scale (~1e-3)
VAL_SIZE = 10_000  # the last 10,000 training images: as many as the test set
REPORT_SEEDS = list(range(3, 13))  # ten seeds, none of them used to select: the report's test numbers
CHANCE = 0.10  # what a diverged run counts as: ten classes
COLLAPSED = 0.11  # a finished run at or below this validation accuracy collapsed to chance without a NaN
TARGETS = (0.97, 0.98)  # time to result: epochs until the validation accuracy reaches these
INCLUSION = "adam (lr x eps)"  # the label of Adam tuned over lr x eps


def build_parser():
    p = argparse.ArgumentParser(description="Tune every optimizer's learning rate on the same grid, choose on "
                                            "validation accuracy, report test accuracy once.",
                                epilog="Exit status: 0 done, 2 bad input, 5 the study lost one of its processes, "
                                       "130 interrupted.")
    p.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS), default=list(OPTIMIZERS),
                   help="optimizers to tune (default: all of them)")
    p.add_argument("--lrs", type=cli.positive_float, nargs="+", default=LRS, metavar="LR",
                   help="the learning-rate grid, the same for every optimizer (default: " +
                        " ".join(f"{lr:g}" for lr in LRS) + ")")
    p.add_argument("--adam-eps", type=cli.positive_float, nargs="+", default=ADAM_EPS, metavar="EPS",
                   help="eps values of the entry 'adam (lr x eps)' (default: %(default)s)")
    p.add_argument("--report-seeds", type=cli.non_negative_int, nargs="+", default=REPORT_SEEDS, metavar="SEED",
                   help="the seeds each selected setting is trained with again, for the report: validation and "
                        "test accuracy (default: 3 4 ... 12)")
    p.add_argument("--reuse", metavar="DIR",
                   help="an earlier study's folder: its runs whose settings are this study's (the same "
                        "optimizer, lr and other hyperparameters, seed, epochs, batch size, split and loader) are "
                        "taken as they are; only the others are trained (default: none)")
    cli.add_flags(p, "--seeds", "--epochs", "--batch-size", "--train-subset", "--val-size", "--loader", "--vmap",
                  "--data-dir", "--out", "--resume", val_size=VAL_SIZE)
    processes.add_flags(p)
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
    """The full mlp_mnist configuration of one run: the optimizer's defaults, the grid point, the seed."""
    return dict(optimizer=name, **hyperparameters(name, **point), seed=seed, epochs=args.epochs,
                batch_size=args.batch_size, val_size=args.val_size, train_subset=args.train_subset, loader=args.loader)


def run_key(config):
    """Runs that share this key are the same run: the same optimizer, seed, lr and other hyperparameters (its
    registry entry's), so 'adam' and 'adam (lr x eps)' share the runs with eps = 1e-8."""
    name = config["optimizer"]
    return (name, config["seed"]) + tuple((key, config.get(key)) for key in hyperparameters(name))


def train_optimizer(args, name, configs, data, phase):
    """Every config of one optimizer -> the runs mlp_mnist.train returns, in order; all at once under --vmap.

    Each run (under --vmap, each phase's group of runs) keeps a checkpoint in --out/checkpoints, which a
    resumed study (--resume) goes on from."""
    train_set, val_set, test_set = data
    log = lambda line: print("   " + line, flush=True)  # noqa: E731
    if args.vmap:
        print(f"== {name}: {len(configs)} models at once", flush=True)
        runs = json.dumps([{k: v for k, v in c.items() if k != "epochs"} for c in configs], sort_keys=True)
        group = hashlib.sha256(runs.encode()).hexdigest()[:8]  # which runs: a selection that changed is a new group
        return many_models.train_many(configs, train_set, test_set, val_set, log=log, train_accuracy=False,
                                      checkpoint_path=f"{args.out}/checkpoints/{phase}-{name}-{group}.npz")
    runs = []
    for i, config in enumerate(configs):
        settings = " ".join(f"{k} {v:g}" for k, v in config.items() if k in ("lr", "eps"))
        print(f"== {name} {settings} seed {config['seed']} ({i + 1} of {len(configs)})", flush=True)
        path = "_".join([f"{args.out}/checkpoints/{name}"] + [f"{k}={config[k]!r}" for k in hyperparameters(name)]
                        + [f"seed={config['seed']}.npz"])
        runs.append(mlp_mnist.train(config, train_set, test_set, val_set, log=log, train_accuracy=False,
                                    checkpoint_path=path))
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


def grid_point(point, seeds, runs, epochs):
    """One grid point's runs (one per seed) -> its row of summary.json's grid (validation only)."""
    val = [final_accuracy(r, "val_accuracy", epochs) for r in runs]
    row = dict(point, seeds=list(seeds), val_accuracies=val, statuses=[r["status"] for r in runs])
    complete = None not in val
    row["val_accuracy_mean"], row["val_accuracy_std"] = stats.mean_std(val) if complete else (None, None)
    row["collapsed"] = sum(not s.startswith("diverged") and v is not None and v <= COLLAPSED
                           for s, v in zip(row["statuses"], val))
    return row


def select(rows, args):
    """The grid point with the highest mean validation accuracy -> the selected setting (validation only)."""
    finished = [row for row in rows if row["val_accuracy_mean"] is not None]
    if not finished:
        return None
    best = max(finished, key=lambda row: row["val_accuracy_mean"])
    chosen = dict({k: best[k] for k in ("lr", "eps") if k in best}, val_accuracy_mean=best["val_accuracy_mean"],
                  val_accuracy_std=best["val_accuracy_std"], settings_tried=len(rows),
                  diverged_seeds=sum(s.startswith("diverged") for s in best["statuses"]))
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
        selected[label] = select(rows[label], args)
    return rows, selected


def selected_point(label, chosen):
    return {k: chosen[k] for k in ("lr", "eps") if k in chosen and (k == "lr" or label == INCLUSION)}


def report(args, selected, report_results):
    """The selected settings, trained on the report seeds -> {label: report row}, and the validation winner.

    Each row: the report seeds' validation and test accuracy (mean, std), epochs to TARGETS (median), and
    the paired difference of its final test accuracy from the winner's (the entry with the best mean
    validation accuracy on the report seeds), over the seeds both finished."""
    rows = {}
    for label, chosen in selected.items():
        if chosen is None:
            continue
        runs = [report_results.get(run_key(run_config(args, optimizer_of(label), selected_point(label, chosen), s)))
                for s in args.report_seeds]
        if any(r is None for r in runs):
            continue  # not trained (interrupted): left out
        runs = [run for _, run in runs]
        row = dict(seeds=list(args.report_seeds), statuses=[r["status"] for r in runs])
        for key in ("val_accuracy", "test_accuracy"):
            values = [final_accuracy(r, key, args.epochs) for r in runs]
            row[f"{key}_mean"], row[f"{key}_std"] = stats.mean_std(values)
        row["final_test"] = {seed: final_accuracy(r, "test_accuracy", args.epochs)
                             for seed, r in zip(args.report_seeds, runs)}
        for target in TARGETS:
            row[f"epochs_to_{round(100 * target)}"] = median_epochs(
                [epochs_to(r["records"], target) for r in runs])
        rows[label] = row
    # The winner: the best validation accuracy on the report seeds, which, unlike the selection's (a maximum
    # over the grid, larger for an entry that tried more settings), is not biased upward.
    winner = max(rows, key=lambda label: rows[label]["val_accuracy_mean"]) if rows else None
    for label, row in rows.items():
        row["against_winner"] = stats.paired_difference(row["final_test"], rows[winner]["final_test"])
    return rows, winner


# --- Reporting ------------------------------------------------------------------------------


def percent(value, std=None):
    if value is None:
        return "-"
    return f"{100 * value:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def seconds_per_model_epoch(args, seconds):
    """'select sgd 1.31 s (30 models), ...': the wall-clock seconds per model and epoch of each phase and optimizer."""
    parts = []
    for key, value in seconds.items():
        models = seconds.get(f"{key} models")
        if not key.endswith(" models") and models:
            parts.append(f"{key} {value / (models * args.epochs):.2f} s ({models} models)")
    return ", ".join(parts)


def markdown(args, rows, selected, reported, winner, seconds=None):
    """summary.md: the report (the table of docs/06), then every grid point's validation accuracy."""
    never = lambda e: "never" if e is None else f"{e:g}"  # noqa: E731
    lines = ["| optimizer | settings tried | selected | validation, selection (max of the grid) | "
             "validation, report seeds | test, report seeds | test against the winner, paired by seed (points) | "
             "epochs to 97% (val) | epochs to 98% (val) |",
             "| --- | ---: | --- | --- | --- | --- | --- | --- | --- |"]
    for label, s in selected.items():
        if s is None:
            continue
        setting = f"lr {s['lr']:g}" + ("" if s["bracketed"] else " (at the grid's edge)")
        if label == INCLUSION:
            setting += f", eps {s['eps']:g}" + ("" if s["eps_bracketed"] else " (at the grid's edge)")
        r = reported.get(label)
        if r is None:
            lines.append(f"| {label} | {s['settings_tried']} | {setting} | "
                         f"{percent(s['val_accuracy_mean'], s['val_accuracy_std'])} | - | - | - | - | - |")
            continue
        against = "the winner" if label == winner else stats.verdict(r["against_winner"])
        lines.append(f"| {label} | {s['settings_tried']} | {setting} | "
                     f"{percent(s['val_accuracy_mean'], s['val_accuracy_std'])} | "
                     f"{percent(r['val_accuracy_mean'], r['val_accuracy_std'])} | "
                     f"{percent(r['test_accuracy_mean'], r['test_accuracy_std'])} | {against} | "
                     f"{never(r['epochs_to_97'])} | {never(r['epochs_to_98'])} |")
    lines += ["", f"Selection: mean ± std over seeds {', '.join(map(str, args.seeds))} at epoch {args.epochs}, "
              f"validation only (the last {args.val_size:,} training images; the test set is not evaluated). Report: "
              f"each selected setting trained again on seeds {', '.join(map(str, args.report_seeds))}; only these "
              f"runs evaluate the test set. The winner: the best mean validation accuracy on the report seeds. Paired "
              f"differences: mean [95% t interval] of (entry - winner) over the report seeds.", "",
              f"Wall-clock seconds per model and epoch (--vmap {'on' if args.vmap else 'off'}; reused runs not "
              f"counted): {seconds_per_model_epoch(args, seconds or {})}.", "",
              "Mean validation accuracy (%) at every grid point (D: every seed diverged, d: some did, a diverged run "
              "counting as 10%; c: a seed ended at chance, 11% or less, without diverging):", ""]
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
            mark += " c" if row["collapsed"] else ""
            best = selected.get(label) and selected[label]["lr"] == lr and selected[label].get("eps") == eps
            cell = percent(row["val_accuracy_mean"]) + mark
            cells.append(f"**{cell}**" if best else cell)
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sensitivity(args, rows, selected, path):
    """Final validation error against lr (log-log): mean over seeds, band min to max, the selected lr starred."""
    fig, ax = plots.plt.subplots(figsize=(9, 4.8))
    lines = [(label, eps) for label, label_rows in rows.items()
             for eps in sorted({r.get("eps") for r in label_rows}, key=lambda e: -1 if e is None else e)
             if not (label == INCLUSION and eps == 1e-8)]  # those runs are plain adam's line
    for i, (label, eps) in enumerate(lines):  # one colour, marker and line style per line
        mine = [r for r in rows[label] if r.get("eps") == eps]
        lrs = np.array([r["lr"] for r in mine])
        errors = 100 * (1 - np.array([r["val_accuracies"] for r in mine]))  # (lrs, seeds)
        color = plots.plt.cm.tab10.colors[i % 10]
        style = dict(linestyle=("-", "--", "-.", ":")[i % 4], marker="os^vDPX*"[i % 8], markersize=4)
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
    plots.save_figure(fig, path)


SAME_TRAINING = ("epochs", "batch_size", "val_size", "train_subset", "loader")  # with run_key: the same run


def earlier_runs(path):
    """An earlier study's summary.json -> ({run_key: (config, run)}, its seconds per optimizer); exit 2 if it
    cannot be read."""
    try:
        with open(f"{path}/summary.json") as f:
            earlier = json.load(f)
        runs = {run_key(r["config"]): (r["config"], dict(status=r["status"], records=r["records"]))
                for r in earlier["runs"] if r["config"]["optimizer"] in OPTIMIZERS}  # another's: nothing to reuse
    except (OSError, ValueError, KeyError, TypeError) as err:
        exits.fail(f"--reuse {path}: not a study's folder ({err})")
    return runs, earlier.get("seconds", {})


def write_results(out, args, grid, results, report_results, seconds, interrupted):
    """summary.json, summary.md and sensitivity.png into out -> (rows, selected, reported, winner)."""
    rows, selected = summarise(args, grid, results)
    reported, winner = report(args, selected, report_results)
    files.write_json(f"{out}/summary.json", dict(
        status="interrupted" if interrupted else "completed",
        val_size=args.val_size, seeds=args.seeds, report_seeds=args.report_seeds, epochs=args.epochs, lrs=args.lrs,
        adam_eps=args.adam_eps, vmap=args.vmap, loader=args.loader, train_subset=args.train_subset, seconds=seconds,
        reused_from=args.reuse, reused_runs=args.reused_runs, reused_study_seconds=args.reused_seconds, grid=rows,
        selected=selected, report=reported, winner=winner,
        runs=[dict(config=config, status=run["status"], records=run["records"]) for config, run in results.values()],
        report_runs=[dict(config=config, status=run["status"], records=run["records"])
                     for config, run in report_results.values()]))
    files.write_markdown(f"{out}/summary.md", markdown(args, rows, selected, reported, winner, seconds))
    if rows:
        plot_sensitivity(args, rows, selected, f"{out}/sensitivity.png")
    return rows, selected, reported, winner


def optimizer_configs(args, grid, name, seeds_of_label):
    """{run_key: config} of every run optimizer `name` needs: its labels' points x seeds_of_label(label, point)."""
    configs = {}
    for label, points in grid.items():
        if optimizer_of(label) == name:
            for point in points:
                for seed in seeds_of_label(label, point):
                    config = run_config(args, name, point, seed)
                    configs.setdefault(run_key(config), config)
    return configs


def train_phase(args, configs, data, done, seconds, name, phase):
    """Train `configs` ({run_key: config}) -> True when interrupted; finished runs go into `done`."""
    start = time.perf_counter()
    runs = train_optimizer(args, name, list(configs.values()), data, phase) if configs else []
    seconds[f"{phase} {name}"] = time.perf_counter() - start
    seconds[f"{phase} {name} models"] = len(configs)
    if any(run["status"] == "interrupted" for run in runs):
        return True  # this optimizer's runs are unfinished: left out, not guessed
    done.update({key: (config, run) for (key, config), run in zip(configs.items(), runs)})
    return False


def main(argv=None):
    argv = provenance.record_command(__file__, argv)
    parser = build_parser()
    args = cli.study_args(parser, argv, parser.parse_args(argv), "tuning")
    args.lrs = sorted(set(args.lrs))
    if set(args.seeds) & set(args.report_seeds):
        parser.error(f"argument --report-seeds: {sorted(set(args.seeds) & set(args.report_seeds))} also select the "
                     f"settings (--seeds): the report needs seeds of its own")
    if args.vmap:
        args.loader = "device"  # the models share one program: mlp_mnist's device epoch under jax.vmap
    torch.set_num_threads(1)  # as in mlp_mnist.py: the cores are XLA's
    if args.val_size < 1:
        parser.error("argument --val-size: must be at least 1: the learning rates are chosen on validation data")
    processes.start(parser, args, argv, __file__)
    train_set, val_set, test_set = exits.load_data_or_exit(parser, args, args.batch_size)
    exits.write_or_fail(args.out, lambda out: cli.save_study_args(args), "nothing was saved")
    processes.ready()

    grid = entries(args.optimizers, args.lrs, args.adam_eps)
    results, report_results, seconds, interrupted, lost = {}, {}, {}, False, None  # run_key -> (config, run)
    earlier, args.reused_seconds = earlier_runs(args.reuse) if args.reuse else ({}, None)
    args.reused_runs = 0
    save = lambda done: exits.write_or_fail(  # noqa: E731
        args.out, lambda out: write_results(out, args, grid, results, report_results, seconds, done),
        "the files written before it are complete")
    try:
        for name in args.optimizers:  # the selection: validation only, no test images
            configs = optimizer_configs(args, grid, name, lambda label, point: args.seeds)
            for key, config in list(configs.items()):
                old = earlier.get(key)
                if old and all(old[0].get(k) == config.get(k) for k in SAME_TRAINING):
                    results[key] = (config, old[1])
                    args.reused_runs += 1
                    del configs[key]
            interrupted = train_phase(args, configs, (train_set, val_set, None), results, seconds, name, "select")
            if interrupted:
                break
            save(False)
        _, selected = summarise(args, grid, results)
        for name in [] if interrupted else args.optimizers:  # the report: the selected settings, with the test set
            chosen = {label: selected_point(label, s) for label, s in selected.items()
                      if s is not None and optimizer_of(label) == name}
            configs = optimizer_configs(args, {label: [point] for label, point in chosen.items()}, name,
                                        lambda label, point: args.report_seeds)
            interrupted = train_phase(args, configs, (train_set, val_set, test_set), report_results, seconds, name,
                                      "report")
            if interrupted:
                break
    except KeyboardInterrupt:
        interrupted = True
    except processes.PeerLost as err:
        interrupted, lost = True, err
    except checkpoint.CheckpointError as err:
        exits.fail(f"--resume {args.out}: {err}")
    rows, selected, reported, winner = save(interrupted)
    print(markdown(args, rows, selected, reported, winner, seconds))
    print(f"{len(results)} selection runs and {len(report_results)} report runs in "
          f"{sum(v for k, v in seconds.items() if not k.endswith(' models')) / 60:.1f} minutes; wrote "
          f"{args.out}/summary.json, summary.md" + (", sensitivity.png" if rows else ""))
    for label, chosen in selected.items():
        if chosen and not chosen["bracketed"]:
            print(f"note: {label}'s selected lr {chosen['lr']:g} is at the edge of the grid: widen --lrs",
                  file=sys.stderr)
    if lost:
        exits.fail(f"{lost}: process 0's {args.out} holds the optimizers that finished; the same command with "
                   f"--resume {args.out} goes on", exits.EXIT_PROCESS_LOST)
    if interrupted:
        print(f"interrupted: {args.out} holds the optimizers that finished; python tune_optimizers.py --resume "
              f"{args.out} goes on", file=sys.stderr)
        sys.exit(exits.EXIT_INTERRUPTED)


if __name__ == "__main__":
    exits.run_script(main)
