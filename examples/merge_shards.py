"""Merge the output folders of a sharded certification (``--num_shards K --shard_index i``, one job each)
into the files one run would have written; checks settings agree and no example is missing or repeated.

    python examples/merge_shards.py --shard_dirs runs/c/shard-0 runs/c/shard-1 runs/c/shard-2 --output_dir runs/c

The arguments may also come as one JSON file: ``python examples/merge_shards.py args.json``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from smoothing_hf.pipeline import merge_shards
from smoothing_hf.reporting import format_summary


@dataclass
class MergeArguments:
    shard_dirs: list[str] = field(metadata={"help": "The shard output folders."})
    output_dir: str = field(metadata={"help": "Where the merged files go."})


def main() -> None:
    parser = HfArgumentParser(MergeArguments)
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):  # the arguments as one JSON file
        (args,) = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        (args,) = parser.parse_args_into_dataclasses()
    summary = merge_shards(args.shard_dirs, args.output_dir)
    print(format_summary(summary) if "certified_accuracy" in summary else summary)


if __name__ == "__main__":
    main()
