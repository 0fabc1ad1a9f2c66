"""What a training run trained on, as MLflow shows it: the data as dataset inputs with DVC's digest, and params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mnist_pipeline.tracking.store import mlflow  # first: it sets MLflow's environment before MLflow loads

# isort: split
from mlflow.data.dataset_source import DatasetSource

from mnist_pipeline.tracking import lineage
from mnist_pipeline.tracking.system_metrics import gpu_metrics_skipped

if TYPE_CHECKING:
    from mlflow.data.dataset import Dataset


def log_data_inputs(data_dir: str, digest: lineage.DataDigest, slices: dict[str, int | None]) -> None:
    """Log the training and test data as dataset inputs of the active run, named by split and slice.

    The digest is DVC's MD5 of `data_dir` (the UI's Dataset column shows it); `slices` gives the
    `training` and `test` contexts their first-N image limit (None for the whole split) and, when
    images are held out, the `validation` context their count: the training split's last N.
    """
    from mlflow.data.meta_dataset import MetaDataset

    folder = Path(data_dir).as_posix()
    files = lineage.split_files(data_dir)
    # As log_inputs types them: a list of each, any entry of which may be None.
    datasets: list[Dataset | None] = []
    contexts: list[str | None] = []
    tags: list[dict[str, str] | None] = []
    for context, limit in slices.items():
        if context == "validation":
            name, split, images = f"mnist-training[-{limit}:]", "training", f"last {limit} of the training split"
        else:
            name = f"mnist-{context}" + (f"[:{limit}]" if limit is not None else "")
            split, images = context, "all" if limit is None else f"first {limit}"
        source = FilesSource(folder, tuple(f"{folder}/{name_}" for name_ in files[split]))
        # MLflow's own MetaDataset leaves out `profile`, which Dataset marks abstract without being an ABC.
        datasets.append(MetaDataset(source, name=name, digest=digest.md5))  # type: ignore[abstract]  # see above
        contexts.append(context)
        tags.append({"images": images, "digest_from": digest.origin})
    mlflow.log_inputs(datasets=datasets, contexts=contexts, tags_list=tags)


def log_lineage(data_dir: str, slices: dict[str, int | None], params_file: str | Path, on_gpu: bool) -> list[str]:
    """What the active run trained on and what reproduces it: the data (DVC's MD5) and params.yaml.

    Returns one-line notes for the user: a digest computed from the files, GPU metrics skipped.
    """
    digest = lineage.data_digest(data_dir)
    log_data_inputs(data_dir, digest, slices)
    mlflow.log_artifact(str(params_file), lineage.REPRODUCE_DIR)
    notes = [digest.note, gpu_metrics_skipped() if on_gpu else None]
    return [note for note in notes if note]


class FilesSource(DatasetSource):
    """Files of the repository, by their paths from its root: the UI shows the folder, the source's JSON each file."""

    def __init__(self, uri: str, files: tuple[str, ...]):
        self.uri, self.files = uri, tuple(files)

    @staticmethod
    def _get_source_type() -> str:
        return "local"

    def load(self, dst_path=None) -> str:
        return self.uri

    @staticmethod
    def _can_resolve(raw_source) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source):
        raise NotImplementedError("FilesSource is built by log_data_inputs, not resolved")

    def to_dict(self) -> dict:
        return {"uri": self.uri, "files": list(self.files)}

    @classmethod
    def from_dict(cls, source_dict: dict) -> FilesSource:
        return cls(source_dict["uri"], tuple(source_dict.get("files", ())))
