"""One training run's folder (mlp_mnist.py's --out): what --resume DIR reads, metrics.json and log.txt after
every epoch, and at the end model.npz and the three plots."""
import os
import sys

import checkpoint
from optimized_sgd import OPTIMIZERS
from plumbing import cli, exits, files, plots
from train_utils import LAYER_SIZES


def resumed_config(parser, argv, args):
    """--resume DIR -> the run's config, from DIR/checkpoint.npz, with --epochs (which may grow) and --data-dir as
    given now. Any other flag given must agree with the run's; anything amiss ends with one line, exit 2."""
    out = args.resume
    if not os.path.isfile(f"{out}/checkpoint.npz"):
        exits.fail(f"--resume {out}: holds no run to resume (no checkpoint.npz there)")
    try:
        _, meta = checkpoint.read_run(f"{out}/checkpoint.npz")
    except checkpoint.CheckpointError as err:
        exits.fail(f"--resume: {err}")
    config = cli.check_resumed_flags(parser, argv, meta["configs"][0], f"--resume {out}")
    metrics = files.read_json_or_none(f"{out}/metrics.json")
    status, records = (metrics.get("status"), metrics.get("epochs")) if isinstance(metrics, dict) else (None, None)
    if str(status).startswith("diverged"):
        exits.fail(f"--resume {out}: the run {status}; resuming would only repeat it: start a new run with a "
                   f"smaller --lr")
    if isinstance(records, list) and len(records) > meta["epoch"]:
        exits.fail(f"--resume {out}: metrics.json holds {len(records)} epochs, checkpoint.npz only "
                   f"{meta['epoch']}: resuming would lose epochs (was checkpoint.npz replaced?)")
    if meta["epoch"] >= config["epochs"] and os.path.exists(f"{out}/model.npz"):
        exits.fail(f"--resume {out}: the run already has its {meta['epoch']} epochs; give --epochs N (more) to "
                   f"train on")
    return dict(config, data_dir=args.data_dir, out=out, resume=out)


def save_progress(out, config, run, lines):
    """The run so far -> out/metrics.json and out/log.txt (the lines logged), each written whole or not at all."""
    kept = (f"{out}/metrics.json keeps what it held before" if os.path.exists(f"{out}/metrics.json")
            else f"{out}/checkpoint.npz holds the finished epochs" if os.path.exists(f"{out}/checkpoint.npz")
            else "nothing was saved")
    exits.write_or_fail(f"{out}/metrics.json", lambda path: files.write_json(path, dict(
        config=config, layer_sizes=list(LAYER_SIZES), status=run["status"], completed_epochs=len(run["records"]),
        compile_seconds=run["compile_seconds"], epochs=run["records"])), kept)
    exits.write_or_fail(f"{out}/log.txt", lambda path: files.write_text(path, "\n".join(lines)), kept)


def finish(out, config, run, test_set, predict):
    """A diverged run ends the program (exit 3), an interrupted one too (exit 130, saying how to resume it);
    a completed run -> out/model.npz (its params, from checkpoint.npz), curves.png, confusion.png and
    misclassified.png. predict(params, images) -> digits, for a run resumed only to finish its files."""
    if run["status"].startswith("diverged"):
        exits.fail(f"the training loss {run['status']} (NaN or infinite): try a smaller --lr than {config['lr']}; "
                   f"{out}/metrics.json holds the {len(run['records'])} epochs before it", exits.EXIT_DIVERGED)
    if run["status"] == "interrupted":
        print(f"interrupted after {len(run['records'])} completed epochs; {out}/metrics.json holds them, and "
              f"python mlp_mnist.py --resume {out} --epochs {config['epochs']} goes on from checkpoint.npz",
              file=sys.stderr)
        sys.exit(exits.EXIT_INTERRUPTED)
    exits.write_or_fail(f"{out}/model.npz", lambda path: checkpoint.save_model(
        f"{out}/checkpoint.npz", path, test_accuracy=run["records"][-1]["test_accuracy"]),
        f"{out}/checkpoint.npz holds the trained params")
    title = f"{config['optimizer']}, lr {config['lr']:g}, seed {config['seed']}"
    where = OPTIMIZERS[config["optimizer"]].loss_note
    images, labels = test_set.data.numpy(), test_set.targets.numpy()
    predicted = run["test_predictions"]
    if predicted is None:  # nothing was left to train: predict with the saved params
        predicted = predict(checkpoint.load_model(f"{out}/model.npz")[0], images)

    def draw(out):
        plots.plot_run_curves(run["records"], title, f"{out}/curves.png", loss_note=f" ({where})" if where else "")
        plots.plot_confusion(labels, predicted, f"test set, {title}", f"{out}/confusion.png")
        plots.plot_misclassified(images, labels, predicted, f"{out}/misclassified.png")

    exits.write_or_fail(out, draw, f"{out}/metrics.json holds the results")
    print(f"wrote {out}/metrics.json, log.txt, checkpoint.npz, model.npz, curves.png, confusion.png, "
          f"misclassified.png")
