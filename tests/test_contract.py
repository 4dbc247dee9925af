"""One contract for every script (docs/A3-errors.md): the same flags, the same exits, nothing you had is lost.

Every script's main runs here, in this process, through exits.run_script (what its __main__ runs), on
small fake MNIST folders:
- a disk that is full from the first file written: exit 2, one line on stderr, no traceback;
- Ctrl-C (KeyboardInterrupt) from the script's first jitted call: exit 130; and from a later call, after
  part of the work is done: exit 130 with that part written, marked as partial or interrupted;
and across all nine parsers: a flag two scripts share has one type, one default and one help text; every
flag's help gives its default, and the chapter of the script names the flag. tests/test_errors.py keeps
one Ctrl-C sent as a real signal to a real process.
"""
import argparse
import json
import os
import re
import sys

import jax
import pytest

import checkpoint
import compare_optimizers
import mlp_mnist
import optimizer_paths
import predict
from plumbing import cli, exits, files
import sharpness
import step_sizes
import train_utils
import tune_optimizers
import verify_vectors
from conftest import ROOT, run_script

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import train_speed  # noqa: E402

MODULES = {"mlp_mnist.py": mlp_mnist, "compare_optimizers.py": compare_optimizers, "tune_optimizers.py": tune_optimizers,
           "optimizer_paths.py": optimizer_paths, "step_sizes.py": step_sizes, "sharpness.py": sharpness,
           "verify_vectors.py": verify_vectors, "benchmarks/train_speed.py": train_speed, "predict.py": predict}
WRITERS = [script for script in MODULES if script != "predict.py"]  # predict.py only reads and prints
CHAPTERS = {"mlp_mnist.py": "01-model-and-loss.md", "compare_optimizers.py": "04-mnist-comparison.md",
            "tune_optimizers.py": "06-fair-comparison.md", "optimizer_paths.py": "03-paths-and-theory.md",
            "step_sizes.py": "05-rmsprop-and-adam.md", "sharpness.py": "07-sharpness.md",
            "verify_vectors.py": "A1-timing.md", "benchmarks/train_speed.py": "A2-speed.md",
            "predict.py": "08-save-resume-predict.md"}


@pytest.fixture
def small(monkeypatch):
    """Make the scripts' fixed workloads small: one setting each, short runs, rough matmul rates."""
    monkeypatch.setattr(step_sizes, "SETTINGS", [("sgd lr=0.01", "sgd", dict(lr=0.01), None),
                                                 ("adam lr=0.001", "adam", dict(lr=0.001), None)])
    monkeypatch.setattr(step_sizes, "DEAD_IMAGES", 100)
    monkeypatch.setattr(sharpness, "PIXELS_STEPS", 2)
    monkeypatch.setattr(sharpness, "ADAM_SETTINGS", (dict(lr=0.001, eps=0.01),))
    monkeypatch.setattr(sharpness, "ADAM_EVERY", 1)
    monkeypatch.setattr(sharpness, "INIT_MAX_ITER", 5)
    monkeypatch.setattr(sharpness, "TRACE_MAX_ITER", 3)
    monkeypatch.setattr(optimizer_paths, "KAPPAS", (10,))
    monkeypatch.setattr(optimizer_paths, "RATE_STEPS", 200)
    real_rate = train_speed.matmul_rate
    monkeypatch.setattr(train_speed, "matmul_rate", lambda m, k, n, seconds=0: real_rate(m, k, n, seconds=0.005))


def argv_of(script, fake_dir, out):
    """The small command line of each script, into `out` (predict.py: of a model it saves beside `out`)."""
    if script == "predict.py":
        model = out.parent / "model"
        os.makedirs(model, exist_ok=True)
        checkpoint.save(model / "model.npz", {"params": train_utils.init_params(jax.random.key(0))},
                        dict(kind="ML_in_JAX model", layer_sizes=list(train_utils.LAYER_SIZES)))
        return [str(model), "--data-dir", fake_dir]
    data = ["--data-dir", fake_dir, "--out", str(out)]
    return {"mlp_mnist.py": ["--epochs", "2"] + data,
            "compare_optimizers.py": ["--configs", "sgd", "adam", "--seeds", "0", "--epochs", "1"] + data,
            "tune_optimizers.py": ["--optimizers", "sgd", "momentum", "--lrs", "0.01", "0.1", "--seeds", "0",
                                   "--report-seeds", "1", "--epochs", "1", "--val-size", "100"] + data,
            "optimizer_paths.py": ["--out", str(out)],
            "step_sizes.py": ["--steps", "2"] + data,
            "sharpness.py": ["--train-subset", "64", "--full-batch-steps", "2", "--every", "1", "--gd-lrs", "0.01"] + data,
            "verify_vectors.py": ["--sizes", "100", "200", "--seconds-per-config", "0.001", "--out", str(out)],
            "benchmarks/train_speed.py": ["--timed-epochs", "1", "--vmap-models", "2", "--pytorch-threads", "1"]
            + data}[script]


# (module, attribute) of each script's first jitted call, and of a later call that comes after part of
# its work is done -> the file that must then hold that part, and how it says it is partial.
FIRST_JITTED = {"mlp_mnist.py": (mlp_mnist, "train_step"), "compare_optimizers.py": (mlp_mnist, "train_step"),
                "tune_optimizers.py": (mlp_mnist, "train_step"), "optimizer_paths.py": (optimizer_paths, "trajectory"),
                "step_sizes.py": (mlp_mnist, "train_step"), "sharpness.py": (sharpness, "flat_hvp"),
                "verify_vectors.py": (verify_vectors, "square_donated"),
                "benchmarks/train_speed.py": (train_speed, "matmul_rate"),
                "predict.py": (mlp_mnist, "predicted_digits")}
LATER = {  # script -> (module, attribute, calls before the interrupt, file, check of what it holds)
    "mlp_mnist.py": (mlp_mnist, "train_step", 3, "metrics.json",
                     lambda d: d["status"] == "interrupted" and d["completed_epochs"] == 1),  # 3 steps an epoch
    "compare_optimizers.py": (mlp_mnist, "train_step", 3, "summary.json",
                              lambda d: d["status"] == "interrupted" and d["runs"][0]["status"] == "completed"),
    "tune_optimizers.py": (mlp_mnist, "train_step", 6, "summary.json",  # sgd's 2 lrs done, momentum's not
                           lambda d: d["status"] == "interrupted" and list(d["grid"]) == ["sgd"]),
    "step_sizes.py": (mlp_mnist, "train_step", 2, "step_sizes.json",
                      lambda d: d["status"] == "interrupted" and len(d["settings"]) == 1),
    "sharpness.py": (sharpness, "train_steps", 2, "sharpness.json",  # the first trace done, the second not
                     lambda d: d["status"] == "partial" and len(d["runs"]) == 1 and len(d["init"]) == 3),
    "verify_vectors.py": (verify_vectors, "measure_size", 1, "results.json",  # size 100 timed, 200 not
                          lambda d: d["status"] == "partial" and [r["size"] for r in d["results"]] == [100]),
    "benchmarks/train_speed.py": (train_speed.many_models, "train_many", 0, "train_speed.json",
                                  lambda d: d["status"] == "partial" and "loader_alone_epoch_s" in d),
    "benchmarks/train_speed.py, in a training epoch": (
        mlp_mnist, "train_step", 4, "train_speed.json",  # the loop catches it: the benchmark must still stop
        lambda d: d["status"] == "partial" and "matmul_gflops" in d and "torch_loader_epoch_s" not in d),
}


def interrupt_after(monkeypatch, module, attribute, calls):
    """Make module.attribute raise KeyboardInterrupt on its (calls + 1)-th call; .lower still compiles."""
    real, count = getattr(module, attribute), [0]

    class Interrupting:
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, *args, **kwargs):
            count[0] += 1
            if count[0] > calls:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

    monkeypatch.setattr(module, attribute, Interrupting())


@pytest.mark.parametrize("script", WRITERS)
def test_a_full_disk_ends_with_one_line_and_status_2(script, fake_dir, tmp_path, small, monkeypatch, capsys):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.tempfile, "mkstemp", disk_full)  # every file plumbing writes starts here
    status, _, lines = run_script(MODULES[script].main, argv_of(script, fake_dir, tmp_path / "out"), capsys)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: cannot write") and "No space left on device" in lines[0], lines
    assert "nothing was saved" in lines[0] or "written before" in lines[0] or "holds" in lines[0], lines


@pytest.mark.parametrize("script", list(MODULES))
def test_ctrl_c_at_the_first_jitted_call_exits_130(script, fake_dir, tmp_path, small, monkeypatch, capsys):
    module, attribute = FIRST_JITTED[script]
    interrupt_after(monkeypatch, module, attribute, 0)
    status, _, lines = run_script(MODULES[script].main, argv_of(script, fake_dir, tmp_path / "out"), capsys)
    assert status == 130 and lines and "interrupted" in lines[-1], lines


@pytest.mark.parametrize("case", list(LATER))
def test_ctrl_c_after_part_of_the_work_keeps_that_part(case, fake_dir, tmp_path, small, monkeypatch, capsys):
    module, attribute, calls, name, holds = LATER[case]
    script = case.split(",")[0]
    interrupt_after(monkeypatch, module, attribute, calls)
    out = tmp_path / "out"
    status, _, lines = run_script(MODULES[script].main, argv_of(script, fake_dir, out), capsys)
    assert status == 130 and "interrupted" in lines[-1], lines
    written = json.loads((out / name).read_text())
    assert holds(written), written.get("status")
    assert written["provenance"]["command"].startswith("python " + script)


# --- One set of flags -----------------------------------------------------------------------------


class Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def parser_of(script, monkeypatch):
    """The argparse parser a script's main builds (it is stopped at parse_args)."""
    def stop(parser, args=None, namespace=None):
        raise Parsed(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(Parsed) as parsed:
        MODULES[script].main([])
    monkeypatch.undo()
    return parsed.value.parser


@pytest.fixture(scope="module")
def parsers():
    monkeypatch = pytest.MonkeyPatch()
    found = {script: parser_of(script, monkeypatch) for script in MODULES}
    return {script: {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.dest != "help"}
            for script, parser in found.items()}


def test_a_flag_several_scripts_take_is_the_same_flag_everywhere(parsers):
    """Same type, same default (but for cli.OWN_DEFAULTS, each with its reason), same help, same choices."""
    shared = {flag for script in parsers for flag in parsers[script]
              if sum(flag in flags for flags in parsers.values()) > 1}
    assert {"--epochs", "--seed", "--seeds", "--train-subset", "--val-size", "--loader", "--vmap", "--data-dir",
            "--out", "--json"} <= shared
    for flag in shared:
        takers = [script for script in parsers if flag in parsers[script]]
        first = parsers[takers[0]][flag]
        for script in takers[1:]:
            action = parsers[script][flag]
            assert (type(action), action.type, action.choices, action.nargs, action.metavar) == (
                type(first), first.type, first.choices, first.nargs, first.metavar), (flag, script)
            if (script, flag) not in cli.OWN_DEFAULTS and (takers[0], flag) not in cli.OWN_DEFAULTS:
                assert (action.default, action.help) == (first.default, first.help), (flag, script)


def rendered_help(action):
    """The help text as --help prints it: %(default)s and the like filled in."""
    return action.help % dict(vars(action), prog="script")


@pytest.mark.parametrize("script, flag", sorted(cli.OWN_DEFAULTS))
def test_a_flag_with_its_own_default_names_that_default_and_why(script, flag, parsers):
    """sharpness.py's --train-subset is 2000, not the shared "all of them": its help must say 2000, and the reason."""
    action = parsers[script][flag]
    shared = cli.SHARED_FLAGS[flag]
    assert action.default != shared.get("default"), (script, flag)
    assert f"(default: {action.default}" in rendered_help(action), (script, flag, rendered_help(action))


def test_the_image_count_and_vmap_flags_have_one_name(parsers):
    every = {flag for flags in parsers.values() for flag in flags}
    assert not {"--n-images", "--vmap-seeds", "--no-vmap", "--seconds", "--epochs-timed", "--torch-threads"} & every
    assert "--train-subset" in parsers["sharpness.py"] and "--timed-epochs" in parsers["benchmarks/train_speed.py"]


@pytest.mark.parametrize("script", list(MODULES))
def test_every_flag_gives_its_default_and_is_in_its_chapter(script, parsers):
    with open(os.path.join(ROOT, "docs", CHAPTERS[script])) as f:
        chapter = f.read()
    for flag, action in parsers[script].items():
        assert action.help and "default" in action.help, (script, flag)
        if isinstance(action.default, (int, float, str)) and not isinstance(action.default, bool):
            # a single value: --help must show that value, not some other (a list may be shown in its own words)
            assert f"{action.default}" in rendered_help(action), (script, flag, rendered_help(action))
        assert re.search(re.escape(flag) + r"(?![\w-])", chapter), f"docs/{CHAPTERS[script]} never names {flag}"


def test_docs_10_lists_every_exit_status():
    """Every status a script's --help promises is in docs/10's table, and no other."""
    with open(os.path.join(ROOT, "docs", "A3-errors.md")) as f:
        table = {int(m) for m in re.findall(r"^\| (\d+) \|", f.read(), flags=re.M)}
    promised = {0}
    monkeypatch = pytest.MonkeyPatch()
    for script in MODULES:  # what --help prints (the parser's epilog), not what the file's text happens to hold
        help_text = parser_of(script, monkeypatch).format_help()
        lines = re.findall(r"Exit status: (.+)", " ".join(help_text.split()))
        assert len(lines) == 1, f"{script} --help does not say its exit statuses"
        promised |= {int(n) for n in re.findall(r"\b(\d+) (?:done|bad|the|interrupted)", lines[0])}
    assert promised == table == {0, 2, 3, 4, 5, 130}
    assert {exits.EXIT_BAD_INPUT, exits.EXIT_DIVERGED, exits.EXIT_CHECK_FAILED, exits.EXIT_PROCESS_LOST,
            exits.EXIT_INTERRUPTED} <= table


def test_no_script_uses_assert_for_control_flow():
    for module in MODULES.values():
        with open(module.__file__) as f:
            assert not re.search(r"^\s+assert ", f.read(), flags=re.M), module.__file__
