"""Compare the optimizers over several seeds: the table and curves of docs/04 in one command.

    python compare_optimizers.py                    # writes runs/comparison/
    python compare_optimizers.py --configs sgd adam:lr=0.0003 --seeds 0 --out runs/try
    python compare_optimizers.py --vmap --out runs/at-once

Each configuration is trained once per seed with mlp_mnist.train (same data, model and
step as mlp_mnist.py); with --vmap, all the configurations and seeds of one optimizer train
together as one program (many_models.train_many: mlp_mnist's device epoch under jax.vmap, the
model axis sharded across the JAX devices when there are several), with the same results
to float rounding.
Writes, atomically, into a new or empty --out folder (default runs/comparison, numbered
when taken):
  summary.json  every run's per-epoch records, and per configuration the mean and standard
                deviation over the seeds that completed every epoch of the final train and
                test accuracy and of epoch time; the other seeds are listed apart
  summary.md    that table in Markdown (docs/04 embeds it)
  curves.png    test error and training loss against epoch, a band for the seed spread
  checkpoints/  each run's checkpoint after its last finished epoch (with --vmap, each optimizer's, every
                array with the model axis) and study.json: --resume DIR goes on from them
With --vmap it can run as several processes that share each optimizer's models, as tune_optimizers.py can
(--coordinator HOST:PORT --num-processes N --process-id I; docs/A4-many-machines.md): only process 0 writes.
Exit status: 0 done, 2 bad input, 5 the study lost one of its processes, 130 interrupted (the completed runs are
still written).
"""
import argparse
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
from optimized_sgd import OPTIMIZERS, UnknownHyperparameter, hyperparameters

# The comparison of docs/04: every optimizer at its default learning rate, then two settings
# of docs/05 that were picked on the TEST set by the sweeps in results/sweep*/ (labelled so
# there; docs/06 makes every choice on validation data instead).
COMPARISON = ["sgd", "momentum", "nesterov", "rmsprop", "adam",
              "rmsprop:lr=0.0003,rho=0.9",  # RMSProp with steps small against the weights (docs/05)
              "adam:eps=0.01"]  # Adam with eps above sqrt(v): small gradients no longer get full-size steps


def config_spec(text):
    """'rmsprop:lr=0.0001,rho=0.99' -> ('rmsprop lr=0.0001 rho=0.99', {optimizer, lr, rho}); argparse type.

    A setting the optimizer does not take ('sgd:mu=0.5') is refused, naming what it takes."""
    name, _, settings = text.partition(":")
    if name not in OPTIMIZERS:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown optimizer {name!r} (choose from {', '.join(OPTIMIZERS)})")
    overrides = {"optimizer": name}
    flags = cli.hyperparameter_flags()
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        if key not in flags:
            raise argparse.ArgumentTypeError(f"{text!r}: unknown setting {key!r} (choose from {', '.join(flags)})")
        try:
            overrides[key] = flags[key][0](value)
            hyperparameters(name, **{key: overrides[key]})
        except (argparse.ArgumentTypeError, UnknownHyperparameter) as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {key}: {err}") from None
    label = " ".join([name] + [f"{k}={v}" for k, v in overrides.items() if k != "optimizer"])
    return label, overrides


def build_parser():
    p = argparse.ArgumentParser(description="Train several optimizer settings over several seeds and summarise.",
                                epilog="Exit status: 0 done, 2 bad input, 5 the study lost one of its processes, "
                                       "130 interrupted.")
    p.add_argument("--configs", type=config_spec, nargs="+", default=[config_spec(c) for c in COMPARISON],
                   metavar="NAME[:KEY=VALUE,...]",
                   help="optimizer settings to compare, e.g. adam:lr=0.0003,eps=1e-6 (unset values take "
                        "mlp_mnist.py's defaults; default: " + " ".join(COMPARISON) + ")")
    cli.add_flags(p, "--seeds", "--epochs", "--batch-size", "--train-subset", "--val-size", "--loader", "--vmap",
                  "--data-dir", "--out", "--resume")
    processes.add_flags(p)
    return p


def run_config(args, overrides, seed):
    """The full mlp_mnist configuration of one run: the comparison's settings, the optimizer's defaults, the seed."""
    name = overrides["optimizer"]
    return dict(optimizer=name, **hyperparameters(name, **{k: v for k, v in overrides.items() if k != "optimizer"}),
                seed=seed, epochs=args.epochs, batch_size=args.batch_size, train_subset=args.train_subset,
                val_size=args.val_size, loader=args.loader)


CHANCE = 0.11  # a final test accuracy at or below this is a collapse to chance (ten classes), NaN or not


def summarise(runs, epochs):
    """Per label: mean and std of the final train/test accuracy and of the epoch time, over the seeds
    that completed all `epochs`; the others (diverged, interrupted) are listed apart, never averaged.
    And, against the label with the best mean test accuracy, the paired difference of each label's final
    test accuracy over their common seeds, with its 95% interval (stats.paired_difference)."""
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
            rows[f"{key}_mean"], rows[f"{key}_std"] = stats.mean_std(known) if known else (None, None)
        rows["final_test"] = {r["seed"]: r["records"][-1]["test_accuracy"] for r in complete}
        rows["collapsed_seeds"] = [seed for seed, value in rows["final_test"].items() if value <= CHANCE]
        summary[label] = rows
    ranked = [label for label in summary if summary[label]["test_accuracy_mean"] is not None]
    if ranked:
        best = max(ranked, key=lambda label: summary[label]["test_accuracy_mean"])
        for label in ranked:
            summary[label]["against_best"] = dict(best=best, **stats.paired_difference(
                summary[label]["final_test"], summary[best]["final_test"]))
    return summary


def markdown_table(summary, vmap=False):
    """The summary as a Markdown table; with --vmap the seconds are one shared program's, so no spread."""
    def pm(mean, std, scale=100, digits=2):
        if mean is None:
            return "-"
        return f"{scale * mean:.{digits}f}" + ("" if std is None else f" ± {scale * std:.{digits}f}")

    has_val = any(s["val_accuracy_mean"] is not None for s in summary.values())
    seconds = "seconds per epoch (one program for all of the optimizer's models)" if vmap else "seconds per epoch"
    val_head, val_rule = (" val accuracy (%) |", " --- |") if has_val else ("", "")
    lines = [f"| optimizer | lr | seeds averaged | train accuracy (%) |{val_head} test accuracy (%) | "
             f"test accuracy against the best, paired by seed: difference [95% interval] (points) | {seconds} |",
             f"| --- | --- | --- | --- |{val_rule} --- | --- | --- |"]
    for label, s in summary.items():
        apart = "; ".join(f"seed {r['seed']} {r['status']}" for r in s["incomplete"])
        apart += "; " if apart and s["collapsed_seeds"] else ""
        apart += "; ".join(f"seed {seed} collapsed to chance" for seed in s["collapsed_seeds"])
        note = f" ({apart})" if apart else ""
        seconds_std = None if vmap else s["epoch_seconds_std"]
        val = f" {pm(s['val_accuracy_mean'], s['val_accuracy_std'])} |" if has_val else ""
        against = s.get("against_best")
        paired = "-" if against is None else ("the best" if against["best"] == label else stats.verdict(against))
        lines.append(f"| {label}{note} | {s['lr']} | {len(s['seeds'])} | "
                     f"{pm(s['train_accuracy_mean'], s['train_accuracy_std'])} |{val} "
                     f"{pm(s['test_accuracy_mean'], s['test_accuracy_std'])} | {paired} | "
                     f"{pm(s['epoch_seconds_mean'], seconds_std, scale=1)} |")
    lines += ["", "Means ± sample standard deviations over the seeds that completed every epoch (the others are named "
                  "in the row); the paired difference is over the seeds both settings completed: they share initial "
                  "weights and batch order, so the difference is free of what the seed does to both."]
    return "\n".join(lines) + "\n"


def series_style(i):
    """The i-th series' colour, line style and marker: no two of the first 40 look alike, and two curves that lie
    on top of each other (momentum and Nesterov) still show, one dashed over the other."""
    return dict(color=plots.plt.cm.tab10.colors[i % 10], linestyle=("-", "--", "-.", ":")[(i + i // 10) % 4],
                marker="osD^v<>ph*"[(i + i // 10) % 10], markersize=4)


def plot_curves(runs, path):
    """Test error and training loss against epoch (log scales); line = mean over seeds, band = min to max."""
    fig, (ax_err, ax_loss) = plots.plt.subplots(1, 2, figsize=(9, 4.6))
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
    noted = [name for name in dict.fromkeys(r["config"]["optimizer"] for r in runs) if OPTIMIZERS[name].loss_note]
    ax_loss.set(xlabel="epoch", ylabel="mean training loss (cross-entropy / 10)", yscale="log",
                title="training loss" + "".join(f" ({name}'s {OPTIMIZERS[name].loss_note})" for name in noted))
    handles, labels = ax_err.get_legend_handles_labels()
    rows = -(-len(labels) // 4)
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4)  # one legend for both, below the data
    seeds = len({r["seed"] for r in runs})
    fig.suptitle("MNIST, 784-512-512-10 MLP: " + (f"line = mean over {seeds} seeds, band = min to max "
                                                   f"over the seeds" if seeds > 1 else "one seed per line"), fontsize=10)
    for ax in (ax_err, ax_loss):
        ax.title.set_fontsize(9)
    fig.tight_layout(rect=(0, 0.05 * rows + 0.02, 1, 1))
    plots.save_figure(fig, path)


def write_results(out, args, runs, total_seconds, interrupted):
    """summary.json, summary.md and curves.png into out -> the summary."""
    summary = summarise(runs, args.epochs)
    files.write_json(f"{out}/summary.json", dict(
        status="interrupted" if interrupted else "completed", seeds=args.seeds, epochs=args.epochs,
        val_size=args.val_size, loader=args.loader, vmap=args.vmap, total_seconds=total_seconds, summary=summary,
        runs=runs))
    files.write_markdown(f"{out}/summary.md", markdown_table(summary, args.vmap))
    if any(r["records"] for r in runs):
        plot_curves(runs, f"{out}/curves.png")
    return summary


def train_all(args, train_set, val_set, test_set):
    """Every configuration over every seed -> (runs, why it stopped early: None, "interrupted" or PeerLost); Ctrl-C
    anywhere keeps the completed runs, and so does a lost process of a multi-process study.

    One model after another; with --vmap, every configuration and seed of one optimizer as one program."""
    jobs = [(label, seed, run_config(args, overrides, seed))
            for label, overrides in args.configs for seed in args.seeds]
    groups = ([[job for job in jobs if job[2]["optimizer"] == name] for name in dict.fromkeys(j[2]["optimizer"]
                                                                                            for j in jobs)]
              if args.vmap else [[job] for job in jobs])
    runs, done = [], 0
    log = lambda line: print("   " + line, flush=True)  # noqa: E731
    try:
        for group in groups:
            names = ", ".join(f"{label} seed {seed}" for label, seed, _ in group)
            print(f"== {names} ({done + 1}{f'-{done + len(group)}' if len(group) > 1 else ''} of {len(jobs)})",
                  flush=True)
            configs = [config for _, _, config in group]
            if args.vmap:  # one checkpoint per optimizer, its models on one axis; else one per run
                path = f"{args.out}/checkpoints/{configs[0]['optimizer']}.npz"
                results = many_models.train_many(configs, train_set, test_set, val_set, log=log, checkpoint_path=path)
            else:
                label, seed, config = group[0]
                results = [mlp_mnist.train(config, train_set, test_set, val_set, log=log, checkpoint_path=(
                    f"{args.out}/checkpoints/{label.replace(' ', '_')}_seed={seed}.npz"))]
            for (label, seed, config), run in zip(group, results):
                runs.append(dict(label=label, seed=seed, config=config, status=run["status"],
                                 compile_seconds=run["compile_seconds"], records=run["records"]))
            done += len(group)
            if any(run["status"] == "interrupted" for run in results):
                return runs, "interrupted"
    except KeyboardInterrupt:  # between runs: what is in `runs` is complete
        return runs, "interrupted"
    except processes.PeerLost as err:
        return runs, err
    order = {(label, seed): i for i, (label, seed, _) in enumerate(jobs)}
    return sorted(runs, key=lambda r: order[(r["label"], r["seed"])]), None


def main(argv=None):
    argv = provenance.record_command(__file__, argv)
    parser = build_parser()
    args = cli.study_args(parser, argv, parser.parse_args(argv), "comparison")
    args.configs = [tuple(c) for c in args.configs]  # (label, overrides); JSON gives them back as lists
    if args.vmap:
        args.loader = "device"  # the models share one program: mlp_mnist's device epoch under jax.vmap
    torch.set_num_threads(1)  # as in mlp_mnist.py: the cores are XLA's
    processes.start(parser, args, argv, __file__)
    train_set, val_set, test_set = exits.load_data_or_exit(parser, args, args.batch_size)
    exits.write_or_fail(args.out, lambda out: cli.save_study_args(args), "nothing was saved")
    processes.ready()
    start = time.perf_counter()
    try:
        runs, stopped = train_all(args, train_set, val_set, test_set)
        interrupted = stopped is not None
    except checkpoint.CheckpointError as err:
        exits.fail(f"--resume {args.out}: {err}")
    total = time.perf_counter() - start
    exits.write_or_fail(args.out, lambda out: print(markdown_table(
        write_results(out, args, runs, total, interrupted), args.vmap)),
        "the files written before it are complete (each is written whole or not at all)")
    print(f"{len(runs)} runs in {total / 60:.1f} minutes; wrote {args.out}/summary.json, summary.md, curves.png")
    complete = sum(r["status"] == "completed" for r in runs)
    if isinstance(stopped, processes.PeerLost):
        exits.fail(f"{stopped}: process 0's {args.out} holds the {complete} completed runs; the same command with "
                   f"--resume {args.out} goes on", exits.EXIT_PROCESS_LOST)
    if interrupted:
        print(f"interrupted: {args.out} holds the {complete} completed runs and the completed epochs of the "
              f"{len(runs) - complete} others; python compare_optimizers.py --resume {args.out} goes on",
              file=sys.stderr)
        sys.exit(exits.EXIT_INTERRUPTED)


if __name__ == "__main__":
    exits.run_script(main)
