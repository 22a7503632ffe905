"""``break-a-scene env``: versions and devices, for bug reports."""

from __future__ import annotations

import argparse

from .shared import common_options


def add_env_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("env", parents=[common_options()], help="print versions and devices, for bug reports")
    p.set_defaults(func=run_env)
    return p


def run_env(args) -> int:
    import torch

    from ..training.run_writer import library_versions

    for name, version in library_versions().items():
        print(f"- {name}: {version}")
    print(f"- cuda available: {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        print(f"- gpu: {torch.cuda.get_device_name()}")
    return 0

