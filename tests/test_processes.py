"""Several processes, one study (plumbing/processes.py, docs/A4-many-machines.md): two real processes on
localhost, each with JAX_NUM_CPU_DEVICES=2, against one process with 4 devices; a killed peer, a peer that never
joins, a mismatched command and Ctrl-C on process 0. The data is the small learnable fake MNIST, so nothing here
needs the real files."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT

import tune_optimizers
from plumbing import processes

STUDY = ["--vmap", "--optimizers", "sgd", "--lrs", "0.01", "0.1", "--seeds", "0", "--report-seeds", "1", "--epochs",
         "3", "--val-size", "200"]  # two phases, selection and report: 2 + 1 models on 400 training images
COMPARE = ["--vmap", "--configs", "sgd", "momentum", "nesterov", "rmsprop", "adam", "--seeds", "0", "1",
           "--epochs", "2", "--val-size", "200"]
WAIT = 240  # seconds any one process of these tests may take before the test fails


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(script, args, cwd, devices, **env):
    """Start `python script args` in cwd with `devices` CPU devices, in its own process group (as a terminal's
    job is), stdout and stderr piped."""
    return subprocess.Popen([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env=dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), PYTHONPATH=ROOT, **env))


def start_two(script, args, cwds, port=None, extra=((), ())):
    """Processes 0 and 1 of one study on localhost, each with 2 devices -> the two Popen objects."""
    layout = ["--coordinator", f"127.0.0.1:{port or free_port()}", "--num-processes", "2"]
    return [start(script, [*args, *layout, "--process-id", str(i), *extra[i]], cwds[i], 2) for i in range(2)]


def finish(process):
    """-> (exit status, stdout, stderr) once it ends, within WAIT seconds."""
    out, err = process.communicate(timeout=WAIT)
    return process.returncode, out, err


def without_seconds(summary):
    """A summary without what differs between two runs of the same study: seconds and provenance."""
    if isinstance(summary, dict):
        return {k: without_seconds(v) for k, v in summary.items() if "seconds" not in k and k != "provenance"}
    if isinstance(summary, list):
        return [without_seconds(v) for v in summary]
    return summary


def read_summary(folder):
    with open(os.path.join(folder, "summary.json")) as f:
        return json.load(f)


def one_line_error(err, status_text):
    """stderr holds no traceback and ends with one line that starts with status_text."""
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(status_text), err


def complete_files(folder):
    """Every file under folder, none of them a temporary (half-written) one."""
    found = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]
    assert not [f for f in found if f.endswith(".tmp")], found
    return found


@pytest.fixture(scope="module")
def one_process_tune(learnable_dir, tmp_path_factory):
    """The tuning study in one process with 4 devices -> its folder."""
    folder = tmp_path_factory.mktemp("one")
    status, out, err = finish(start("tune_optimizers.py", [*STUDY, "--data-dir", learnable_dir, "--out", "study"],
                                    folder, 4))
    assert status == 0, err
    return str(folder / "study")


def test_two_processes_write_the_one_process_summary(learnable_dir, tmp_path):
    """compare_optimizers.py --vmap, all five optimizers: 2 processes x 2 devices give the summary of 1 process x 4
    devices, every number bit for bit (nothing is summed across processes), and only process 0 writes: process 1,
    in a folder of its own with the same relative --out, leaves it empty. (tune_optimizers.py: the next test.)"""
    cwds = [tmp_path / "process0", tmp_path / "process1", tmp_path / "one"]
    for folder in cwds:
        folder.mkdir()
    args = [*COMPARE, "--data-dir", learnable_dir, "--out", "study"]
    two = start_two("compare_optimizers.py", args, cwds[:2])
    (status0, out0, err0), (status1, out1, err1) = finish(two[0]), finish(two[1])
    assert (status0, status1) == (0, 0), err0 + err1
    assert os.listdir(cwds[1]) == []  # process 1 wrote nothing, not even its --out folder
    assert "process 1 of 2" in out1 and "== " not in out1  # process 0 alone prints the study
    status, _, err = finish(start("compare_optimizers.py", args, cwds[2], 4))
    assert status == 0, err
    two_processes, one_process = read_summary(cwds[0] / "study"), read_summary(cwds[2] / "study")
    assert without_seconds(two_processes) == without_seconds(one_process)
    assert two_processes["provenance"]["device"]["processes"] == 2
    assert two_processes["provenance"]["device"]["count"] == 4
    assert "processes" not in one_process["provenance"]["device"]


def test_a_killed_peer_stops_the_study_and_resume_finishes_it(learnable_dir, one_process_tune, tmp_path):
    """Process 1 killed (SIGKILL, its whole group) after process 0's first epoch: process 0 stops within seconds,
    one line and exit status 5, its files complete; the same command with --resume, in two processes again, then
    ends where the study would have ended had it never stopped: the summary of one process with 4 devices."""
    study = str(tmp_path / "study")  # one folder both processes see, as a cluster's shared file system
    args = [*STUDY, "--data-dir", learnable_dir, "--out", study]
    process0, process1 = start_two("tune_optimizers.py", args, [tmp_path, tmp_path])
    first_line = process0.stdout.readline()
    while first_line and not first_line.lstrip().startswith("0      1"):  # model 0, epoch 1
        first_line = process0.stdout.readline()
    os.killpg(process1.pid, signal.SIGKILL)
    killed = time.monotonic()
    status, _, err = finish(process0)
    assert status == processes.EXIT_PROCESS_LOST
    assert time.monotonic() - killed < 30
    one_line_error(err, "error: process 0: another process of the study stopped or cannot be reached")
    process1.communicate()
    assert read_summary(study)["status"] == "interrupted"
    complete_files(study)
    resumed = start_two("tune_optimizers.py", ["--resume", study, "--data-dir", learnable_dir], [tmp_path, tmp_path])
    ends = [finish(p) for p in resumed]
    assert [status for status, _, _ in ends] == [0, 0], ends[0][2] + ends[1][2]
    assert without_seconds(read_summary(study)) == without_seconds(read_summary(one_process_tune))


def test_ctrl_c_on_process_0_keeps_what_finished(learnable_dir, tmp_path):
    """Ctrl-C (SIGINT to its process group, as a terminal sends it) on process 0: it writes what finished and exits
    130, as one process does; process 1 then stops with exit status 5."""
    args = [*STUDY, "--data-dir", learnable_dir, "--out", str(tmp_path / "study")]
    process0, process1 = start_two("tune_optimizers.py", args, [tmp_path, tmp_path])
    line = process0.stdout.readline()
    while line and not line.lstrip().startswith("0      1"):
        line = process0.stdout.readline()
    os.killpg(process0.pid, signal.SIGINT)
    (status0, _, err0), (status1, _, err1) = finish(process0), finish(process1)
    assert (status0, status1) == (130, processes.EXIT_PROCESS_LOST), err0 + err1
    one_line_error(err0, "interrupted:")
    one_line_error(err1, "error: process 1: another process of the study stopped")
    assert read_summary(tmp_path / "study")["status"] == "interrupted"
    complete_files(tmp_path / "study")


def test_a_peer_that_never_joins_ends_the_wait(learnable_dir, tmp_path):
    """Process 0 alone, process 1 never started: after --join-timeout (and the runtime's own end), one line, exit
    status 5, and no --out folder."""
    started = time.monotonic()
    process0 = start("tune_optimizers.py", [*STUDY, "--data-dir", learnable_dir, "--out", "study", "--coordinator",
                                            f"127.0.0.1:{free_port()}", "--num-processes", "2", "--process-id", "0",
                                            "--join-timeout", "3"], tmp_path, 2)
    status, _, err = finish(process0)
    assert status == processes.EXIT_PROCESS_LOST
    assert time.monotonic() - started < 60
    one_line_error(err, "error: process 0: the processes did not all join within 3 s; nothing was written")
    assert os.listdir(tmp_path) == []


def test_a_mismatched_command_is_refused(learnable_dir, tmp_path):
    """Process 1 given another --epochs: both refuse with one line, exit status 2."""
    args = [*STUDY, "--data-dir", learnable_dir, "--out", "study"]
    pair = start_two("tune_optimizers.py", args, [tmp_path, tmp_path], extra=((), ("--epochs", "4")))
    for i, process in enumerate(pair):
        status, _, err = finish(process)
        assert status == 2
        one_line_error(err, f"error: process {i}: the processes were given different settings")
    assert os.listdir(tmp_path) == []


def test_a_peer_that_fails_before_the_study_stops_the_others(learnable_dir, tmp_path):
    """Process 0's --out already holds files: it refuses (exit 2, as one process does), and process 1, waiting for
    it to be ready, stops with one line and exit status 5, no traceback."""
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "mine.txt").write_text("a file you had")
    args = [*STUDY, "--data-dir", learnable_dir, "--out", str(tmp_path / "study")]
    (status0, _, err0), (status1, _, err1) = [finish(p) for p in start_two("tune_optimizers.py", args,
                                                                           [tmp_path, tmp_path])]
    assert (status0, status1) == (2, processes.EXIT_PROCESS_LOST), err0 + err1
    one_line_error(err0, "error: --out")
    one_line_error(err1, "error: process 1: another process of the study stopped or cannot be reached; the study "
                         "stopped before it began")
    assert os.listdir(tmp_path / "study") == ["mine.txt"]


@pytest.mark.parametrize("flags, message", [
    (["--coordinator", "127.0.0.1:1234"], "go together"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "is not HOST:PORT"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "is not in 0 .. --num-processes - 1"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "0", "--join-timeout", "0"], ">= 1"),
])
def test_a_bad_layout_is_a_usage_error(flags, message, capsys):
    with pytest.raises(SystemExit) as end:
        tune_optimizers.main(["--vmap", *flags])
    assert end.value.code == 2
    assert message in capsys.readouterr().err


def test_several_processes_need_vmap(capsys):
    with pytest.raises(SystemExit) as end:
        tune_optimizers.main(["--coordinator", "h:1", "--num-processes", "2", "--process-id", "0"])
    assert end.value.code == 2
    assert "several processes need --vmap" in capsys.readouterr().err
