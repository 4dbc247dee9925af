"""The README and docs/ against the scripts: every command a learner is shown must start as written.

Each ```bash block of README.md and docs/*.md is read; for every `python SCRIPT ARGS` command
the script must exist and its argument parser must accept ARGS (the parser runs, then the test
stops the script: nothing trains). A renamed or removed flag then fails here, not for a learner.
The commands must also run on a learner's clone: no ../shared, and nothing written into results/
(results/regenerate.py does that, with the same commands: checked here too). The commands the docs
show failing on purpose run for real, in a copy of the scripts: status 2, one line, no traceback.
"""
import argparse
import glob
import os
import re
import runpy
import shlex
import sys

import pytest

from conftest import ROOT

DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


EXPECTED_ERROR = "# exits with status 2"  # a doc's comment on a command that shows a bad input on purpose


def bash_commands(path, expected_errors=False):
    """-> [(line number, argv)] of the commands in the file's ```bash blocks, continuations joined.

    With expected_errors, only the commands whose line ends with EXPECTED_ERROR; else only the others.
    """
    commands, block, pending, start = [], False, "", 0
    with open(path) as f:
        for number, line in enumerate(f, 1):
            stripped = line.strip()
            if stripped.startswith("```"):
                block = stripped == "```bash" if not block else False
                continue
            if not block or (not pending and (not stripped or stripped.startswith("#"))):
                continue
            start = start if pending else number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            if stripped.endswith(EXPECTED_ERROR) == expected_errors:
                commands.append((start, shlex.split(pending + stripped, comments=True)))
            pending = ""
    return commands


ALL_COMMANDS = [(os.path.relpath(doc, ROOT), number, argv) for doc in DOCS for number, argv in bash_commands(doc)]
BAD_INPUT_COMMANDS = [(os.path.relpath(doc, ROOT), number, argv) for doc in DOCS
                      for number, argv in bash_commands(doc, expected_errors=True)]
PYTHON_COMMANDS = [c for c in ALL_COMMANDS if c[2][0] == "python" and c[2][1:2] != ["-m"]]


class Parsed(Exception):
    """Raised instead of running the script, once its arguments are parsed."""

    def __init__(self, namespace):
        self.namespace = namespace


def parse_only(monkeypatch, argv):
    """Run script argv[1] with argv[2:] as `python` would, up to its parse_args -> the namespace.

    A usage error fails the test (argparse exits with status 2 and says why on stderr).
    """
    real_parse_args = argparse.ArgumentParser.parse_args

    def parse_and_stop(parser, args=None, namespace=None):
        raise Parsed(real_parse_args(parser, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr(sys, "argv", argv[1:])
    monkeypatch.chdir(ROOT)
    with pytest.raises(Parsed) as parsed:
        runpy.run_path(os.path.join(ROOT, argv[1]), run_name="__main__")
    return parsed.value.namespace


def test_the_docs_show_commands():
    assert len(PYTHON_COMMANDS) >= 10, ALL_COMMANDS
    scripts = {argv[1] for _, _, argv in PYTHON_COMMANDS}
    for script in ("mlp_mnist.py", "compare_optimizers.py", "tune_optimizers.py", "optimizer_paths.py",
                   "sharpness.py", "step_sizes.py", "verify_vectors.py", "benchmarks/train_speed.py"):
        assert script in scripts, f"no doc shows {script}"


@pytest.mark.parametrize("doc, line, argv", ALL_COMMANDS, ids=[f"{d}:{n}" for d, n, _ in ALL_COMMANDS])
def test_command_names_only_what_a_learners_clone_has(doc, line, argv):
    """No path that only this project's CI has, and every file a command names exists."""
    assert not any("../shared" in arg for arg in argv), f"{doc}:{line}: ../shared exists only beside CI"
    if argv[0] == "pip":
        for i, arg in enumerate(argv):
            if arg == "-r":
                assert os.path.isfile(os.path.join(ROOT, argv[i + 1])), f"{doc}:{line}: no {argv[i + 1]}"
    elif argv[:3] == ["python", "-m", "pytest"]:
        pass
    else:
        assert argv[0] == "python" and os.path.isfile(os.path.join(ROOT, argv[1])), f"{doc}:{line}: {argv}"


@pytest.mark.parametrize("doc, line, argv", PYTHON_COMMANDS, ids=[f"{d}:{n}" for d, n, _ in PYTHON_COMMANDS])
def test_the_script_accepts_the_arguments(doc, line, argv, monkeypatch):
    with open(os.path.join(ROOT, argv[1])) as f:
        if "argparse" not in f.read():  # docs/minimal_loop.py takes no arguments (tests/test_minimal_loop.py runs it)
            assert argv[2:] == [], f"{doc}:{line}: {argv[1]} takes no arguments"
            return
    namespace = parse_only(monkeypatch, argv)
    for flag in ("out", "plot", "json_out"):
        target = getattr(namespace, flag, None)
        if isinstance(target, str):
            assert not os.path.normpath(target).startswith("results"), (
                f"{doc}:{line}: writes into results/, which is committed: use runs/ (results/regenerate.py "
                f"writes results/)")


@pytest.mark.parametrize("doc, line, argv", BAD_INPUT_COMMANDS, ids=[f"{d}:{n}" for d, n, _ in BAD_INPUT_COMMANDS])
def test_a_command_shown_failing_fails_with_status_2_or_parses(doc, line, argv, monkeypatch):
    """A command the docs show failing on purpose: its script exists, and if argparse refuses it, with
    status 2 (a bad --data-dir, say, is refused later, when the data is read: tests/test_errors.py)."""
    assert os.path.isfile(os.path.join(ROOT, argv[1])), f"{doc}:{line}: no {argv[1]}"
    try:
        parse_only(monkeypatch, argv)
    except SystemExit as exit_info:
        assert exit_info.code == 2


def test_a_missing_flag_is_caught(monkeypatch):
    """The check can fail: a flag no parser knows ends in a usage error."""
    with pytest.raises(SystemExit) as exit_info:
        parse_only(monkeypatch, ["python", "mlp_mnist.py", "--no-such-flag"])
    assert exit_info.value.code == 2


def without_output(argv):
    """argv without its --out DIR, and with --compare's two folders as "A" and "B": where a command writes, and
    so where a later one reads it, is all that regenerate changes."""
    argv = list(argv)
    if "--out" in argv:
        i = argv.index("--out")
        del argv[i:i + 2]
    if "--compare" in argv:
        i = argv.index("--compare")
        argv[i + 1:i + 3] = ["A", "B"]
    return argv


def test_regenerate_runs_the_docs_own_commands():
    sys.path.insert(0, os.path.join(ROOT, "results"))
    try:
        import regenerate
    finally:
        sys.path.pop(0)
    shown = {tuple(without_output(argv)) for _, _, argv in ALL_COMMANDS}
    for name, (minutes, steps) in regenerate.PARTS.items():
        assert minutes > 0
        for step in steps:
            assert tuple(without_output(step["argv"])) in shown, f"part {name}: {step['argv']} is in no doc"
            assert step["out"].startswith("results/")


@pytest.mark.parametrize("text, argv", [
    ("```bash\npython a.py --x 1   # note\n```\n", [["python", "a.py", "--x", "1"]]),
    ("```bash\n# a comment\npython a.py \\\n  --x 1 \\\n  --y 2\n```\npython not-in-a-block.py\n",
     [["python", "a.py", "--x", "1", "--y", "2"]]),
    ("```\npython plain-block.py\n```\n```bash\npip install -r r.txt\n```\n", [["pip", "install", "-r", "r.txt"]]),
])
def test_bash_blocks_are_read_as_a_shell_would(tmp_path, text, argv):
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    assert [a for _, a in bash_commands(str(doc))] == argv


def quoted_code(path):
    """-> [(line number, file quoted, [lines])] of the ```python blocks that start with '# from FILE' (or
    '# from FILE: what it is', when one file is quoted twice)."""
    quotes, current = [], None
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip() == "```python":
                current = [number, None, []]
            elif line.strip() == "```" and current is not None:
                if current[1]:
                    quotes.append(tuple(current))
                current = None
            elif current is not None:
                match = re.fullmatch(r"# from ([^\s:]+)(?:: .+)?", line.strip())  # "# from FILE" or "# from FILE: what"
                if current[1] is None and match and not current[2]:
                    current[1] = match.group(1)
                elif line.strip():
                    current[2].append(line.rstrip("\n"))
    return quotes


QUOTES = [(os.path.relpath(doc, ROOT), *quote) for doc in DOCS for quote in quoted_code(doc)]


@pytest.mark.parametrize("doc, line, source, lines", QUOTES, ids=[f"{q[0]}:{q[1]}" for q in QUOTES])
def test_quoted_code_is_the_real_code(doc, line, source, lines):
    """A block that says '# from mlp_mnist.py' quotes that file: every line is in it, in that order."""
    with open(os.path.join(ROOT, source)) as f:
        real = [l.rstrip("\n") for l in f]
    position = 0
    for quoted in lines:
        found = next((i for i in range(position, len(real)) if real[i] == quoted), None)
        assert found is not None, f"{doc}:{line}: {quoted.strip()!r} is not in {source} (after line {position})"
        position = found + 1


def test_the_docs_quote_the_training_loop():
    assert any(source == "mlp_mnist.py" for _, _, source, _ in QUOTES)
