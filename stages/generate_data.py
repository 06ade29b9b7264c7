"""Stage generate_data: write the embedded synthetic benchmark under --out, deterministic
from its `draw`: the source in the GTA5 layout, the target in the Cityscapes layout.

The images are drawn and encoded in one process per CPU core; each image comes from
its own random stream, so the files do not depend on the machine."""

import argparse
import os
from pathlib import Path

from intrada.cli import run_stage
from intrada.config import get, read_params
from intrada.errors import IntradaError
from intrada.synthetic import write_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="entry of params.yaml's generate section")
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    args = parser.parse_args()
    raw = read_params()
    params = getattr(get(raw, "generate"), args.name, None)
    if params is None:
        raise IntradaError(f"params.yaml: generate.{args.name} is missing")
    write_benchmark(params.draw, params, args.out, workers=os.cpu_count() or 1)


if __name__ == "__main__":
    run_stage(main)
