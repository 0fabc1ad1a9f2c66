"""The MLflow UI as the README starts it: it serves the project's store and listens on 127.0.0.1 only."""

import sys
import urllib.request
from pathlib import Path

import pytest

from servers import listening_addresses, server


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc to see listening sockets")
def test_ui_started_as_the_readme_says_listens_on_loopback_only(tmp_path):
    mlflow = Path(sys.executable).parent / "mlflow"
    # The README's command, with a free port instead of 5000.
    with server([str(mlflow), "ui", "--backend-store-uri", "sqlite:///mlflow.db"], tmp_path, "/health") as port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            assert response.read().strip() == b"OK"
        assert listening_addresses(port) == {"127.0.0.1"}
        assert (tmp_path / "mlflow.db").exists()  # the store the README names, in the folder it runs in
