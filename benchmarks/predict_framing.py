"""What framing buys predict.py: accuracy on MNIST test digits redrawn as people bring them, before and after.

Writes a seeded set of images (`mnist_pipeline.user_digits`: off-centre on
canvases of 64 to 3000 pixels, half inverted, noise, specks, small turns,
RGBA with a transparent background, JPEG) and classifies it with a checkpoint
through predict.py's --checkpoint path, twice: framed the old way (the whole
image resized to 28x28, inverted when its mean is bright; `old_load_png`
below keeps that code) and framed by `images.load_digit`. Also classifies the
same digits as MNIST stores them: the ceiling. Prints the accuracies, by kind
of image too, and writes benchmarks/results/predict_framing.json.

    .venv/bin/python benchmarks/predict_framing.py                       # 2000 images, a few minutes
    .venv/bin/python benchmarks/predict_framing.py --figure docs/predict_framing.png

Needs the pipeline's data and a trained checkpoint (`dvc repro`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]

from mnist_pipeline.data import IDX_LABELS_MAGIC, raw_images, read_idx
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.images import load_digit
from mnist_pipeline.predict import probabilities_from_checkpoint
from user_digits import write_user_digits

RESULTS = REPO_ROOT / "benchmarks" / "results" / "predict_framing.json"
TURN_BINS = ((0, 3), (3, 6), (6, 11))  # |turn| in degrees; the set turns by up to 10


def old_load_png(path: str | Path) -> np.ndarray:
    """predict.py's framing before images.py (commit b585fb0): the whole image resized, inverted by its mean."""
    from PIL import Image

    image = Image.open(path).convert("L")
    if image.size != (28, 28):
        image = image.resize((28, 28), Image.LANCZOS)
    pixels = np.asarray(image, dtype=np.uint8)
    return 255 - pixels if pixels.mean() > 127 else pixels


def frame_all(paths: list[Path], loader) -> tuple[np.ndarray, list[str]]:
    """Each image framed by `loader`; an image it refuses becomes a blank frame (a wrong answer) and its error."""
    framed, errors = [], []
    for path in paths:
        try:
            framed.append(loader(path))
        except PipelineError as exc:
            framed.append(np.zeros((28, 28), dtype=np.uint8))
            errors.append(str(exc))
    return np.stack(framed), errors


def save_figure(figure_path: Path, items, originals: np.ndarray, old: np.ndarray, new: np.ndarray,
                old_predictions: np.ndarray, new_predictions: np.ndarray, shown: int = 8) -> None:
    """A grid: the image as given, what the model saw before (old framing), after, and MNIST's own framing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    # The first images of varied kinds, so the figure shows inversion, transparency, noise and JPEG.
    chosen, seen = [], set()
    for number, item in enumerate(items):
        key = item.kinds[:2]
        if key not in seen and "large" not in item.kinds:
            seen.add(key)
            chosen.append(number)
        if len(chosen) == shown:
            break
    figure, axes = plt.subplots(4, len(chosen), figsize=(1.6 * len(chosen), 7.2))
    titles = ("as given", "seen before", "seen after", "MNIST's framing")
    for column, number in enumerate(chosen):
        item = items[number]
        given = Image.open(item.path)
        if given.mode == "RGBA":  # show transparency as a checkerboard would: over mid-grey
            backdrop = Image.new("RGBA", given.size, (128, 128, 128, 255))
            given = Image.alpha_composite(backdrop, given)
        axes[0, column].imshow(given.convert("RGB"))
        axes[0, column].set_title(f"{given.width}x{given.height}\n{', '.join(item.kinds) or 'plain'}", fontsize=7)
        for row, (pixels, label) in enumerate(((old[number], f"-> {old_predictions[number]}"),
                                               (new[number], f"-> {new_predictions[number]}"),
                                               (originals[number], f"label {item.label}")), start=1):
            axes[row, column].imshow(pixels, cmap="gray", vmin=0, vmax=255)
            axes[row, column].set_title(label, fontsize=8)
    for row, title in enumerate(titles):
        axes[row, 0].set_ylabel(title, fontsize=9)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    figure_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(figure_path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(REPO_ROOT / "models" / "model.pt"))
    parser.add_argument("--data", default=str(REPO_ROOT / "data" / "mnist"), help="the MNIST files")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--figure", help="also draw a before/after figure to this PNG")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()

    digits = raw_images(args.data, train=False)
    labels = read_idx(Path(args.data) / "t10k-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        items = write_user_digits(digits, labels, folder, seed=args.seed, count=args.count)
        written_s = time.perf_counter() - started
        paths = [item.path for item in items]
        started = time.perf_counter()
        old, old_errors = frame_all(paths, old_load_png)
        old_s = time.perf_counter() - started
        started = time.perf_counter()
        new, new_errors = frame_all(paths, load_digit)
        new_s = time.perf_counter() - started
        originals = digits[[item.mnist_index for item in items]]
        truth = np.array([item.label for item in items])
        old_predictions = probabilities_from_checkpoint(old, args.checkpoint).argmax(axis=1)
        new_predictions = probabilities_from_checkpoint(new, args.checkpoint).argmax(axis=1)
        ceiling_predictions = probabilities_from_checkpoint(originals, args.checkpoint).argmax(axis=1)
        if args.figure:
            save_figure(Path(args.figure), items, originals, old, new, old_predictions, new_predictions)

    by_kind = defaultdict(list)
    for number, item in enumerate(items):
        for kind in item.kinds or ("plain",):
            by_kind[kind].append(number)
    turns = np.abs([item.turn_degrees for item in items])
    by_turn = {f"[{low}, {high}) degrees": np.flatnonzero((turns >= low) & (turns < high)) for low, high in TURN_BINS}
    result = {
        "checkpoint": str(args.checkpoint),
        "images": len(items),
        "seed": args.seed,
        "accuracy_before": float((old_predictions == truth).mean()),
        "accuracy_after": float((new_predictions == truth).mean()),
        "accuracy_on_mnist_framing": float((ceiling_predictions == truth).mean()),
        "agreement_after_with_mnist_framing": float((new_predictions == ceiling_predictions).mean()),
        "refused_after": new_errors,
        "by_kind": {kind: {"images": len(numbers),
                           "accuracy_before": float((old_predictions[numbers] == truth[numbers]).mean()),
                           "accuracy_after": float((new_predictions[numbers] == truth[numbers]).mean()),
                           "accuracy_on_mnist_framing": float((ceiling_predictions[numbers] == truth[numbers]).mean())}
                    for kind, numbers in sorted(by_kind.items())},
        "by_turn": {turn: {"images": len(numbers),
                           "accuracy_after": float((new_predictions[numbers] == truth[numbers]).mean()),
                           "accuracy_on_mnist_framing": float((ceiling_predictions[numbers] == truth[numbers]).mean())}
                    for turn, numbers in by_turn.items()},
        "seconds": {"write_images": round(written_s, 1), "frame_before": round(old_s, 1),
                    "frame_after": round(new_s, 1)},
        "command": "benchmarks/predict_framing.py " + " ".join(sys.argv[1:]),
    }
    print(f"{len(items)} images (seed {args.seed}), checkpoint {args.checkpoint}")
    print(f"accuracy before (whole image resized, mean-inverted): {result['accuracy_before']:.2%}")
    print(f"accuracy after  (images.load_digit):                  {result['accuracy_after']:.2%}")
    print(f"the same digits as MNIST frames them:                 {result['accuracy_on_mnist_framing']:.2%}"
          f" (after agrees with it on {result['agreement_after_with_mnist_framing']:.2%})")
    for kind, row in result["by_kind"].items():
        print(f"  {kind:9s} {row['images']:5d} images: {row['accuracy_before']:7.2%} -> {row['accuracy_after']:7.2%}"
              f" (MNIST's framing: {row['accuracy_on_mnist_framing']:.2%})")
    for turn, row in result["by_turn"].items():
        print(f"  turned {turn:16s} {row['images']:5d} images: after {row['accuracy_after']:7.2%}"
              f" (MNIST's framing: {row['accuracy_on_mnist_framing']:.2%})")
    if new_errors:
        print(f"refused after: {len(new_errors)}: {new_errors[:3]}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
