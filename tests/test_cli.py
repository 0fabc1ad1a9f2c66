import subprocess
import sys

from conftest import REPO_ROOT

STAGE = '''
import atexit, threading, time
from mnist_pipeline.cli import run_stage

def main():
    print("buffered output", end="")  # no newline, no flush: the exit must flush it
    atexit.register(lambda: open(OUT + "/atexit", "w").write("ran"))
    def late():
        time.sleep(0.3)
        open(OUT + "/thread", "w").write("finished")
    threading.Thread(target=late).start()  # not a daemon: the exit waits for it

run_stage(main)
'''


def test_a_successful_stage_exits_0_after_its_threads_exit_handlers_and_output(tmp_path):
    done = subprocess.run([sys.executable, "-c", f"OUT = {str(tmp_path)!r}\n" + STAGE],
                          env={"PYTHONPATH": str(REPO_ROOT / "src")}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "buffered output"
    assert (tmp_path / "thread").read_text() == "finished"
    assert (tmp_path / "atexit").read_text() == "ran"


def test_a_failing_stage_exits_2_with_one_line():
    stage = ("from mnist_pipeline.cli import run_stage\nfrom mnist_pipeline.errors import PipelineError\n"
             "def main():\n    raise PipelineError('lr: got -1.0; must be > 0.0')\nrun_stage(main)\n")
    done = subprocess.run([sys.executable, "-c", stage], env={"PYTHONPATH": str(REPO_ROOT / "src")},
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (2, "error: lr: got -1.0; must be > 0.0\n", "")


FORKING_STAGE = '''
import os
from mnist_pipeline.cli import in_forked_process, run_stage
from mnist_pipeline.errors import PipelineError

def child_pid(fail):
    if fail:
        raise PipelineError("plots.cmap: 'Blu' is not a colormap")
    return os.getpid()

def main():
    with in_forked_process(child_pid, FAIL) as child:
        print("parent goes on;", end=" ")  # before the child's result is asked for
        print("child ran elsewhere:", child.result() != os.getpid())

run_stage(main)
'''


def test_in_forked_process_runs_the_function_in_a_child_and_brings_its_result_back():
    done = subprocess.run([sys.executable, "-c", "FAIL = False\n" + FORKING_STAGE],
                          env={"PYTHONPATH": str(REPO_ROOT / "src")}, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "parent goes on; child ran elsewhere: True\n", "")


def test_an_error_in_the_forked_child_is_the_stages_one_line_error():
    done = subprocess.run([sys.executable, "-c", "FAIL = True\n" + FORKING_STAGE],
                          env={"PYTHONPATH": str(REPO_ROOT / "src")}, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (2, "error: plots.cmap: 'Blu' is not a colormap\n")
