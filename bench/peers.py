"""Infinity's own pinned environment, bench/.venv-infinity, created when missing (bench/lib/infinity.py says what is
in it and how `make bench` runs Infinity as a peer).

    .venv/bin/python -m bench.peers              # create the environment if missing; --recreate to rebuild it
"""

from __future__ import annotations

import argparse

from bench.lib.infinity import ensure_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recreate", action="store_true", help="rebuild bench/.venv-infinity from scratch")
    args = parser.parse_args()
    info = ensure_env(args.recreate)
    made = f"created in {info['created_s']:.0f} s" if info["created_s"] is not None else "already there"
    print(f"{info['venv']}: {made}; {len(info['packages'])} packages")


if __name__ == "__main__":
    main()
