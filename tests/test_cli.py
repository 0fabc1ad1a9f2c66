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
