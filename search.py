#!/usr/bin/env python
"""Search params for the best validation accuracy, every trial a DVC experiment and an MLflow run.

    python search.py --study NAME --trials N [--space search.yaml] [--storage URL] [--push REMOTE] [-S key=value ...]

Several workers (this command in several clones, on one machine or many) share one study through
--storage. See README, "More than one machine", and docs/search.md.
"""

import argparse
import re
import sys
from pathlib import Path

from mnist_pipeline.cli import run_stage
from mnist_pipeline.errors import PipelineError


def main() -> None:
    from mnist_pipeline.config import load_config
    from mnist_pipeline.search.space import SPACE_FILE, load_space, parse_assignments
    from mnist_pipeline.search.trials import (
        DEFAULT_STORAGE,
        HEARTBEAT_SECONDS,
        SearchOptions,
        run_search,
        without_password,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="the study's name; each trial's experiment is <study>-<number>")
    parser.add_argument("--trials", type=int, required=True, help="trials this worker runs (workers add theirs up)")
    parser.add_argument("--space", default=SPACE_FILE, help=f"the space to search (default {SPACE_FILE})")
    parser.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        help=f"Optuna's study storage, shared by every worker (default {DEFAULT_STORAGE}; "
        "a team: postgresql://user@host/db, the password in ~/.pgpass or PGPASSWORD)",
    )
    parser.add_argument("--push", metavar="REMOTE", help="send each finished trial to this git remote (dvc exp push)")
    parser.add_argument(
        "-S",
        "--set-param",
        dest="fixed",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a param every trial gets, as dvc exp run -S takes it (repeatable)",
    )
    parser.add_argument("--seed", type=int, help="the sampler's seed: one worker proposes the same trials again")
    parser.add_argument(
        "--heartbeat",
        type=int,
        default=HEARTBEAT_SECONDS,
        help=f"seconds between a worker's signs of life (default {HEARTBEAT_SECONDS}); one silent for "
        "twice this is taken for dead, and its trial runs again",
    )
    args = parser.parse_args()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.study):
        raise PipelineError(f"--study {args.study!r}: use letters, digits, '.', '_' and '-' (it names experiments)")
    if args.trials < 1 or args.heartbeat < 1:
        raise PipelineError("--trials and --heartbeat: give a whole number of at least 1")
    if without_password(args.storage) != args.storage:
        print(
            "warning: --storage holds a password, which ps and your shell's history keep; put it in ~/.pgpass "
            "or PGPASSWORD instead (docs/search.md)",
            file=sys.stderr,
            flush=True,
        )
    if not Path("dvc.yaml").exists():
        raise PipelineError("no dvc.yaml here: run search.py from the repository root")
    config = load_config()
    space = load_space(args.space)
    fixed = parse_assignments(args.fixed)
    both = sorted(set(fixed) & set(space.entries))
    if both:
        raise PipelineError(f"-S {both[0]}: also in {args.space}; a param is either searched or fixed")
    options = SearchOptions(
        study=args.study,
        trials=args.trials,
        space=space,
        storage=args.storage,
        fixed=fixed,
        push=args.push,
        seed=args.seed,
        heartbeat=args.heartbeat,
    )
    for line in run_search(options, Path.cwd(), config):
        print(line)


if __name__ == "__main__":
    run_stage(main)
