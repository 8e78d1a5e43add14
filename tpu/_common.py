"""Shared code of the Cloud TPU helper scripts in this folder (stdlib only).

Every script (create.py, setup.py, launch.py, fetch.py, delete.py, run_all.py) is a thin
wrapper: it picks which argument groups it needs from here and which command builder to
call. All gcloud command lines are built here, so the scripts print (``--dry-run``) or run
exactly the same commands.

Conventions:

* stdout carries only the commands (one per line, ``shlex.join``-quoted) in ``--dry-run``;
  notes and progress go to stderr.
* Without ``--dry-run`` each command runs with ``subprocess.run(check=True)``; the first
  failure stops the script with a one-line message and the command's exit status.
* Paths on the workers are relative to the login user's home directory unless absolute.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXAMPLE = "training_stsbenchmark.py"
DEFAULT_REMOTE_DIR = "crossjax"  # under $HOME on every worker
REMOTE_LOG_DIR = "crossjax-logs"  # under $HOME on every worker
DISTRIBUTED_ENV = ("CROSSJAX_DISTRIBUTED=1", "PYTHONUNBUFFERED=1")

GCLOUD_TPU = ("gcloud", "compute", "tpus")


# --------------------------------------------------------------------------- TPU types


@dataclasses.dataclass(frozen=True)
class Generation:
    key: str  # short name used in messages: v4, v5e, v5p, v6e
    api_prefix: str  # how the accelerator type is spelled for the TPU API: v4, v5litepod, ...
    runtime_version: str  # default --version / --runtime-version for JAX
    cores_per_chip: int  # the N in "vX-N" counts TensorCores (v4, v5p) or chips (v5e, v6e)
    chips_per_host: int  # chips on each host of a multi-host slice
    max_single_host_chips: int  # largest slice that is a single VM
    gke_accelerator: str  # value of the cloud.google.com/gke-tpu-accelerator node label


# Runtime versions from https://cloud.google.com/tpu/docs/runtimes ("PyTorch and JAX").
GENERATIONS = {
    "v4": Generation("v4", "v4", "tpu-ubuntu2204-base", 2, 4, 4, "tpu-v4-podslice"),
    "v5e": Generation("v5e", "v5litepod", "v2-alpha-tpuv5-lite", 1, 4, 8, "tpu-v5-lite-podslice"),
    "v5p": Generation("v5p", "v5p", "v2-alpha-tpuv5", 2, 4, 4, "tpu-v5p-slice"),
    "v6e": Generation("v6e", "v6e", "v2-alpha-tpuv6e", 1, 4, 8, "tpu-v6e-slice"),
}
# Accepted spellings of the generation part of an accelerator type.
_ALIASES = {"v4": "v4", "v5litepod": "v5e", "v5e": "v5e", "v5lite": "v5e", "v5p": "v5p", "v6e": "v6e"}
_CHIP_COUNTED_SIZES = (1, 4, 8, 16, 32, 64, 128, 256)  # valid v5e / v6e slice sizes

ACCELERATOR_HELP = (
    "TPU slice type: v4-N or v5p-N (N = TensorCores = 2 x chips, a multiple of 8, e.g. v4-16 = 8 chips "
    "on 2 hosts), v5litepod-N (alias v5e-N) or v6e-N (N = chips: 1, 4, 8, 16, ..., 256, e.g. "
    "v5litepod-16 = 16 chips on 4 hosts)"
)


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """A parsed ``--accelerator-type`` such as ``v4-16``."""

    generation: Generation
    size: int

    @property
    def name(self) -> str:
        """The accelerator type as the TPU API spells it (``v5e-16`` -> ``v5litepod-16``)."""
        return f"{self.generation.api_prefix}-{self.size}"

    @property
    def chips(self) -> int:
        return self.size // self.generation.cores_per_chip

    @property
    def hosts(self) -> int:
        g = self.generation
        return 1 if self.chips <= g.max_single_host_chips else self.chips // g.chips_per_host

    @property
    def chips_per_host(self) -> int:
        return self.chips // self.hosts

    @property
    def devices(self) -> int:
        """JAX devices in the slice: one per chip (v4 / v5p chips are one 'megacore' device)."""
        return self.chips

    def describe(self) -> str:
        return (
            f"{self.name}: {self.chips} chips on {self.hosts} host(s) x {self.chips_per_host} chips "
            f"= {self.devices} JAX devices; runtime version {self.generation.runtime_version}"
        )


def parse_accelerator(text: str) -> Accelerator:
    """argparse ``type=`` for ``--accelerator-type``; raises ArgumentTypeError with a clear message."""
    m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", text.strip().lower())
    key = _ALIASES.get(m.group(1)) if m else None
    if key is None:
        raise argparse.ArgumentTypeError(
            f"unknown TPU accelerator type {text!r}; expected {ACCELERATOR_HELP}"
        )
    gen, size = GENERATIONS[key], int(m.group(2))
    if gen.cores_per_chip == 2:
        ok = size >= 8 and size % 8 == 0
        rule = "a multiple of 8 (TensorCores; each host has 4 chips = 8 TensorCores)"
    else:
        ok = size in _CHIP_COUNTED_SIZES
        rule = "one of " + ", ".join(map(str, _CHIP_COUNTED_SIZES))
    if not ok:
        raise argparse.ArgumentTypeError(f"invalid size in {text!r}: for {gen.key} the number must be {rule}")
    return Accelerator(gen, size)


# --------------------------------------------------------------------------- steps and runner


class ToolError(Exception):
    """A user-facing failure: printed as one line, no traceback."""


@dataclasses.dataclass(frozen=True)
class Cmd:
    """One command line to run (or print)."""

    argv: tuple[str, ...]

    def __str__(self) -> str:
        return shlex.join(self.argv)


@dataclasses.dataclass(frozen=True)
class WaitActive:
    """Poll a queued resource until it is ACTIVE (the TPU VM exists and is ready)."""

    argv: tuple[str, ...]  # a `queued-resources describe ... --format=value(state.state)`
    timeout_s: float = 6 * 3600
    interval_s: float = 30

    def __str__(self) -> str:
        return shlex.join(self.argv)


@dataclasses.dataclass(frozen=True)
class LocalMkdir:
    path: str

    @property
    def argv(self) -> tuple[str, ...]:
        return ("mkdir", "-p", self.path)

    def __str__(self) -> str:
        return shlex.join(self.argv)


Step = Cmd | WaitActive | LocalMkdir


def note(msg: str) -> None:
    print(f"[crossjax-tpu] {msg}", file=sys.stderr, flush=True)


def run_steps(steps: Sequence[Step], dry_run: bool) -> None:
    """Print the steps (dry run) or run them in order, stopping at the first failure."""
    for step in steps:
        if dry_run:
            print(step, flush=True)
            if isinstance(step, WaitActive):
                note("(the command above is repeated until the state is ACTIVE)")
            continue
        note(f"+ {step}")
        if isinstance(step, LocalMkdir):
            if Path(step.path).exists() and not Path(step.path).is_dir():
                raise ToolError(f"{step.path} is a file; name a folder to copy into")
            Path(step.path).mkdir(parents=True, exist_ok=True)
        elif isinstance(step, WaitActive):
            _wait_active(step)
        else:
            _run(step.argv)


def _run(argv: Sequence[str], capture: bool = False) -> str:
    try:
        proc = subprocess.run(list(argv), check=True, text=True, stdout=subprocess.PIPE if capture else None)
    except FileNotFoundError as e:
        raise ToolError(f"{argv[0]!r} not found on PATH; install the Google Cloud CLI (gcloud) first") from e
    except subprocess.CalledProcessError as e:
        raise ToolError(f"command failed with exit status {e.returncode}: {shlex.join(argv)}") from e
    return proc.stdout or ""


def _wait_active(step: WaitActive) -> None:
    deadline = time.monotonic() + step.timeout_s
    while True:
        state = _run(step.argv, capture=True).strip()
        note(f"queued resource state: {state or '?'}")
        if state == "ACTIVE":
            return
        if state in ("FAILED", "SUSPENDING", "SUSPENDED"):
            raise ToolError(f"queued resource ended in state {state}; see `{shlex.join(step.argv[:-1])}`")
        if time.monotonic() > deadline:
            raise ToolError(f"queued resource not ACTIVE after {step.timeout_s:.0f} s (state {state})")
        time.sleep(step.interval_s)


# --------------------------------------------------------------------------- argument groups


_TPU_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def _tpu_name(text: str) -> str:
    if not _TPU_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid TPU name {text!r}: use lowercase letters, digits and hyphens, starting with a letter"
        )
    return text


def _remote_path(text: str) -> str:
    if not text or not re.fullmatch(r"[A-Za-z0-9._/~+-]+", text) or text.startswith("~"):
        raise argparse.ArgumentTypeError(
            f"invalid worker path {text!r}: use a path relative to the home directory or an absolute path "
            "(letters, digits, . _ / + - only)"
        )
    return text


def add_target_args(p: argparse.ArgumentParser) -> None:
    """--name --zone --project --dry-run: which TPU VM the script talks to."""
    p.add_argument("--name", required=True, type=_tpu_name, help="TPU VM (node) name, e.g. crossjax-v4-16")
    p.add_argument("--zone", required=True, help="zone of the TPU, e.g. us-central2-b")
    p.add_argument("--project", help="Google Cloud project (default: gcloud's configured project)")
    p.add_argument(
        "--dry-run", action="store_true", help="print the commands (one per line) instead of running them"
    )


def add_accelerator_arg(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--accelerator-type",
        required=required,
        type=parse_accelerator,
        metavar="TYPE",
        help=ACCELERATOR_HELP + ("" if required else "; optional, used to check batch sizes"),
    )


def add_queued_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--queued",
        action="store_true",
        help="use a queued resource (gcloud compute tpus queued-resources) instead of a plain TPU VM",
    )
    p.add_argument(
        "--queued-resource-id",
        metavar="ID",
        help="queued resource id (default: the same as --name; the TPU VM is --name)",
    )


def add_create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--version",
        help="TPU runtime software version (default from the generation: v4 tpu-ubuntu2204-base, "
        "v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)",
    )
    tier = p.add_mutually_exclusive_group()
    tier.add_argument(
        "--spot", action="store_true", help="Spot capacity: cheaper, can be preempted at any time"
    )
    tier.add_argument("--reserved", action="store_true", help="use your project's reserved capacity")
    p.add_argument(
        "--service-account", help="service account of the TPU VMs (needs write access to your bucket)"
    )
    p.add_argument(
        "--gcloud-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra flag passed verbatim to the create command, repeatable, written with '=': "
        "--gcloud-flag=--scopes=cloud-platform",
    )


def add_wait_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wait",
        action="store_true",
        help="with --queued: poll until the queued resource is ACTIVE (the TPU VM is ready)",
    )


def add_install_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--package",
        default="crossjax",
        help="pip requirement for crossjax, e.g. 'crossjax==0.1.0' or "
        "'crossjax @ git+https://github.com/ORG/crossjax@main' (default: crossjax)",
    )
    src.add_argument(
        "--wheel", help="local wheel file (python -m build) copied to every worker and installed"
    )
    p.add_argument(
        "--jax-spec", default="jax[tpu]", help="pip requirement for JAX on TPU (default: jax[tpu])"
    )
    p.add_argument(
        "--examples-dir",
        default=str(REPO_ROOT / "examples"),
        help="local folder copied to <remote-dir>/examples on every worker (default: this repo's examples/)",
    )
    p.add_argument("--no-examples", action="store_true", help="do not copy the examples folder")
    p.add_argument(
        "--check-devices",
        action="store_true",
        help="after installing, run jax.device_count() on all workers at once (prints the global count)",
    )


def add_remote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--remote-dir",
        default=DEFAULT_REMOTE_DIR,
        type=_remote_path,
        help="working folder on every worker, relative to $HOME unless absolute "
        f"(default: {DEFAULT_REMOTE_DIR})",
    )
    p.add_argument("--python", default="python3", help="Python interpreter on the workers (default: python3)")


def add_launch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--example",
        default=DEFAULT_EXAMPLE,
        help=f"example script in <remote-dir>/examples, or a path relative to <remote-dir> "
        f"(default: {DEFAULT_EXAMPLE})",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment variable for the run on every worker, repeatable (e.g. HF_HOME=/tmp/hf)",
    )


def add_fetch_dest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dest", default="tpu-output", help="local folder the export is copied into (default: tpu-output)"
    )
    p.add_argument("--logs", action="store_true", help="also copy worker 0's log folder (~/crossjax-logs)")


def add_delete_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="do not ask for confirmation (gcloud --quiet)")


# --------------------------------------------------------------------------- command builders


def _zone_project(args: argparse.Namespace) -> list[str]:
    out = ["--zone", args.zone]
    if args.project:
        out += ["--project", args.project]
    return out


def _qr_id(args: argparse.Namespace) -> str:
    return args.queued_resource_id or args.name


def ssh(args: argparse.Namespace, worker: str, command: str) -> Cmd:
    return Cmd(
        (
            *GCLOUD_TPU,
            "tpu-vm",
            "ssh",
            args.name,
            *_zone_project(args),
            f"--worker={worker}",
            "--command",
            command,
        )
    )


def scp(args: argparse.Namespace, worker: str, src: str, dst: str, recurse: bool = False) -> Cmd:
    extra = ("--recurse",) if recurse else ()
    return Cmd((*GCLOUD_TPU, "tpu-vm", "scp", *extra, src, dst, *_zone_project(args), f"--worker={worker}"))


def _shell_path(path: str) -> str:
    """A worker path for a shell command: relative paths are anchored at "$HOME"."""
    return shlex.quote(path) if path.startswith("/") else '"$HOME"/' + shlex.quote(path)


def _scp_path(args: argparse.Namespace, path: str) -> str:
    return f"{args.name}:{path}"  # scp resolves relative remote paths against $HOME


def create_commands(args: argparse.Namespace) -> list[Step]:
    acc: Accelerator = args.accelerator_type
    version = args.version or acc.generation.runtime_version
    tail = ["--accelerator-type", acc.name]
    tail += ["--runtime-version" if args.queued else "--version", version]
    tail += ["--spot"] if args.spot else ["--reserved"] if args.reserved else []
    tail += ["--service-account", args.service_account] if args.service_account else []
    tail += args.gcloud_flag
    if not args.queued:
        return [Cmd((*GCLOUD_TPU, "tpu-vm", "create", args.name, *_zone_project(args), *tail))]
    head = (*GCLOUD_TPU, "queued-resources", "create", _qr_id(args), "--node-id", args.name)
    steps: list[Step] = [Cmd((*head, *_zone_project(args), *tail))]
    if getattr(args, "wait", False):
        steps.append(queued_wait(args))
    return steps


def queued_wait(args: argparse.Namespace) -> WaitActive:
    describe = (*GCLOUD_TPU, "queued-resources", "describe", _qr_id(args), *_zone_project(args))
    return WaitActive((*describe, "--format=value(state.state)"))


def setup_commands(args: argparse.Namespace) -> list[Step]:
    remote = args.remote_dir.rstrip("/")
    steps: list[Step] = [ssh(args, "all", f"mkdir -p {_shell_path(remote)}")]
    if args.wheel:
        wheel = Path(args.wheel)
        if not wheel.name.endswith(".whl"):
            raise ToolError(f"--wheel must be a .whl file, got {args.wheel!r}")
        if not wheel.is_file():
            _missing(args, f"wheel {args.wheel!r} does not exist (build it with `python -m build --wheel`)")
        steps.append(scp(args, "all", str(wheel), _scp_path(args, f"{remote}/")))
        crossjax_req = f"{remote}/{wheel.name}" if remote.startswith("/") else f"$HOME/{remote}/{wheel.name}"
        crossjax_req = f'"{crossjax_req}"'
    else:
        crossjax_req = shlex.quote(args.package)
    if not args.no_examples:
        examples = Path(args.examples_dir)
        if not examples.is_dir():
            _missing(args, f"examples folder {args.examples_dir!r} does not exist (or pass --no-examples)")
        steps.append(scp(args, "all", _display_path(examples), _scp_path(args, f"{remote}/"), recurse=True))
    py = shlex.quote(args.python)
    install = " && ".join(
        [
            f"{py} -m pip install -q -U pip",
            f"{py} -m pip install -U {shlex.quote(args.jax_spec)}",
            f"{py} -m pip install -U {crossjax_req}",
            f"{py} -m pip install -U gcsfs",  # the examples' --output gs://... uploads the export with fsspec
            f"{py} -c " + shlex.quote('import crossjax, jax; print("crossjax OK, jax", jax.__version__)'),
        ]
    )
    steps.append(ssh(args, "all", install))
    if args.check_devices:
        probe = "import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())"
        steps.append(ssh(args, "all", f"{py} -c {shlex.quote(probe)}"))
    return steps


def _display_path(path: Path) -> str:
    """``path`` relative to the current directory when it is below it (shorter commands)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _missing(args: argparse.Namespace, msg: str) -> None:
    if not args.dry_run:
        raise ToolError(msg)
    note(f"warning: {msg}")


_BATCH_FLAG = re.compile(r"--[a-z0-9-]*batch-size")
# Examples whose --batch-size is PER DEVICE (the trainer's per_device_train_batch_size): any size fits a slice.
PER_DEVICE_BATCH_EXAMPLES = frozenset({"training_reranker.py"})
# The other examples' global --batch-size when none is given (examples/_common.py's parser; a test compares them)
EXAMPLE_DEFAULT_BATCH_SIZE = 16


def check_batch_sizes(acc: Accelerator | None, forwarded: Sequence[str], example: str = DEFAULT_EXAMPLE) -> None:
    """Global batch sizes must be divisible by the number of JAX devices of the slice; a per-device one (the
    examples in ``PER_DEVICE_BATCH_EXAMPLES``) only gets a note of the global size it makes."""
    if acc is None:
        return
    per_device = Path(example).name in PER_DEVICE_BATCH_EXAMPLES
    given = any(_BATCH_FLAG.fullmatch(tok.partition("=")[0]) for tok in forwarded)
    ours = "/" not in example and (REPO_ROOT / "examples" / example).is_file()
    if not given and not per_device and ours and EXAMPLE_DEFAULT_BATCH_SIZE % acc.devices:
        raise ToolError(
            f"{example}'s default --batch-size {EXAMPLE_DEFAULT_BATCH_SIZE} is the GLOBAL batch size and must be "
            f"divisible by the {acc.devices} JAX devices of {acc.name}: pass one after '--' (e.g. --batch-size "
            f"{_near_multiples(EXAMPLE_DEFAULT_BATCH_SIZE, acc.devices)})"
        )
    for i, tok in enumerate(forwarded):
        flag, _, value = tok.partition("=")
        if not _BATCH_FLAG.fullmatch(flag):
            continue
        if not value and i + 1 < len(forwarded):
            value = forwarded[i + 1]
        if per_device:
            if value.isdigit():
                note(f"{flag} {value} is per device: a global batch of {int(value) * acc.devices} on {acc.name}")
        elif value.isdigit() and int(value) % acc.devices:
            raise ToolError(
                f"{flag} {value} is the GLOBAL batch size and must be divisible by the {acc.devices} "
                f"JAX devices of {acc.name} (e.g. {_near_multiples(int(value), acc.devices)})"
            )


def _near_multiples(value: int, k: int) -> str:
    lo, hi = value // k * k, (value // k + 1) * k
    return f"{lo} or {hi}" if lo else str(hi)


def remote_run_command(args: argparse.Namespace, forwarded: Sequence[str], detach: bool = False) -> str:
    """The shell command every worker runs: the same command on all of them."""
    example = args.example if "/" in args.example else f"examples/{args.example}"
    stem = Path(example).stem
    if not re.fullmatch(r"[A-Za-z0-9._-]+", stem):
        raise ToolError(f"unsupported characters in example name {args.example!r}")
    for kv in args.env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", kv):
            raise ToolError(f"--env expects KEY=VALUE, got {kv!r}")
    env = [*DISTRIBUTED_ENV, *(shlex.quote(kv) for kv in args.env)]
    program = shlex.join([args.python, example, *forwarded])
    log = f'"$HOME/{REMOTE_LOG_DIR}/{stem}-$(hostname).log"'
    prefix = f'mkdir -p "$HOME/{REMOTE_LOG_DIR}" && cd {_shell_path(args.remote_dir.rstrip("/"))} && '
    if detach:
        return prefix + f"{' '.join(env)} nohup {program} > {log} 2>&1 < /dev/null &"
    return "set -o pipefail; " + prefix + f"{' '.join(env)} {program} 2>&1 | tee {log}"


def launch_commands(args: argparse.Namespace, forwarded: Sequence[str]) -> list[Step]:
    check_batch_sizes(getattr(args, "accelerator_type", None), forwarded, args.example)
    local = REPO_ROOT / "examples" / args.example
    if "/" not in args.example and not local.is_file():
        note(f"warning: {local} does not exist here; make sure the workers have examples/{args.example}")
    return [ssh(args, "all", remote_run_command(args, forwarded, detach=getattr(args, "detach", False)))]


def fetch_commands(args: argparse.Namespace) -> list[Step]:
    steps: list[Step] = [LocalMkdir(args.dest)]
    if args.gcs:
        if not args.gcs.startswith("gs://"):
            raise ToolError(f"--gcs must be a gs:// URL, got {args.gcs!r}")
        steps.append(Cmd(("gcloud", "storage", "cp", "--recursive", args.gcs.rstrip("/"), args.dest)))
    else:
        remote = args.remote_path.rstrip("/")
        steps.append(scp(args, "0", _scp_path(args, remote), args.dest, recurse=True))
    if args.logs:
        steps.append(scp(args, "0", _scp_path(args, REMOTE_LOG_DIR), args.dest, recurse=True))
    return steps


def delete_commands(args: argparse.Namespace) -> list[Step]:
    quiet = ["--quiet"] if args.quiet else []
    if args.queued:
        # --force also deletes the TPU VM the queued resource created.
        argv = (
            *GCLOUD_TPU,
            "queued-resources",
            "delete",
            _qr_id(args),
            *_zone_project(args),
            "--force",
            *quiet,
        )
    else:
        argv = (*GCLOUD_TPU, "tpu-vm", "delete", args.name, *_zone_project(args), *quiet)
    return [Cmd(argv)]


# --------------------------------------------------------------------------- entry point


def split_forwarded(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``[own args] -- [args forwarded to the example]``."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def main(
    description: str | None,
    arg_groups: Sequence[Callable[[argparse.ArgumentParser], None]],
    build: Callable[[argparse.Namespace, list[str]], list[Step]],
    argv: Sequence[str] | None = None,
    forwards: bool = False,
    epilog: str | None = None,
    on_error: Callable[[argparse.Namespace], None] | None = None,
) -> int:
    """Parse arguments, build the steps and print or run them. Returns the exit status."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for add in arg_groups:
        add(parser)
    own, forwarded = split_forwarded(sys.argv[1:] if argv is None else argv)
    if forwarded and not forwards:
        parser.error("unexpected arguments after '--'")
    if any(a == "--dry-run" or a.startswith("--dry-run=") for a in forwarded):
        # after '--' it would go to the example, and the commands themselves would run (and bill)
        parser.error("--dry-run after '--' would be passed to the example while the commands run: put it before '--'")
    args = parser.parse_args(own)
    try:
        steps = build(args, forwarded)
        run_steps(steps, args.dry_run)
    except ToolError as e:
        print(f"error: {e}", file=sys.stderr)
        if on_error is not None and not args.dry_run:
            on_error(args)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        if on_error is not None and not args.dry_run:
            on_error(args)
        return 130
    return 0
