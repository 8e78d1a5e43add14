#!/usr/bin/env python3
"""Whole run in one go: create -> (wait for queued resource) -> setup -> launch -> fetch -> delete.

Example (prints the whole chain; drop --dry-run to run it):
  tpu/run_all.py --name crossjax-v4 --zone us-central2-b --accelerator-type v4-16 \\
      --output gs://MY_BUCKET/run1 --dry-run -- --checkpoint-path gs://MY_BUCKET/run1-ckpt --batch-size 64

--output is given to the example (as `--output OUTPUT`) and decides what is fetched: a gs:// URL is
copied from the bucket, a worker path (relative to <remote-dir>) is copied from worker 0. Everything
after `--` is forwarded to the example. The TPU is deleted at the end unless --keep; if a step fails the
script stops and prints the command that deletes the TPU, which keeps billing until deleted.
"""

import shlex
import sys

import _common as c


def add_run_all_args(p):
    p.add_argument(
        "--output",
        default="output/run",
        help="the example's --output: gs://BUCKET/PATH, or a path on worker 0 relative to <remote-dir> "
        "(default: output/run)",
    )
    p.add_argument("--keep", action="store_true", help="do not delete the TPU at the end")


def _prepare(args):
    args.wait = True  # setup needs the VM of a queued resource to exist
    args.quiet = True  # no confirmation prompt in an unattended chain
    args.detach = False  # fetch must wait for the end of training
    if args.output.startswith("gs://"):
        args.gcs, args.remote_path = args.output, None
    else:
        out = args.output.rstrip("/")
        args.gcs = None
        args.remote_path = out if out.startswith("/") else f"{args.remote_dir.rstrip('/')}/{out}"


def build(args, forwarded):
    if any(tok == "--output" or tok.startswith("--output=") for tok in forwarded):
        raise c.ToolError("give --output to run_all.py (before `--`), not to the example")
    _prepare(args)
    c.note(args.accelerator_type.describe())
    steps = c.create_commands(args)
    steps += c.setup_commands(args)
    steps += c.launch_commands(args, ["--output", args.output, *forwarded])
    steps += c.fetch_commands(args)
    if not args.keep:
        steps += c.delete_commands(args)
    return steps


def on_error(args):
    if getattr(args, "keep", False):
        return
    args.quiet = True
    cmd = c.delete_commands(args)[0]
    c.note(f"stopped. If the TPU was created it is still billing; delete it with:\n  {shlex.join(cmd.argv)}")


def main(argv=None):
    groups = [
        c.add_target_args,
        lambda p: c.add_accelerator_arg(p, required=True),
        c.add_create_args,
        c.add_queued_args,
        c.add_install_args,
        c.add_remote_args,
        c.add_launch_args,
        c.add_fetch_dest_args,
        add_run_all_args,
    ]
    return c.main(__doc__, groups, build, argv, forwards=True, on_error=on_error)


if __name__ == "__main__":
    sys.exit(main())
