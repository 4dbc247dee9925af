"""The command line: number types that refuse bad values, the flags several scripts share (one name, type,
default and help everywhere: tests/test_contract.py checks it), each optimizer's hyperparameter flags (made from
the registry in optimized_sgd.py), and the settings of a run or study being resumed."""
import argparse
import json
import math
import os

import numpy as np

from plumbing.exits import fail
from plumbing import files
from plumbing.files import default_out_dir, read_json_or_none, write_json


def number_type(kind, check, requirement):
    """An argparse type: parse with `kind` (int or float), require check(value), else a usage error.

    number_type(float, lambda v: v > 0, "positive")("-1") -> ArgumentTypeError("-1 is not positive")
    """

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text} is not {requirement}")
        return value

    parse.__name__ = requirement  # what argparse names in "invalid ... value"
    return parse


def float32_type(check, requirement):
    """An argparse type for a hyperparameter, which the training holds as a float32 array: check() must hold for the
    float32 value, not only for the number typed (0.99999999 is 1.0 in float32, 1e-50 is 0.0, 1e39 inf)."""

    def parse(text):
        value = number_type(float, lambda v: True, "a number")(text)
        with np.errstate(over="ignore", under="ignore"):
            single = float(np.float32(value))
        if check(single):
            return value
        if single == value or math.isnan(value):
            raise argparse.ArgumentTypeError(f"{text} is not {requirement}")
        raise argparse.ArgumentTypeError(f"{text} is {single:g} in float32, which the training computes in: "
                                         f"not {requirement}")

    parse.__name__ = requirement
    return parse


# 1.2e-38, float32's smallest normal number: XLA's CPU code flushes the subnormals below it to zero
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


positive_float = float32_type(lambda v: FLOAT32_TINY <= v < math.inf,
                              "a positive finite number (float32: from 1.2e-38)")


positive_int = number_type(int, lambda v: v >= 1, "a whole number >= 1")


non_negative_int = number_type(int, lambda v: v >= 0, "a whole number >= 0")


unit_interval = float32_type(lambda v: 0 <= v < 1, "in [0, 1)")


LOADERS = ("torch", "device")  # the DataLoader path first: the way JAX's tutorial feeds data


SHARED_FLAGS = {
    "--epochs": dict(type=positive_int, default=10, help="passes over the training images (default: %(default)s)"),
    "--batch-size": dict(type=positive_int, default=128, help="images per training step (default: %(default)s)"),
    "--seed": dict(type=non_negative_int, default=0,
                   help="seeds the initial weights (jax.random) and the order of the batches (each epoch's its own: "
                        "numpy's default_rng([seed, epoch])) (default: %(default)s)"),
    "--seeds": dict(type=non_negative_int, nargs="+", default=[0, 1, 2], metavar="SEED",
                    help="the seeds every setting is trained with, each as --seed does (default: 0 1 2)"),
    "--train-subset": dict(type=positive_int, default=None, metavar="N",
                           help="use only the first N training images (default: all of them; with --val-size, "
                                "all those before the validation images)"),
    "--val-size": dict(type=non_negative_int, default=0, metavar="N",
                       help="hold out the LAST N of the 60,000 training images as a validation set, the same for "
                            "every seed, and train on the images before them; each epoch then records "
                            "val_accuracy (default: %(default)s)"),
    "--loader": dict(choices=LOADERS, default=LOADERS[0],
                     help="how batches reach the training step: 'torch', a torch DataLoader feeding one jitted "
                          "step per batch, or 'device', the images kept on the JAX device and each epoch one "
                          "compiled program (jax.lax.scan over the batches); both train on the same batches in "
                          "the same order (default: %(default)s)"),
    "--vmap": dict(action="store_true",
                   help="train all the models of one optimizer (its settings and seeds) at once, as one program: "
                        "the device loader's epoch under jax.vmap over a model axis (implies --loader device; "
                        "default: off, one model after another)"),
    "--data-dir": dict(metavar="DIR",
                       help="folder with the four MNIST IDX files, gzipped or not, read-only is fine; when none is "
                            "there torchvision downloads them into DIR/MNIST/raw (default: $MNIST_DATA_DIR if set, "
                            "else ./data; now: %(default)s)"),
    "--out": dict(metavar="DIR", default=None,
                  help="new or empty folder for the files this script writes; a folder that holds files is "
                       "refused, so nothing you have is overwritten (default: runs/SCRIPT, or runs/SCRIPT-2, -3, "
                       "... when that one holds files)"),
    "--resume": dict(metavar="DIR", default=None,
                     help="go on with the run in DIR from its last finished epoch (its checkpoint), ending bit for "
                          "bit where it would have ended had it never stopped; its settings come from DIR: a flag "
                          "given too must agree with them, except --epochs, which may grow, and --data-dir "
                          "(default: start a new run)"),
    "--json": dict(action="store_true",
                   help="print the results as JSON instead of the tables; the files are written either way "
                        "(default: off)"),
}


OWN_DEFAULTS = {  # (script, flag) -> why it differs from SHARED_FLAGS' default
    ("tune_optimizers.py", "--val-size"): "the study chooses every setting on validation data",
    ("sharpness.py", "--train-subset"): "a whole-batch Hessian-vector product on all 60,000 images costs 30 times "
                                        "one on 2,000",
}


def add_flags(parser, *flags, **defaults):
    """Add the shared `flags` ("--epochs", ...) to parser; defaults: {"val_size": 10000} for OWN_DEFAULTS."""
    for flag in flags:
        spec = dict(SHARED_FLAGS[flag])
        if flag == "--data-dir":
            import mnist_data  # here, not at the top: a script with no MNIST (verify_vectors.py) needs no torch

            spec["default"] = mnist_data.default_data_dir()
        key = flag[2:].replace("-", "_")
        if key in defaults:
            spec["default"] = defaults.pop(key)
        parser.add_argument(flag, **spec)
    if defaults:
        raise TypeError(f"add_flags: no shared flag for {sorted(defaults)}")


VALUES = {"positive": positive_float, "in [0, 1)": unit_interval}  # optimized_sgd.Hyperparameter.values -> type


def hyperparameter_flags():
    """{key: (argparse type, help)} of lr and every hyperparameter an optimizer of the registry takes, in the
    registry's order; a key two optimizers share is one flag, its help naming both."""
    from optimized_sgd import OPTIMIZERS  # here: read when a parser is built, so a registered optimizer is in

    takers = {"lr": (positive_float, {"learning rate": list(OPTIMIZERS)})}
    for name, entry in OPTIMIZERS.items():
        for key, spec in entry.hyperparameters.items():
            kind, helps = takers.setdefault(key, (VALUES[spec.values], {}))
            if kind is not VALUES[spec.values]:
                raise ValueError(f"optimizer {name}: {key} must be {spec.values}, as other optimizers take it")
            helps.setdefault(spec.help, []).append(name)
    return {key: (kind, "; ".join(text if key == "lr" else f"{', '.join(names)}: {text}"
                                  for text, names in helps.items()))
            for key, (kind, helps) in takers.items()}


def add_hyperparameter_flags(parser):
    """--lr and a flag per hyperparameter of the registry (--mu, --rho, ...): each defaults to the chosen
    optimizer's own value."""
    from optimized_sgd import OPTIMIZERS, hyperparameters

    for key, (kind, text) in hyperparameter_flags().items():
        defaults = ", ".join(f"{name} {hyperparameters(name)[key]:g}" for name in OPTIMIZERS
                             if key in hyperparameters(name))
        parser.add_argument(f"--{key}", type=kind, default=None, help=f"{text} (default: {defaults})")


def resolve_hyperparameters(parser, config):
    """config (the parsed flags, a dict) -> the run's config: its optimizer's hyperparameters filled in and
    the others left out. One the optimizer does not take (--optimizer adam --mu 0.5) is a usage error."""
    from optimized_sgd import UnknownHyperparameter, hyperparameters

    config = dict(config)
    given = {key: config.pop(key) for key in hyperparameter_flags()}
    try:
        return dict(config, **hyperparameters(config["optimizer"], **given))
    except UnknownHyperparameter as err:
        parser.error(f"argument --{err.key}: {err}")


def given_flags(parser, argv):
    """The flags that argv gives -> {dest: parsed value}; the ones left at their defaults are not in it."""
    unset = object()  # argparse fills in a default only where the namespace holds nothing yet
    namespace = argparse.Namespace(**{action.dest: unset for action in parser._actions})
    return {key: value for key, value in vars(parser.parse_args(argv, namespace)).items() if value is not unset}


def check_resumed_flags(parser, argv, saved, what):
    """saved: the settings of the run being resumed (a dict) -> them, with --epochs as argv gives it. Any other
    flag in argv must agree with them (--data-dir aside, and --resume itself); else one line, exit 2."""
    given = given_flags(parser, argv)
    if "out" in given:
        fail(f"{what}: --out too: a resumed run writes into the folder it resumes")
    for key, value in given.items():
        if key not in ("epochs",) + NOT_SETTINGS and json.loads(json.dumps(value)) != saved.get(key):
            fail(f"{what}: --{key.replace('_', '-')} {value} is not the run's ({saved.get(key)}); only --epochs "
                 f"(more of them) and --data-dir may change")
    return dict(saved, epochs=given.get("epochs", saved["epochs"]))


STUDY_FILE = "checkpoints/study.json"  # a study's settings, beside its checkpoints: what --resume DIR reads
NOT_SETTINGS = ("out", "data_dir", "resume",  # where things are, not what is computed: these may change on resume
                "coordinator", "num_processes", "process_id", "join_timeout")  # so may the processes' layout


def study_args(parser, argv, args, name):
    """A study's settings -> args: a new study's as parsed (--out by default runs/NAME), or with --resume DIR those
    saved in DIR by the same script, with the flags given now checked against them (check_resumed_flags) and
    --epochs no fewer than before; --out is then DIR."""
    if not args.resume:
        args.out = args.out or default_out_dir(name)
        args.settings = {key: value for key, value in vars(args).items() if key not in NOT_SETTINGS}
        args.settings["script"] = name
        return args
    what = f"--resume {args.resume}"
    saved = read_json_or_none(f"{args.resume}/{STUDY_FILE}")
    if not isinstance(saved, dict):
        fail(f"{what}: holds no study to resume (no readable {STUDY_FILE})")
    if saved.get("script") != name or not set(vars(args)) - set(NOT_SETTINGS) <= set(saved):
        fail(f"{what}: holds a study of another script ({saved.get('script')}), not of this one ({name})")
    saved.pop("provenance", None)
    settings = check_resumed_flags(parser, argv, saved, what)
    if not isinstance(settings["epochs"], int) or settings["epochs"] < saved["epochs"]:
        fail(f"{what}: --epochs {settings['epochs']} is fewer than the study's {saved['epochs']}")
    return argparse.Namespace(**dict(vars(args), **settings, out=args.resume, settings=settings))


def save_study_args(args):
    """After --out is claimed: the study's settings (args.settings; a resumed one's with --epochs as given now)
    into STUDY_FILE, for --resume."""
    if files.WRITER:
        os.makedirs(os.path.dirname(f"{args.out}/{STUDY_FILE}"), exist_ok=True)
    write_json(f"{args.out}/{STUDY_FILE}", args.settings)
