"""Fetch (and, for offline aliases, convert) a model once, so later runs start at once.

    python scripts/fetch_model.py smollm2-135m      # prints the checkpoint folder
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compressor.errors import UserError  # noqa: E402
from compressor.models import ALIASES, resolve_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help=f"alias ({', '.join(ALIASES)}), folder, .gguf file or Hub id")
    ap.add_argument("--cache-dir", default=None,
                    help="svdc cache root (default: env SVDC_CACHE, else the user cache dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        res = resolve_model(args.model, cache_dir=args.cache_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(res.path / res.gguf_file if res.gguf_file else res.path)
    logging.getLogger(__name__).info("source: %s%s", res.source,
                                     f", hub id {res.hub_id}" if res.hub_id else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
