import json

from mnist_pipeline.records import EpochResult
from mnist_pipeline.reports import read_confusion, read_history, read_json, write_confusion, write_history, write_json


def test_history_round_trip_and_header(tmp_path):
    history = [EpochResult(1, 0.5, 0.25, 0.9), EpochResult(2, 0.125, 0.0625, 0.95)]
    path = tmp_path / "metrics" / "history.csv"
    write_history(path, history)
    assert path.read_text().splitlines()[0] == "epoch,train_loss,test_loss,test_accuracy"
    assert read_history(path) == history


def test_confusion_rows_are_one_per_image(tmp_path):
    matrix = [[2, 1], [0, 3]]
    path = tmp_path / "confusion.csv"
    write_confusion(path, matrix)
    lines = path.read_text().splitlines()
    assert lines[0] == "actual,predicted" and len(lines) == 1 + 6
    assert lines.count("0,1") == 1 and lines.count("1,1") == 3
    assert read_confusion(path, num_classes=2) == matrix


def test_json_keeps_key_order(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"b": 1, "a": 0.5})
    assert list(read_json(path)) == ["b", "a"]
    assert path.read_text().endswith("}\n")


def test_mistakes_round_trip(tmp_path):
    from mnist_pipeline.records import Mistake
    from mnist_pipeline.reports import read_mistakes, write_mistakes

    mistakes = [Mistake(12, 7, 1, 0.987654), Mistake(3, 2, 8, 0.5)]
    write_mistakes(tmp_path / "m.csv", mistakes)
    assert (tmp_path / "m.csv").read_text().splitlines()[0] == "index,actual,predicted,confidence"
    assert read_mistakes(tmp_path / "m.csv") == mistakes


def test_the_evaluation_report_round_trips_with_and_without_validation(tmp_path):
    from mnist_pipeline.reports import EvaluationReport

    plain = EvaluationReport(0.98, 0.06, 10000, {"0": 0.99})
    plain.write(tmp_path / "eval.json")
    assert EvaluationReport.read(tmp_path / "eval.json") == plain
    assert json.loads((tmp_path / "eval.json").read_text())["val_accuracy"] is None
    held_out = EvaluationReport(0.98, 0.06, 10000, {"0": 0.99}, val_accuracy=0.97, val_loss=0.09, val_images=5000)
    held_out.write(tmp_path / "eval.json")
    assert EvaluationReport.read(tmp_path / "eval.json") == held_out
