import pytest
import torch
from torch import nn

from mnist_pipeline.data import Split
from mnist_pipeline.evaluation import EvalResult, confusion_matrix, evaluate

from conftest import requires_c_compiler


def test_confusion_matrix_by_hand():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    predictions = torch.tensor([0, 1, 1, 2, 0, 2])
    assert confusion_matrix(labels, predictions, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


class FixedLogits(nn.Module):
    """Returns the logits stored for each image, indexed by the image's first pixel."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[x[:, 0, 0, 0].long()]


def test_evaluate_against_a_hand_computed_case():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]])
    images = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    labels = torch.tensor([0, 1, 2, 2])  # the last image is predicted 0: 3 of 4 right
    result = evaluate(FixedLogits(logits), Split(images, labels), num_classes=3, batch_size=3)
    assert result.accuracy == 0.75
    expected_loss = nn.functional.cross_entropy(logits, labels).item()
    assert result.loss == pytest.approx(expected_loss)
    assert result.confusion_matrix == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert result.per_class_accuracy == [1.0, 1.0, 0.5]


def test_per_class_accuracy_of_an_absent_class_is_zero():
    result = EvalResult(accuracy=1.0, loss=0.0, confusion_matrix=[[2, 0], [0, 0]])
    assert result.per_class_accuracy == [1.0, 0.0]


def test_the_mistakes_are_the_wrong_ones_most_confident_first():
    from mnist_pipeline.evaluation import mistakes, predict, scores_from_logits
    from mnist_pipeline.records import Mistake

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [4.0, 0.0, 0.0]])
    images = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    labels = torch.tensor([0, 2, 2, 1])  # images 1 and 3 are wrong
    found = mistakes(scores_from_logits(predict(FixedLogits(logits), images), labels), labels)
    probability = torch.softmax(logits, dim=1).max(dim=1).values
    assert found == [
        Mistake(3, 1, 0, round(probability[3].item(), 6)),
        Mistake(1, 2, 1, round(probability[1].item(), 6)),
    ]


def test_the_mean_loss_is_the_correctly_rounded_sum_whatever_the_order():
    """math.fsum: a function of the per-image losses alone, not of the order or width of a sum."""
    from mnist_pipeline.evaluation import Scores, metrics

    losses = torch.tensor([1e8, 1.0, -1e8, 3.0], dtype=torch.float32)
    labels = torch.zeros(4, dtype=torch.int64)
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [0, 2, 1, 3]):
        scores = Scores(losses[order], torch.zeros(4, dtype=torch.int64), torch.ones(4))
        assert metrics(scores, labels, num_classes=2).loss == 1.0  # (1 + 3) / 4; a float32 sum in order loses the 1


@requires_c_compiler()
def test_the_project_kernels_score_as_torchs_layers_do():
    from mnist_pipeline.compute import kernels
    from mnist_pipeline.model import ReferenceCNN

    torch.manual_seed(0)
    model = ReferenceCNN()
    split = Split(torch.randn(2500, 1, 28, 28), torch.randint(0, 10, (2500,)))
    expected = evaluate(model, split)
    got = evaluate(model, split, kernels=kernels.ReferenceKernels(model))
    assert got.confusion_matrix == expected.confusion_matrix
    assert got.loss == pytest.approx(expected.loss, rel=1e-6)
