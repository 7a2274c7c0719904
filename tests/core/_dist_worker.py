"""One rank of tests/core/test_distributed.py: join the gloo group from torchrun's variables,
run every recipe given as JSON on the command line (one process group for all of them), exit
with 2 and print the error when compress() raises a UserError. An item ``{"recipe": R,
"stream": true}`` runs R with ``--stream``."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import torch.distributed as dist

from compressor.api import compress
from compressor.errors import UserError
from compressor.recipe import parse_recipe


def main() -> int:
    recipes = json.loads(sys.argv[1])
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank = dist.get_rank()
    code = 0
    for data in recipes:
        if isinstance(data, list):          # per-rank recipes (the disagreement test)
            data = data[rank]
        stream = bool(data.get("stream")) if "recipe" in data else False
        data = data.get("recipe", data)
        try:
            compress(parse_recipe(data, "test"), stream=stream)
        except UserError as e:
            print(f"rank {rank}: {type(e).__name__}: {e}", flush=True)
            code = 2
    dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
