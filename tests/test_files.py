import pytest

from mnist_pipeline.files import atomic_path, write_text_atomic


def test_write_replaces_the_file(tmp_path):
    path = tmp_path / "out" / "m.json"
    write_text_atomic(path, "one")
    write_text_atomic(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]


def test_a_failure_mid_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
