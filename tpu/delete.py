#!/usr/bin/env python3
"""Delete the TPU VM (or, with --queued, the queued resource and the TPU VM it created).

Examples:
  tpu/delete.py --name crossjax-v4 --zone us-central2-b --quiet
  tpu/delete.py --name crossjax-v5e --zone us-west4-a --queued --quiet

A TPU bills until it is deleted; after a Spot / preempted queued resource is SUSPENDED it must also be
deleted before a new one with the same id can be created.
"""

import sys

import _common as c


def build(args, forwarded):
    return c.delete_commands(args)


def main(argv=None):
    return c.main(__doc__, [c.add_target_args, c.add_queued_args, c.add_delete_args], build, argv)


if __name__ == "__main__":
    sys.exit(main())
