"""Tokenize a dataset of images into token shards (resumable, deterministic, one process or many).

    python scripts/tokenize_dataset.py --model MODEL --input IN --output OUT [--size S | --native]
        [--batch-size N] [--workers N] [--shard-size N]

IN is a folder (recursive), a list file (one path per line) or tar shards (``"shards/*.tar"`` or
``shards-{000..099}.tar``). Re-running the same command resumes. Under ``torchrun --nproc_per_node=K``
each process takes every K-th shard and rank 0 merges the indexes at the end; without torchrun, run
``--rank r --world-size K`` K times and ``--merge-only`` once all are done (or let the last one merge).
Read the output with ``tokenizer.data.TokenShardDataset``. Same engine as ``imgtok tokenize``.
"""

from __future__ import annotations

import argparse
import sys

from tokenizer.batch_tokenize import add_arguments, run_from_args


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except (FileNotFoundError, ValueError, OSError) as err:  # bad input/model/output: one clear line
        print(f"tokenize_dataset: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
