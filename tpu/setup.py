#!/usr/bin/env python3
"""Install JAX for TPU and crossjax on every worker of a TPU VM (--worker=all).

Examples:
  tpu/setup.py --name crossjax-v4 --zone us-central2-b --dry-run
  tpu/setup.py --name crossjax-v4 --zone us-central2-b --package 'crossjax @ git+https://github.com/ORG/crossjax'
  tpu/setup.py --name crossjax-v4 --zone us-central2-b --wheel dist/crossjax-0.1.0-py3-none-any.whl

Steps: create <remote-dir> on all workers, copy the wheel (if --wheel) and this repo's examples/ folder
to every worker, then `pip install jax[tpu]` and crossjax on every worker and check the import.
Every worker needs the same software: all of them run the training program.
"""

import sys

import _common as c


def build(args, forwarded):
    return c.setup_commands(args)


def main(argv=None):
    return c.main(__doc__, [c.add_target_args, c.add_install_args, c.add_remote_args], build, argv)


if __name__ == "__main__":
    sys.exit(main())
