"""Compare the optimizers over several seeds: the table and curves of docs/04 in one command.

    python compare_optimizers.py                    # writes runs/comparison/
    python compare_optimizers.py --configs sgd adam:lr=0.0003 --seeds 0 --out runs/try
    python compare_optimizers.py --vmap-seeds --out runs/at-once

Each configuration is trained once per seed with mlp_mnist.train (same data, model and
step as mlp_mnist.py); with --vmap-seeds, all the seeds of a configuration train together
as one program (many_models.train_many: the device loader's epoch under jax.vmap, the seed
axis sharded across the JAX devices when there are several), with the same results to
float rounding (Adam's runs drift apart over many steps: see docs/04-mnist-comparison.md).
Writes, atomically, into a new or empty --out folder (default runs/comparison, numbered
when taken):
  summary.json  every run's per-epoch records, and per configuration the mean and standard
                deviation over the seeds that completed every epoch of the final train and
                test accuracy and of epoch time; the other seeds are listed apart
  summary.md    that table in Markdown (docs/04 embeds it)
  curves.png    test error and training loss against epoch, a band for the seed spread
Exit status: 0 done, 2 bad input, 130 interrupted (the completed runs are still written).
"""
import argparse
import statistics
import sys
import time

import numpy as np
from matplotlib.ticker import FormatStrFormatter
import torch

import many_models
import mlp_mnist
import reporting
from optimized_sgd import OPTIMIZERS

# The comparison of docs/04: every optimizer at its default learning rate, then two settings
# of docs/05 that were picked on the TEST set by the sweeps in results/sweep*/ (labelled so
# there; docs/07 makes every choice on validation data instead).
COMPARISON = ["sgd", "momentum", "nesterov", "rmsprop", "adam",
              "rmsprop:lr=0.0003,rho=0.9",  # RMSProp with steps small against the weights (docs/05)
              "adam:eps=0.01"]  # Adam with eps above sqrt(v): small gradients no longer get full-size steps
SEEDS = [0, 1, 2]  # three seeds: enough for a mean and a spread
HYPERPARAMETERS = {"lr": mlp_mnist.positive_float, "mu": mlp_mnist.unit_interval, "rho": mlp_mnist.unit_interval,
                   "beta1": mlp_mnist.unit_interval, "beta2": mlp_mnist.unit_interval,
                   "eps": mlp_mnist.positive_float}


def config_spec(text):
    """'rmsprop:lr=0.0001,rho=0.99' -> ('rmsprop lr=0.0001 rho=0.99', {optimizer, lr, rho}); argparse type."""
    name, _, settings = text.partition(":")
    if name not in OPTIMIZERS:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown optimizer {name!r} (choose from {', '.join(OPTIMIZERS)})")
    overrides = {"optimizer": name}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        if key not in HYPERPARAMETERS:
            raise argparse.ArgumentTypeError(f"{text!r}: unknown setting {key!r} (choose from {', '.join(HYPERPARAMETERS)})")
        try:
            overrides[key] = HYPERPARAMETERS[key](value)
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {key}: {err}") from None
    label = " ".join([name] + [f"{k}={v}" for k, v in overrides.items() if k != "optimizer"])
    return label, overrides


def build_parser():
    p = argparse.ArgumentParser(description="Train several optimizer settings over several seeds and summarise.",
                                epilog="Exit status: 0 done, 2 bad input, 130 interrupted.")
    p.add_argument("--configs", type=config_spec, nargs="+", default=[config_spec(c) for c in COMPARISON],
                   metavar="NAME[:KEY=VALUE,...]",
                   help="optimizer settings to compare, e.g. adam:lr=0.0003,eps=1e-6 (unset values take "
                        "mlp_mnist.py's defaults; default: " + " ".join(COMPARISON) + ")")
    p.add_argument("--seeds", type=int, nargs="+", default=SEEDS, help="seeds to train each setting with (default: 0 1 2)")
    p.add_argument("--epochs", type=mlp_mnist.positive_int, default=mlp_mnist.EPOCHS, help="epochs per run (default: %(default)s)")
    p.add_argument("--batch-size", type=mlp_mnist.positive_int, default=mlp_mnist.BATCH_SIZE, help="images per step (default: %(default)s)")
    p.add_argument("--train-subset", type=mlp_mnist.positive_int, default=None, metavar="N",
                   help="train on the first N training images only (default: all 60,000)")
    mlp_mnist.add_val_size_argument(p)
    mlp_mnist.add_loader_argument(p)
    p.add_argument("--vmap-seeds", action="store_true",
                   help="train all the seeds of a configuration at once, as one program: the device loader's "
                        "epoch under jax.vmap over a seed axis (implies --loader device); seconds per epoch "
                        "are then for all the seeds together")
    mlp_mnist.add_data_dir_argument(p)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="new or empty folder for summary.json, summary.md and curves.png (a folder "
                        "that holds files is refused, so earlier results are never mixed in or lost; "
                        "default: runs/comparison, or runs/comparison-2, -3, ... when that one holds files)")
    return p


def run_config(args, overrides, seed):
    """The full mlp_mnist configuration of one run: its defaults, the comparison's settings, the seed."""
    defaults = mlp_mnist.build_parser().parse_args([])
    vars(defaults).update(overrides, seed=seed, epochs=args.epochs, batch_size=args.batch_size,
                          train_subset=args.train_subset, val_size=args.val_size, data_dir=args.data_dir, out=None,
                          loader=args.loader)
    return mlp_mnist.resolve_config(defaults)  # fills in the optimizer's lr unless overrides set one


def mean_std(values):
    """-> (mean, sample standard deviation, or None with fewer than two values)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarise(runs, epochs):
    """Per label: mean and std of the final train/test accuracy and of the epoch time, over the seeds
    that completed all `epochs`; the others (diverged, interrupted) are listed apart, never averaged."""
    summary = {}
    for label in dict.fromkeys(run["label"] for run in runs):  # in the order they ran
        mine = [r for r in runs if r["label"] == label]
        complete = [r for r in mine if r["status"] == "completed" and len(r["records"]) == epochs]
        rows = dict(lr=mine[0]["config"]["lr"], seeds=[r["seed"] for r in complete],
                    incomplete=[dict(seed=r["seed"], status=r["status"], completed_epochs=len(r["records"]))
                                for r in mine if r not in complete])
        for key, values in (("train_accuracy", [r["records"][-1]["train_accuracy"] for r in complete]),
                            ("val_accuracy", [r["records"][-1].get("val_accuracy") for r in complete]),
                            ("test_accuracy", [r["records"][-1]["test_accuracy"] for r in complete]),
                            ("epoch_seconds", [statistics.fmean(e["train_seconds"] for e in r["records"])
                                               for r in complete])):
            known = [v for v in values if v is not None]
            rows[f"{key}_mean"], rows[f"{key}_std"] = mean_std(known) if known else (None, None)
        summary[label] = rows
    return summary


def markdown_table(summary, vmap_seeds=False):
    """The summary as a Markdown table; with --vmap-seeds the seconds are one shared program's, so no spread."""
    def pm(mean, std, scale=100, digits=2):
        if mean is None:
            return "-"
        return f"{scale * mean:.{digits}f}" + ("" if std is None else f" ± {scale * std:.{digits}f}")

    has_val = any(s["val_accuracy_mean"] is not None for s in summary.values())
    seconds = "seconds per epoch (all seeds at once)" if vmap_seeds else "seconds per epoch"
    val_head, val_rule = (" val accuracy (%) |", " --- |") if has_val else ("", "")
    lines = [f"| optimizer | lr | seeds averaged | train accuracy (%) |{val_head} test accuracy (%) | {seconds} |",
             f"| --- | --- | --- | --- |{val_rule} --- | --- |"]
    for label, s in summary.items():
        apart = "; ".join(f"seed {r['seed']} {r['status']}" for r in s["incomplete"])
        note = f" ({apart}: not averaged)" if apart else ""
        seconds_std = None if vmap_seeds else s["epoch_seconds_std"]
        val = f" {pm(s['val_accuracy_mean'], s['val_accuracy_std'])} |" if has_val else ""
        lines.append(f"| {label}{note} | {s['lr']} | {len(s['seeds'])} | "
                     f"{pm(s['train_accuracy_mean'], s['train_accuracy_std'])} |{val} "
                     f"{pm(s['test_accuracy_mean'], s['test_accuracy_std'])} | "
                     f"{pm(s['epoch_seconds_mean'], seconds_std, scale=1)} |")
    return "\n".join(lines) + "\n"


def series_style(i):
    """The i-th series' colour, line style and marker: no two of the first 40 look alike."""
    return dict(color=reporting.plt.cm.tab10.colors[i % 10], linestyle=("-", "--", ":", "-.")[i // 10 % 4],
                marker="osD^v<>ph*"[(i + i // 10) % 10], markersize=4)


def plot_curves(runs, path):
    """Test error and training loss against epoch (log scales); line = mean over seeds, band = min to max."""
    fig, (ax_err, ax_loss) = reporting.plt.subplots(1, 2, figsize=(12, 5.2))
    for i, label in enumerate(dict.fromkeys(r["label"] for r in runs)):
        style = series_style(i)
        finished = [r["records"] for r in runs if r["label"] == label and r["records"]]
        if not finished:
            continue
        n = min(len(records) for records in finished)
        epochs = np.arange(1, n + 1)
        for ax, key, to_plot in ((ax_err, "test_accuracy", lambda acc: 100 * (1 - acc)),
                                 (ax_loss, "train_loss", lambda loss: loss)):
            values = to_plot(np.array([[rec[key] for rec in records[:n]] for records in finished]))
            ax.plot(epochs, values.mean(axis=0), label=label, **style)
            ax.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=style["color"], alpha=0.15)
    ax_err.set(xlabel="epoch", ylabel="test error (%) = 100 - test accuracy", yscale="log", title="test error")
    ax_err.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax_err.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    nesterov = any(r["config"]["optimizer"] == "nesterov" for r in runs)
    ax_loss.set(xlabel="epoch", ylabel="mean training loss (cross-entropy / 10)", yscale="log",
                title="training loss" + (" (Nesterov's at its look-ahead point)" if nesterov else ""))
    handles, labels = ax_err.get_legend_handles_labels()
    rows = -(-len(labels) // 4)
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4)  # one legend for both, below the data
    seeds = len({r["seed"] for r in runs})
    fig.suptitle("MNIST, 784-512-512-10 MLP: " + (f"line = mean over {seeds} seeds, shaded band = min to max "
                                                   f"over the seeds" if seeds > 1 else "one seed per line"))
    fig.tight_layout(rect=(0, 0.045 * rows + 0.02, 1, 1))
    reporting.save_figure(fig, path)


def write_results(out, args, runs, total_seconds, interrupted):
    """summary.json, summary.md and curves.png into out -> the summary."""
    summary = summarise(runs, args.epochs)
    reporting.write_json(f"{out}/summary.json", dict(
        command=" ".join(sys.argv), status="interrupted" if interrupted else "completed",
        seeds=args.seeds, epochs=args.epochs, val_size=args.val_size, loader=args.loader, vmap_seeds=args.vmap_seeds,
        total_seconds=total_seconds, environment=mlp_mnist.environment(), summary=summary, runs=runs))
    reporting.write_text(f"{out}/summary.md", markdown_table(summary, args.vmap_seeds))
    if any(r["records"] for r in runs):
        plot_curves(runs, f"{out}/curves.png")
    return summary


def train_all(args, train_set, val_set, test_set):
    """Every configuration over every seed -> (runs, interrupted); Ctrl-C anywhere keeps the completed runs."""
    runs = []
    log = lambda line: print("   " + line, flush=True)  # noqa: E731
    try:
        for label, overrides in args.configs:
            configs = [run_config(args, overrides, seed) for seed in args.seeds]
            if args.vmap_seeds:
                print(f"== {label}, seeds {' '.join(map(str, args.seeds))} at once", flush=True)
                seed_runs = many_models.train_many(configs, train_set, test_set, val_set, log=log)
            else:
                seed_runs = []
                for seed, config in zip(args.seeds, configs):
                    print(f"== {label}, seed {seed} ({len(runs) + len(seed_runs) + 1} of "
                          f"{len(args.configs) * len(args.seeds)})", flush=True)
                    seed_runs.append(mlp_mnist.train(config, train_set, test_set, val_set, log=log))
                    if seed_runs[-1]["status"] == "interrupted":
                        break
            for seed, config, run in zip(args.seeds, configs, seed_runs):
                runs.append(dict(label=label, seed=seed, config=config, status=run["status"],
                                 compile_seconds=run["compile_seconds"], records=run["records"]))
            if any(run["status"] == "interrupted" for run in seed_runs):
                return runs, True
    except KeyboardInterrupt:  # between runs: what is in `runs` is complete
        return runs, True
    return runs, False


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.vmap_seeds:
        args.loader = "device"  # the seeds share one program: the device loader's epoch under jax.vmap
    args.out = args.out or reporting.default_out_dir("comparison")
    torch.set_num_threads(1)  # as in mlp_mnist.py: the cores are XLA's
    train_set, val_set, test_set = mlp_mnist.load_splits_or_exit(parser, args.data_dir, args.train_subset,
                                                                 args.val_size, args.batch_size, args.out)
    start = time.perf_counter()
    runs, interrupted = train_all(args, train_set, val_set, test_set)
    total = time.perf_counter() - start
    mlp_mnist.write_or_fail(args.out, lambda out: print(markdown_table(
        write_results(out, args, runs, total, interrupted), args.vmap_seeds)),
        "the files written before it are complete (each is written whole or not at all)")
    print(f"{len(runs)} runs in {total / 60:.1f} minutes; wrote {args.out}/summary.json, summary.md, curves.png")
    if interrupted:
        complete = sum(r["status"] == "completed" for r in runs)
        print(f"interrupted: {args.out} holds the {complete} completed runs and the completed epochs of the "
              f"{len(runs) - complete} others", file=sys.stderr)
        sys.exit(mlp_mnist.EXIT_INTERRUPTED)


if __name__ == "__main__":
    mlp_mnist.run_script(main)
