#!/usr/bin/env python3
"""Copy a run's exported model (and CSVs) back to this machine.

Only process 0 (worker 0) writes the export, so a local --output on the workers is copied from
--worker=0; an output written to a bucket is copied with `gcloud storage cp --recursive`.

Examples:
  tpu/fetch.py --name crossjax-v4 --zone us-central2-b --remote-path crossjax/output/run1 --dest runs
  tpu/fetch.py --name crossjax-v4 --zone us-central2-b --gcs gs://MY_BUCKET/run1 --dest runs
"""

import sys

import _common as c


def build(args, forwarded):
    return c.fetch_commands(args)


def add_source(p):
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--remote-path",
        default=f"{c.DEFAULT_REMOTE_DIR}/output",
        help="output folder on worker 0, relative to $HOME unless absolute: the example's --output "
        "resolved against <remote-dir> (default: crossjax/output)",
    )
    src.add_argument("--gcs", help="gs:// URL the run wrote its --output to (copied instead of worker 0)")


def main(argv=None):
    return c.main(__doc__, [c.add_target_args, add_source, c.add_fetch_dest_args], build, argv)


if __name__ == "__main__":
    sys.exit(main())
