"""Saving figures, and the plots of one run (curves, confusion matrix, misclassified digits). The only module
that sets matplotlib's backend: scripts draw with plots.plt, to files, with no display."""
import io
import json

import matplotlib

matplotlib.use("Agg")  # draw to files; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from plumbing.files import atomic_write  # noqa: E402
from plumbing.provenance import provenance  # noqa: E402


def save_figure(fig, path):
    """Save a matplotlib figure as PNG atomically (provenance in a PNG text chunk), then close it."""
    metadata = {"provenance": json.dumps(provenance(), separators=(",", ":"))}
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100, metadata=metadata)
        atomic_write(path, lambda f: f.write(buffer.getvalue()))
    finally:
        plt.close(fig)


def stamp_png(path, **extra):
    """Add provenance() (and `extra`) to a PNG that something else drew (a browser's screenshot), atomically."""
    from PIL import Image, PngImagePlugin  # matplotlib's own dependency

    text = PngImagePlugin.PngInfo()
    text.add_text("provenance", json.dumps(dict(provenance(), **extra), separators=(",", ":")))
    with Image.open(path) as image:
        image.load()
    buffer = io.BytesIO()
    image.save(buffer, format="png", pnginfo=text)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def plot_run_curves(records, title, path, loss_note=""):
    """Training loss and train/(val/)test accuracy against epoch, for one run's records.

    loss_note says where the loss is measured when that is not the params themselves
    (Nesterov: at the look-ahead point).
    """
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.8))
    ax_loss.plot(epochs, [r["train_loss"] for r in records], marker="o", label="training loss" + loss_note)
    ax_loss.set(xlabel="epoch", ylabel="mean training loss (cross-entropy / 10)", yscale="log")
    ax_loss.legend(fontsize=8)
    for key, label, marker, color in (("train_accuracy", "train", "o", "tab:blue"),
                                      ("val_accuracy", "validation", "s", "tab:green"),
                                      ("test_accuracy", "test", "^", "tab:red")):
        if all(r.get(key) is not None for r in records):
            ax_acc.plot(epochs, [100 * r[key] for r in records], marker=marker, color=color, label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)")
    ax_acc.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def confusion_matrix(true, predicted, num_classes=10):
    """(N,), (N,) int -> counts (num_classes, num_classes), rows true, columns predicted."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (true, predicted), 1)
    return counts


def plot_confusion(true, predicted, title, path):
    """The confusion matrix with its counts written in; the colour is log(1 + count), so that the few
    errors off the diagonal show next to the thousands on it."""
    counts = confusion_matrix(true, predicted)
    fig, ax = plt.subplots(figsize=(6.2, 5))
    image = ax.imshow(np.log1p(counts), cmap="Blues")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = [t for t in (0, 1, 10, 100, 1000) if t <= counts.max()]
    bar.set_ticks(np.log1p(ticks), labels=[str(t) for t in ticks])
    bar.set_label("count (colour: log(1 + count))")
    for i in range(10):
        for j in range(10):
            ax.text(j, i, counts[i, j], ha="center", va="center", fontsize=7,
                    color="white" if i == j else "black")
    ax.set(xlabel="predicted", ylabel="true", xticks=range(10), yticks=range(10), title=title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_misclassified(images, true, predicted, path, max_shown=40):
    """A grid of up to max_shown misclassified images (N, 28, 28), labelled 'true -> predicted'."""
    wrong = np.flatnonzero(true != predicted)[:max_shown]
    cols = 10
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 1.05), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"{true[i]} -> {predicted[i]}", fontsize=8)
    fig.suptitle(f"first {len(wrong)} of {int(np.sum(true != predicted))} misclassified test digits "
                 f"(above each: true -> predicted)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
