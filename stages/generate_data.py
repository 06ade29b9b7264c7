"""Stage generate_data: write the embedded synthetic benchmark under --out, deterministic
from `seed`: the source in the GTA5 layout, the target in the Cityscapes layout."""

import argparse
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
    seed, generate = get(raw, "seed"), get(raw, "generate")
    params = getattr(generate, args.name, None)
    if params is None:
        raise IntradaError(f"params.yaml: generate.{args.name} is missing")
    write_benchmark(seed, params, args.out)


if __name__ == "__main__":
    run_stage(main)
