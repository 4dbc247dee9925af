"""docs/debugging.py, the demos of docs/09-when-it-goes-wrong.md: each runs as a learner runs it, on synthetic
data, ends with status 0 and prints the line the chapter tells the learner to look for; every line of output
the chapter shows is in the demo's real output (on the CPU), and what its "Try this" says is checked."""
import importlib.util
import os
import re
import subprocess
import sys

import jax
import pytest

from conftest import ROOT

DEMO = os.path.join(ROOT, "docs", "debugging.py")
CHAPTER = os.path.join(ROOT, "docs", "09-when-it-goes-wrong.md")
SECTIONS = {"1": "nans", "2": "print", "3": "tracer", "4": "jaxpr", "5": "profile"}  # "## 1. ..." shows `nans`


def run_demo(*argv, cwd=ROOT):
    """Run the demo as `python docs/debugging.py ARGV` does, on the CPU, where the chapter's outputs come from."""
    result = subprocess.run([sys.executable, DEMO, *argv], capture_output=True, text=True, cwd=cwd, timeout=300,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def shown_outputs():
    """-> {demo: [[line, ...] for each plain ``` block of its section of the chapter]}: the outputs it shows."""
    shown, demo, block = {name: [] for name in SECTIONS.values()}, None, None
    with open(CHAPTER) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("## ") and block is None:  # a section: "## 1. ..." to "## 5. ...", or another
                demo = SECTIONS.get(line[3:].split(".")[0])
            elif line.startswith("```"):
                if block is not None:  # the end of a block
                    if block[0] == "" and demo:
                        shown[demo].append(block[1])
                    block = None
                else:
                    block = (line[3:].strip(), [])
            elif block is not None:
                block[1].append(line.rstrip())
    return shown


PLACEHOLDERS = {"YYYY_MM_DD_hh_mm_ss": r"\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}", "HOST": r"[^/\s]+",
                r"\bN\b": r"\d+", r"\bM\b": r"[1-9]\d*"}  # in section 5 only: what changes between runs


def pattern(shown_line, demo):
    """A line the chapter shows -> the regex a line of real output must match ("..., ..." ends in anything)."""
    text, rest = (shown_line[:-5], ", .*") if shown_line.endswith(", ...") else (shown_line, "")
    regex = re.escape(text)
    if demo == "profile":
        for placeholder, what in PLACEHOLDERS.items():
            regex = re.sub(placeholder, what.replace("\\", "\\\\"), regex)
    return regex + rest


def assert_shown_in(out, demo, blocks, ordered=True):
    """Every line of every block is a line of `out`; with `ordered`, a block's lines in the block's order."""
    real = [line.rstrip() for line in out.splitlines()]
    for block in blocks:
        position = 0
        for shown_line in block:
            if shown_line.strip() in ("", "..."):  # "..." marks lines left out
                continue
            regex = pattern(shown_line, demo)
            found = next((i for i in range(position if ordered else 0, len(real)) if re.fullmatch(regex, real[i])),
                         None)
            assert found is not None, f"the chapter shows {shown_line!r}; `{demo}` printed:\n{out}"
            position = found + 1 if ordered else 0


def test_the_chapter_shows_an_output_for_every_demo():
    shown = shown_outputs()
    assert [len(shown[demo]) for demo in SECTIONS.values()] == [4, 1, 1, 2, 1], shown


@pytest.mark.parametrize("demo", ["nans", "print", "tracer", "jaxpr"])
def test_the_chapters_outputs_are_the_demos_real_output(demo):
    assert_shown_in(run_demo(demo), demo, shown_outputs()[demo])


def test_the_chapters_profiler_output_is_the_demos_real_output(tmp_path):
    """Run from a clone's root as the chapter's command does (here a temporary one): it prints runs/profile/..."""
    out = run_demo("profile", "--out", os.path.join("runs", "profile"), cwd=tmp_path)
    assert_shown_in(out, "profile", shown_outputs()["profile"], ordered=False)  # sorted by the host's name too


def load_demo_module():
    """docs/debugging.py as a module, its functions replaceable (its main part not run)."""
    spec = importlib.util.spec_from_file_location("debugging_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRY_LOG_SOFTMAX = r"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("debugging_demo", sys.argv[1])
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)
demo.textbook_loss = demo.stable_loss  # the "Try this" edit
demo.nans(None)
"""


def test_try_this_log_softmax_finds_its_nan_at_step_5_in_sub():
    """The first "Try this": textbook_loss with log_softmax (stable_loss) -> four steps, then the NaN, in sub.
    In a fresh process, as a learner runs it: jax_debug_nans turned on after other jitted work in the same
    process (this test process's) does not catch the NaN."""
    result = subprocess.run([sys.executable, "-c", TRY_LOG_SOFTMAX, DEMO], capture_output=True, text=True, cwd=ROOT,
                            timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-2000:]
    first_part = result.stdout.split("The same steps")[0]
    assert re.findall(r"step (\d+): loss", first_part) == ["1", "2", "3", "4"], first_part
    assert "FloatingPointError: invalid value (nan) encountered in sub" in first_part
    assert "raised in stable_loss()" in first_part and "jax.nn.log_softmax" in first_part


def test_try_this_a_batch_of_8_has_the_same_equations_as_4():
    demo = load_demo_module()
    params = demo.train_utils.init_params(jax.random.key(0))
    counts = []
    for n in (4, 8):
        images, labels = demo.synthetic_batch(n=n)
        counts.append(len(jax.make_jaxpr(demo.sgd_step(demo.recipe_loss, 0.1))(params, images, labels).jaxpr.eqns))
    assert counts[0] == counts[1], counts


def test_debug_nans_names_the_operation_and_the_line():
    out = run_demo("nans")
    assert "FloatingPointError: invalid value (nan) encountered in mul" in out
    assert "raised in textbook_loss()" in out and "jnp.log(probabilities)" in out
    recipe = out.split("Fix 2:")[1]  # the recipe's loss at its learning rate stays finite
    assert "nan" not in recipe and "inf" not in recipe and recipe.count("loss ") == 6


def test_debug_print_runs_every_step_and_python_print_once():
    out = run_demo("print")
    assert out.count("jax.debug.print, as the step runs: loss") == 3
    traced = [line for line in out.splitlines() if "Python's print" in line]
    assert len(traced) == 1 and "Tracer" in traced[0]


def test_a_python_if_on_a_tracer_fails_and_the_fixes_work():
    out = run_demo("tracer")
    assert "jax.jit(clip_with_if): TracerBoolConversionError" in out
    for fix in ("clip_with_where", "clip_with_cond"):
        assert f"jax.jit({fix}): norm after clipping 1.0000" in out
    assert "clip=True: norm 1.0000" in out and "clip=False: norm 1.0000" not in out


def test_make_jaxpr_shows_the_model():
    out = run_demo("jaxpr")
    assert "dot_general" in out and "f32[784,512]" in out and "log" in out
    assert "equations at its top level" in out


def test_the_profiler_writes_a_trace_outside_the_repository(tmp_path):
    out = run_demo("profile", "--out", str(tmp_path / "trace"))
    files = [os.path.join(folder, name) for folder, _, names in os.walk(tmp_path / "trace") for name in names]
    assert any(name.endswith(".xplane.pb") for name in files), files
    assert any(name.endswith("perfetto_trace.json.gz") for name in files), files
    calls = [line for line in out.splitlines() if "named PjitFunction(step)" in line]
    assert calls and int(calls[0].split(", ")[1].split()[0]) > 0, out

