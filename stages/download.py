"""Stage download: the four MNIST files into data.dir, MD5-verified.

Offline, MNIST_MIRROR=<folder or file:// URL> points it at a local copy.
"""

from mnist_pipeline.cli import run_stage  # first: its quick exit must be the first exit handler

# isort: split
from mnist_pipeline.config import load_config
from mnist_pipeline.download import download_mnist
from mnist_pipeline.timing import StageClock


def main() -> None:
    clock = StageClock("download")
    config = load_config()
    clock.mark("start-up and imports")
    for path in download_mnist(config.data.dir):
        print(f"download: {path} (MD5 verified)")
    clock.mark("download and MD5 checks")
    clock.report()


if __name__ == "__main__":
    run_stage(main)
