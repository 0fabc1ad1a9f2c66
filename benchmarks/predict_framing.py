"""How often predict.py's framing gives the right digit on digits as people bring them, handwritten and printed.

Handwritten: a seeded set of MNIST test digits redrawn as people bring them
(`user_digits`: off-centre on canvases of 64 to 3000 pixels, half inverted,
noise, specks, small turns, RGBA with a transparent background, JPEG), framed
by today's `framing.load_digit` and classified with a checkpoint through
predict.py's --checkpoint path; and the same digits as MNIST stores them,
classified with the same checkpoint: the ceiling.

Printed: a seeded set of font glyphs of various weights placed the same way
(`font_digits`), framed and classified the same way. Printed digits have no
MNIST framing; what no framing can add to is each font's ten glyphs at their
designed weight on a plain canvas, measured too.

Also measures MNIST's pen (framing.pen_width over the training digits: the
MNIST_PEN constant) and the pen width, in canvas pixels, that gives a digit
drawn on the page of `predict.py --serve` that pen. Prints the figures and
writes benchmarks/results/predict_framing.json.

    .venv/bin/python benchmarks/predict_framing.py                       # 2000 + 2000 images, several minutes
    .venv/bin/python benchmarks/predict_framing.py --figure docs/predict_framing.png

Needs the pipeline's data and a trained checkpoint (`dvc repro`). Earlier framings (the whole image resized,
and images.py before issue 27) were measured against today's in benchmarks/results/predict_framing.json as
committed in 1cfb98a; they are no longer run.
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

from mnist_pipeline.data import IDX_LABELS_MAGIC, raw_images, read_idx
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.serving.classifier import checkpoint_classifier
from mnist_pipeline.serving.framing import MNIST_PEN, load_digit, pen_width

from common import REPO_ROOT  # first: it puts the tests' data generators (font_digits, user_digits) on the path
from font_digits import write_font_digits
from user_digits import write_user_digits

RESULTS = REPO_ROOT / "benchmarks" / "results" / "predict_framing.json"
TURN_BINS = ((0, 3), (3, 6), (6, 11))  # |turn| in degrees; the set turns by up to 10
# The font set kept aside: while the framing was tuned, sets of seeds 1 and 2 were looked at, never this one.
FONT_SEED = 27
# The page's canvas (src/mnist_pipeline/serving/web/index.html) and the strokes of a 1, a 7 and a 4 drawn across most
# of it, as the browser test draws them: (x, y) in canvas pixels, one list per stroke.
CANVAS_SIDE = 280
CANVAS_STROKES = {
    1: [[(150, 40), (140, 240)]],
    7: [[(70, 45), (210, 45), (120, 240)]],
    4: [[(170, 40), (60, 170), (215, 170)], [(175, 110), (175, 240)]],
}
CANVAS_PENS = range(8, 49, 2)  # pen widths tried, canvas pixels


def mnist_pen(digits: np.ndarray) -> dict:
    """images.pen_width of MNIST digits (N, 28, 28) cropped to their boxes: percentiles and the median."""
    pens = []
    for digit in digits:
        ink = digit.astype(np.float32) / 255
        rows, cols = np.flatnonzero((ink > 0.1).any(axis=1)), np.flatnonzero((ink > 0.1).any(axis=0))
        pens.append(pen_width(ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]))
    percentiles = np.percentile(pens, [5, 25, 50, 75, 95])
    return {
        "digits": len(pens),
        "median": round(float(percentiles[2]), 3),
        "percentiles_5_25_50_75_95": [round(float(p), 3) for p in percentiles],
    }


def canvas_pen() -> dict:
    """The page's pen width that draws the strokes of CANVAS_STROKES with MNIST's pen (MNIST_PEN), and each width's pen."""
    from PIL import Image, ImageDraw

    measured = {}
    for width in CANVAS_PENS:
        pens = []
        for strokes in CANVAS_STROKES.values():
            canvas = Image.new("L", (CANVAS_SIDE, CANVAS_SIDE), 0)
            draw = ImageDraw.Draw(canvas)
            for stroke in strokes:  # as the page draws: round caps and joins
                draw.line(stroke, fill=255, width=width, joint="curve")
                for x, y in (stroke[0], stroke[-1]):
                    draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=255)
            ink = np.asarray(canvas, dtype=np.float32) / 255
            rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
            pens.append(pen_width(ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]))
        measured[width] = round(float(np.mean(pens)), 3)
    chosen = min(measured, key=lambda width: abs(measured[width] - MNIST_PEN))
    return {"canvas_side": CANVAS_SIDE, "mnist_pen": MNIST_PEN, "pen_by_width": measured, "chosen_width": chosen}


def frame_all(paths: list[Path]) -> tuple[np.ndarray, list[str], float]:
    """Each image framed by load_digit; an image it refuses becomes a blank frame (a wrong answer) and its error;
    seconds."""
    started = time.perf_counter()
    framed, errors = [], []
    for path in paths:
        try:
            framed.append(load_digit(path))
        except PipelineError as exc:
            framed.append(np.zeros((28, 28), dtype=np.uint8))
            errors.append(str(exc))
    return np.stack(framed), errors, time.perf_counter() - started


def save_figure(
    figure_path: Path,
    items,
    framed: np.ndarray,
    originals: np.ndarray,
    predictions: np.ndarray,
    ceiling_predictions: np.ndarray,
    shown: int = 8,
) -> None:
    """A grid: the image as given, what the model sees (framed by load_digit), and MNIST's own framing."""
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
    figure, axes = plt.subplots(3, len(chosen), figsize=(1.6 * len(chosen), 5.6))
    titles = ("as given", "what the model sees", "MNIST's framing")
    for column, number in enumerate(chosen):
        item = items[number]
        given: Image.Image = Image.open(item.path)
        if given.mode == "RGBA":  # show transparency as a checkerboard would: over mid-grey
            backdrop = Image.new("RGBA", given.size, (128, 128, 128, 255))
            given = Image.alpha_composite(backdrop, given)
        axes[0, column].imshow(given.convert("RGB"))
        axes[0, column].set_title(f"{given.width}x{given.height}\n{', '.join(item.kinds) or 'plain'}", fontsize=7)
        for row, (pixels, label) in enumerate(
            (
                (framed[number], f"-> {predictions[number]}"),
                (originals[number], f"label {item.label}, -> {ceiling_predictions[number]}"),
            ),
            start=1,
        ):
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


FONT_STYLES = {
    "sans": ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique", "cmss10"),
    "mono": ("DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique", "DejaVuSansMono-BoldOblique", "cmtt10"),
    "serif": (
        "DejaVuSerif",
        "DejaVuSerif-Bold",
        "DejaVuSerif-Italic",
        "DejaVuSerif-BoldItalic",
        "STIXGeneral",
        "STIXGeneralBol",
        "STIXGeneralItalic",
        "STIXGeneralBolIta",
        "cmr10",
        "cmb10",
        "cmti10",
    ),
}
STROKE_BINS = ((0, 0.06), (0.06, 0.1), (0.1, 0.15), (0.15, 0.2), (0.2, 1))  # drawn stroke / glyph height


def accuracy_rows(groups: dict, truth: np.ndarray, predictions: dict) -> dict:
    """{group: {"images": n, "<column>": accuracy, ...}} for index arrays `groups` and predictions by column."""
    return {
        name: {
            "images": int(len(numbers)),
            **{
                column: float((predicted[numbers] == truth[numbers]).mean()) if len(numbers) else None
                for column, predicted in predictions.items()
            },
        }
        for name, numbers in groups.items()
    }


def measure_fonts(args, classify) -> dict:
    """Printed digits (font_digits) framed by load_digit: accuracies overall and by style, weight, stroke, font."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        items = write_font_digits(folder, seed=args.font_seed, count=args.font_count)
        written_s = time.perf_counter() - started
        framed, errors, framed_s = frame_all([item.path for item in items])
    truth = np.array([item.label for item in items])
    predicted = classify(framed).argmax(axis=1)
    columns = {"accuracy": predicted}
    style_of = {font: style for style, fonts in FONT_STYLES.items() for font in fonts}
    styles = np.array([style_of[item.font] for item in items])
    weights = np.array([item.weight for item in items])
    fonts = np.array([item.font for item in items])
    strokes = np.array([item.stroke for item in items])
    confusions: defaultdict[str, int] = defaultdict(int)
    for number in np.flatnonzero(predicted != truth):
        confusions[f"{truth[number]} read as {predicted[number]}"] += 1
    return {
        "images": len(items),
        "seed": args.font_seed,
        "fonts": len(set(fonts)),
        "accuracy": float((predicted == truth).mean()),
        "refused": errors,
        "by_style": accuracy_rows({style: np.flatnonzero(styles == style) for style in FONT_STYLES}, truth, columns),
        "sans_and_mono": accuracy_rows({"sans and mono": np.flatnonzero(styles != "serif")}, truth, columns)[
            "sans and mono"
        ],
        "by_weight": accuracy_rows(
            {weight: np.flatnonzero(weights == weight) for weight in ("designed", "thinned", "thickened")},
            truth,
            columns,
        ),
        "by_stroke": accuracy_rows(
            {f"[{low}, {high})": np.flatnonzero((strokes >= low) & (strokes < high)) for low, high in STROKE_BINS},
            truth,
            columns,
        ),
        "by_font": accuracy_rows({font: np.flatnonzero(fonts == font) for font in sorted(set(fonts))}, truth, columns),
        "confusions": dict(sorted(confusions.items(), key=lambda item: -item[1])[:10]),
        "seconds": {"write_images": round(written_s, 1), "frame": round(framed_s, 1)},
    }


def clean_glyphs(classify) -> dict:
    """Each font's ten digits at their designed weight, dark on a plain light canvas: what no framing can add to."""
    from PIL import Image

    from font_digits import FONTS, render_glyph

    images, digits, names = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for font_file in FONTS:
            for digit in range(10):
                ink = render_glyph(font_file, digit)[0]
                canvas = np.full((ink.shape[0] + 80, ink.shape[1] + 80), 255, dtype=np.uint8)
                canvas[40 : 40 + ink.shape[0], 40 : 40 + ink.shape[1]] = 255 - ink
                path = Path(folder) / f"{Path(font_file).stem}_{digit}.png"
                Image.fromarray(canvas).save(path)
                images.append(path)
                digits.append(digit)
                names.append(f"{Path(font_file).stem} {digit}")
        framed, _, _ = frame_all(images)
    truth = np.array(digits)
    predicted = classify(framed).argmax(axis=1)
    return {
        "images": len(images),
        "accuracy": float((predicted == truth).mean()),
        "misread": [
            f"{name} read as {answer}"
            for name, answer, digit in zip(names, predicted, truth, strict=True)
            if answer != digit
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(REPO_ROOT / "models" / "model.pt"))
    parser.add_argument("--data", default=str(REPO_ROOT / "data" / "mnist"), help="the MNIST files")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--font-count", type=int, default=2000)
    parser.add_argument("--font-seed", type=int, default=FONT_SEED)
    parser.add_argument("--figure", help="also draw a figure: the image as given, what the model sees, MNIST's framing")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()

    classify, checkpoint_md5 = checkpoint_classifier(args.checkpoint)
    digits = raw_images(args.data, train=False)
    labels = read_idx(Path(args.data) / "t10k-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        items = write_user_digits(digits, labels, folder, seed=args.seed, count=args.count)
        written_s = time.perf_counter() - started
        framed, errors, framed_s = frame_all([item.path for item in items])
        originals = digits[[item.mnist_index for item in items]]
        truth = np.array([item.label for item in items])
        predictions = classify(framed).argmax(axis=1)
        ceiling_predictions = classify(originals).argmax(axis=1)
        if args.figure:
            save_figure(Path(args.figure), items, framed, originals, predictions, ceiling_predictions)
    fonts = measure_fonts(args, classify)
    fonts["clean_glyphs"] = clean_glyphs(classify)

    by_kind = defaultdict(list)
    for number, item in enumerate(items):
        for kind in item.kinds or ("plain",):
            by_kind[kind].append(number)
    turns = np.abs([item.turn_degrees for item in items])
    by_turn = {f"[{low}, {high}) degrees": np.flatnonzero((turns >= low) & (turns < high)) for low, high in TURN_BINS}
    columns = {"accuracy": predictions, "accuracy_on_mnist_framing": ceiling_predictions}
    result = {
        "checkpoint": str(args.checkpoint),
        "checkpoint_md5": checkpoint_md5,
        "images": len(items),
        "seed": args.seed,
        "accuracy": float((predictions == truth).mean()),
        "accuracy_on_mnist_framing": float((ceiling_predictions == truth).mean()),
        "agreement_with_mnist_framing": float((predictions == ceiling_predictions).mean()),
        "refused": errors,
        "by_kind": accuracy_rows(
            {kind: np.array(numbers) for kind, numbers in sorted(by_kind.items())}, truth, columns
        ),
        "by_turn": accuracy_rows(by_turn, truth, columns),
        "fonts": fonts,
        "mnist_pen": mnist_pen(raw_images(args.data, train=True)),
        "canvas_pen": canvas_pen(),
        "seconds": {
            "write_images": round(written_s, 1),
            "frame": round(framed_s, 1),
            "frame_ms_per_image": round(1000 * framed_s / len(items), 1),
        },
        "command": "benchmarks/predict_framing.py " + " ".join(sys.argv[1:]),
    }
    print(f"{len(items)} handwritten images (MNIST redrawn, seed {args.seed}), checkpoint {args.checkpoint}")
    print(
        f"accuracy framed by load_digit: {result['accuracy']:.2%}; the same digits as MNIST frames them: "
        f"{result['accuracy_on_mnist_framing']:.2%} (agreement {result['agreement_with_mnist_framing']:.2%})"
    )
    for group in ("by_kind", "by_turn"):
        for name, row in result[group].items():
            if not row["images"]:  # a kind the sample drew none of (a small --count)
                continue
            print(
                f"  {name:16s} {row['images']:5d} images: {row['accuracy']:7.2%}"
                f" (MNIST's framing: {row['accuracy_on_mnist_framing']:.2%})"
            )
    print(
        f"{fonts['images']} printed images ({fonts['fonts']} fonts, seed {fonts['seed']}): {fonts['accuracy']:.2%}; "
        f"refused {len(fonts['refused'])}"
    )
    for group in ("by_style", "by_weight", "by_stroke"):
        for name, row in fonts[group].items():
            if row["images"]:
                print(f"  {name:13s} {row['images']:5d} images: {row['accuracy']:7.2%}")
    row = fonts["sans_and_mono"]
    print(f"  sans and mono {row['images']:5d} images: {row['accuracy']:7.2%}")
    print(f"  commonest misreadings: {fonts['confusions']}")
    clean = fonts["clean_glyphs"]
    print(
        f"  the {clean['images']} glyphs clean, designed weight: {clean['accuracy']:.2%}; misread: {clean['misread']}"
    )
    print(f"MNIST's pen (training digits): {result['mnist_pen']}")
    print(
        f"canvas pen: {result['canvas_pen']['chosen_width']} px on {CANVAS_SIDE} px draws MNIST's pen "
        f"({result['canvas_pen']['pen_by_width']})"
    )
    print(f"framing: {result['seconds']['frame_ms_per_image']} ms an image")
    if errors:
        print(f"refused: {len(errors)}: {errors[:3]}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
