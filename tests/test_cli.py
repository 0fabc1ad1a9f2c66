import ast
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

STAGE = """
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
"""


def test_a_successful_stage_exits_0_after_its_threads_exit_handlers_and_output(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", f"OUT = {str(tmp_path)!r}\n" + STAGE], env={}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "buffered output"
    assert (tmp_path / "thread").read_text() == "finished"
    assert (tmp_path / "atexit").read_text() == "ran"


def test_a_failing_stage_exits_2_with_one_line():
    stage = (
        "from mnist_pipeline.cli import run_stage\nfrom mnist_pipeline.errors import PipelineError\n"
        "def main():\n    raise PipelineError('lr: got -1.0; must be > 0.0')\nrun_stage(main)\n"
    )
    done = subprocess.run([sys.executable, "-c", stage], env={}, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (2, "error: lr: got -1.0; must be > 0.0\n", "")


POOL_STAGE = """
from concurrent.futures import ThreadPoolExecutor
from mnist_pipeline.cli import run_stage

POOL = ThreadPoolExecutor(max_workers=1)  # kept, as MLflow keeps its asynchronous logging's pools

def main():
    # The pool's worker thread lives on until an exit handler of Python's own stops it: an exit that
    # joins the threads before that handler runs never ends.
    POOL.submit(print, "pool task ran").result()

run_stage(main)
"""


def test_a_live_thread_pool_does_not_hold_the_exit():
    done = subprocess.run([sys.executable, "-c", POOL_STAGE], env={}, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "pool task ran\n"), done.stderr


ASYNC_LOGGING_STAGE = """
import os
from mnist_pipeline.tracking import results, runs, store
from mnist_pipeline.cli import run_stage

def main():
    client, experiment_id = store.connect("async")
    with runs.training_run(experiment_id, {}) as run_id:
        for epoch in range(1, 51):
            runs.log_epoch({"train_loss": 1.0 / epoch}, epoch)
    # As the register stage reports to the finished training run.
    results.log_results("async", run_id, metrics={f"eval_accuracy_digit_{d}": 0.9 for d in range(10)})
    print(run_id)

run_stage(main)
"""


def test_a_stage_that_logs_asynchronously_exits_with_every_metric_stored(tmp_path):
    env = {"MLFLOW_ENABLE_ASYNC_LOGGING": "true", "DVC_ROOT": str(tmp_path), "PATH": os.environ["PATH"]}
    done = subprocess.run(
        [sys.executable, "-c", ASYNC_LOGGING_STAGE], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = done.stdout.strip().splitlines()[-1]
    assert len(client.get_metric_history(run_id, "train_loss")) == 50
    assert len([m for m in client.get_run(run_id).data.metrics if m.startswith("eval_accuracy_digit_")]) == 10


ENTRY_SCRIPTS = sorted((REPO_ROOT / "stages").glob("*.py")) + [REPO_ROOT / "predict.py", REPO_ROOT / "search.py"]


@pytest.mark.parametrize("script", ENTRY_SCRIPTS, ids=lambda p: p.name)
def test_the_quick_exit_is_the_first_exit_handler_registered(script):
    """Exit handlers run last-registered first: registered by the first of the project's imports in every entry
    script, before torch or MLflow exist in the process, the quick exit runs after all of theirs."""
    imports = [
        node
        for node in ast.walk(ast.parse(script.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mnist_pipeline")
    ]
    assert min(imports, key=lambda node: node.lineno).module == "mnist_pipeline.cli"
    probe = (
        "import sys; import mnist_pipeline.cli; "
        "print(sorted(m for m in ('torch', 'mlflow', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], env={}, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def test_the_packages_init_files_hold_only_a_docstring():
    """Importing one module never runs its siblings: no package's __init__.py imports anything. Each holds one
    docstring, not nothing, because DVC warns about an empty file among a stage's dependencies."""
    inits = sorted((REPO_ROOT / "src" / "mnist_pipeline").rglob("__init__.py"))
    bodies = [ast.parse(path.read_text()).body for path in inits]
    assert len(inits) == 5
    assert all(
        len(body) == 1
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
        for body in bodies
    )
