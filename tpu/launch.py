#!/usr/bin/env python3
"""Run a crossjax example on ALL workers of a TPU VM: the same command on every worker.

Examples:
  tpu/launch.py --name crossjax-v4 --zone us-central2-b --accelerator-type v4-16 --dry-run -- \\
      --output gs://MY_BUCKET/run1 --checkpoint-path gs://MY_BUCKET/run1-ckpt --batch-size 64

Everything after `--` is forwarded to the example. The command runs with CROSSJAX_DISTRIBUTED=1 (crossjax
calls jax.distributed.initialize(), which finds the other workers from the TPU metadata) and
PYTHONUNBUFFERED=1, in <remote-dir> on each worker, and tees its output to
~/crossjax-logs/<example>-<hostname>.log on that worker. Batch sizes are GLOBAL (all devices together);
with --accelerator-type they are checked to divide by the slice's device count (training_reranker.py's
--batch-size is per device: any size fits, and its global size is noted). Only process 0 writes
the exported model, CSVs and logs. Use --detach for long runs that should survive a dropped SSH session.
"""

import sys

import _common as c


def build(args, forwarded):
    if args.accelerator_type is not None:
        c.note(args.accelerator_type.describe())
    return c.launch_commands(args, forwarded)


def add_detach(p):
    p.add_argument(
        "--detach",
        action="store_true",
        help="start the run with nohup in the background on every worker and return; follow it with "
        "`tail -f ~/crossjax-logs/*.log` on a worker",
    )


def main(argv=None):
    groups = [
        c.add_target_args,
        lambda p: c.add_accelerator_arg(p, required=False),
        c.add_launch_args,
        c.add_remote_args,
        add_detach,
    ]
    return c.main(__doc__, groups, build, argv, forwards=True)


if __name__ == "__main__":
    sys.exit(main())
