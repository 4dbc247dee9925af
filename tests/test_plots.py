"""plumbing/plots.py: each plot holds the data it was given (read back from the figure before it is saved), and
the PNG it writes has that drawing in it (not only axes and text)."""
import numpy as np
import pytest

from plumbing import plots
from conftest import coloured_fraction, dark_fraction

RECORDS = [dict(epoch=e, train_loss=loss, train_accuracy=a, val_accuracy=None, test_accuracy=t)
           for e, loss, a, t in ((1, 0.30, 0.90, 0.88), (2, 0.12, 0.95, 0.93), (3, 0.07, 0.97, 0.95))]


@pytest.fixture
def saved(monkeypatch):
    """The figures plots.save_figure is given, kept open (the real save_figure still writes the PNG, then closes)."""
    figures, real_save = [], plots.save_figure

    def keep(fig, path):
        figures.append(dict(lines=[[(line.get_label(), list(line.get_xdata()), list(line.get_ydata()))
                                     for line in ax.lines] for ax in fig.axes],
                            images=[[np.asarray(image.get_array()) for image in ax.images] for ax in fig.axes]))
        real_save(fig, path)

    monkeypatch.setattr(plots, "save_figure", keep)
    return figures


def test_curves_hold_the_loss_and_the_accuracies(saved, tmp_path):
    """Left: the training loss per epoch; right: train and test accuracy in percent (no validation line: there is
    none); and the PNG shows them in colour."""
    plots.plot_run_curves(RECORDS, "title", tmp_path / "curves.png")
    (figure,) = saved
    loss_lines, accuracy_lines = figure["lines"]
    assert loss_lines == [("training loss", [1, 2, 3], [0.30, 0.12, 0.07])]
    assert [(label, x) for label, x, _ in accuracy_lines] == [("train", [1, 2, 3]), ("test", [1, 2, 3])]
    np.testing.assert_allclose([y for _, _, y in accuracy_lines], [[90, 95, 97], [88, 93, 95]])
    assert coloured_fraction(tmp_path / "curves.png") > 0.005  # the lines: 0.01; an empty plot (its legend alone) 0.001


def test_confusion_holds_the_counts(saved, tmp_path):
    """The image is log(1 + counts) of (true, predicted), counted here by NumPy; its colours fill the PNG."""
    rng = np.random.default_rng(0)
    true = rng.integers(0, 10, 500)
    predicted = np.where(rng.random(500) < 0.8, true, rng.integers(0, 10, 500))
    plots.plot_confusion(true, predicted, "title", tmp_path / "confusion.png")
    counts = np.histogram2d(true, predicted, bins=10, range=[[0, 10], [0, 10]])[0]
    (figure,) = saved
    np.testing.assert_allclose(figure["images"][0][0], np.log1p(counts))
    assert coloured_fraction(tmp_path / "confusion.png") > 0.1


def test_misclassified_shows_the_wrong_ones(saved, tmp_path):
    """Only the misclassified images, in order, each the image it was given; dark strokes fill the PNG."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    true = np.arange(30) % 10
    predicted = np.where(np.arange(30) % 3 == 0, (true + 1) % 10, true)  # every third is wrong: 10 of them
    plots.plot_misclassified(images, true, predicted, tmp_path / "wrong.png")
    (figure,) = saved
    shown = [image for ax in figure["images"] for image in ax]
    assert len(shown) == 10
    for image, i in zip(shown, range(0, 30, 3)):
        np.testing.assert_array_equal(image, images[i])
    assert dark_fraction(tmp_path / "wrong.png") > 0.1
