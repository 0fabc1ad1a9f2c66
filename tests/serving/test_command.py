from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.serving.command import main


def test_every_image_is_checked_before_the_model_loads(tmp_path, capsys):
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[4:24, 12:16] = 255  # a light "1" on black
    Image.fromarray(digit).save(tmp_path / "one.png")
    Image.new("L", (40, 40), 255).save(tmp_path / "digit.png")
    # The checkpoint does not exist: the blank image is what must be reported, before any model is read.
    with pytest.raises(PipelineError) as raised:
        main(["--checkpoint", str(tmp_path / "missing.pt"), str(tmp_path / "one.png"), str(tmp_path / "digit.png")])
    assert str(raised.value) == f"{tmp_path / 'digit.png'}: no digit found (the image is blank)"
    assert capsys.readouterr().out == ""


def test_a_missing_image_is_one_line_before_the_model_loads(tmp_path):
    with pytest.raises(PipelineError, match=r"nope.png: no such file$"):
        main(["--checkpoint", str(tmp_path / "missing.pt"), str(tmp_path / "nope.png")])


def test_predict_with_a_checkpoint_imports_no_mlflow(tmp_path):
    """The README says `predict.py --checkpoint` needs no MLflow: it must not even import it."""
    import subprocess
    import sys

    from conftest import REPO_ROOT, untrained_checkpoint

    untrained_checkpoint(tmp_path / "model.pt")
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[4:24, 12:16] = 255
    Image.fromarray(digit).save(tmp_path / "one.png")
    # The package first, as in a stage: its quick exit is the first exit handler, so the probe's runs before it.
    probe = (
        "import atexit, runpy, sys, mnist_pipeline.cli; "
        "atexit.register(lambda: print('mlflow loaded:', 'mlflow' in sys.modules)); "
        f"sys.argv = ['predict.py', '--checkpoint', {str(tmp_path / 'model.pt')!r}, {str(tmp_path / 'one.png')!r}]; "
        f"runpy.run_path({str(REPO_ROOT / 'predict.py')!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{tmp_path / 'one.png'}: " in done.stdout and "mlflow loaded: False" in done.stdout


def test_a_broken_file_is_one_line_and_exit_status_2_without_a_traceback(tmp_path):
    """The issue's PNG with a wrong chunk length: a 28-line SyntaxError traceback and exit status 1 before."""
    import subprocess
    import sys

    from conftest import REPO_ROOT
    from hostile_images import digit, encoded, with_chunk_length

    broken = tmp_path / "broken.png"
    broken.write_bytes(with_chunk_length(encoded(digit(), "PNG"), b"IDAT", 0))
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "predict.py"), "--checkpoint", str(tmp_path / "missing.pt"), str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": str(Path(sys.executable).parent)},
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"error: {broken}: not a readable image (broken PNG file (chunk b'")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_serve_listens_where_the_readme_says_by_default(monkeypatch):
    """`python predict.py --serve` is the champion at http://127.0.0.1:8000/ (the README's line): this machine only,
    port 8000. The server itself is driven end to end in test_server_e2e.py, on free ports."""
    from mnist_pipeline.serving import server

    started = []
    monkeypatch.setattr(server, "serve", lambda *args, **kwargs: started.append((args, kwargs)))
    main(["--serve"])
    assert started == [(("127.0.0.1", 8000), {"checkpoint": None, "mlflow_ui": None})]
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "python predict.py --serve " in readme and "the champion, at http://127.0.0.1:8000/" in readme
