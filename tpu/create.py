#!/usr/bin/env python3
"""Create a Cloud TPU VM (or a queued resource that creates it) for crossjax.

Examples:
  tpu/create.py --name crossjax-v4 --zone us-central2-b --accelerator-type v4-16 --dry-run
  tpu/create.py --name crossjax-v5e --zone us-west4-a --accelerator-type v5litepod-16 --queued --spot --wait

--version defaults to the runtime for the generation (v4: tpu-ubuntu2204-base, v5e: v2-alpha-tpuv5-lite,
v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e). A queued resource returns at once and becomes ACTIVE when
capacity is free; --wait polls until then.
"""

import sys

import _common as c


def build(args, forwarded):
    c.note(args.accelerator_type.describe())
    return c.create_commands(args)


def main(argv=None):
    groups = [
        c.add_target_args,
        lambda p: c.add_accelerator_arg(p, required=True),
        c.add_create_args,
        c.add_queued_args,
        c.add_wait_arg,
    ]
    return c.main(__doc__, groups, build, argv)


if __name__ == "__main__":
    sys.exit(main())
