"""Process-level rules shared by the library: which process writes, one progress-bar rule, and the
persistent XLA compilation cache.

Imports nothing heavy (jax is imported on first use), so evaluators and data code stay light.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("crossjax")

# Programs that take at least this long to compile are written to the persistent cache. JAX's default (1 s)
# is tuned for accelerators; on CPU the train steps of small models compile in about 0.5-5 s and their predict
# steps in 0.1-0.5 s (MiniLM's: 0.3 s of XLA, a third of the overhead of a first predict call). 0.1 s keeps
# those while still skipping the millisecond-sized programs of eager operations (each would cost a file in
# the cache and a disk read at start-up for a negligible saving); a cache hit costs ~0.01 s.
CACHE_MIN_COMPILE_SECONDS = 0.1
_OFF = ("0", "false", "off", "no", "none")
_ON = ("", "1", "true", "on", "yes")
_cache_lock = threading.Lock()
_cache_state: dict[str, Any] = {}


class LoggingHandler(logging.Handler):
    """sentence-transformers' ``LoggingHandler``: log records written above any progress bar (``tqdm.write``),
    for ``logging.basicConfig(handlers=[LoggingHandler()])`` in its example scripts."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record))
            self.flush()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:  # noqa: BLE001 - logging's convention: report, never raise
            self.handleError(record)


def is_main_process() -> bool:
    """Only process 0 of a multi-process run writes exports, CSV files, logs and progress bars."""
    import jax

    return jax.process_index() == 0


def show_progress_default(show_progress_bar: bool | None) -> bool:
    """None follows the logging level as sentence-transformers does (INFO or DEBUG -> on)."""
    if show_progress_bar is None:
        return logger.getEffectiveLevel() <= logging.INFO
    return bool(show_progress_bar)


def progress_bar(iterable: Any = None, *, enabled: bool | None, **tqdm_kwargs: Any) -> Any:
    """A tqdm bar over ``iterable`` (or a manual one when None); without a bar: the iterable itself, or None.

    Only process 0 of a multi-process run draws it.
    """
    if not (show_progress_default(enabled) and is_main_process()):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **tqdm_kwargs)


def default_compilation_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/crossjax/xla``, ``~/.cache/crossjax/xla`` when XDG_CACHE_HOME is unset or empty."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "crossjax" / "xla"


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache, once per process; return the directory in use (or None).

    crossjax calls it when it builds a train or predict step (so before its first compile). Precedence:

    1. ``CROSSJAX_COMPILATION_CACHE=0`` (or false/off/no): crossjax leaves JAX's configuration alone.
    2. A cache the user configured for JAX (``jax.config.jax_compilation_cache_dir``, the
       ``JAX_COMPILATION_CACHE_DIR`` variable) or ``jax_enable_compilation_cache=False``: respected as is.
    3. ``CROSSJAX_COMPILATION_CACHE=/some/dir``: that directory; unset (or 1/true/on): the default
       :func:`default_compilation_cache_dir`. Then the minimum compile time of a cached program is lowered to
       :data:`CACHE_MIN_COMPILE_SECONDS` unless ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` or the JAX option
       was set.

    Later changes of the variable in the same process have no effect (the first call decides).
    """
    with _cache_lock:
        if "dir" not in _cache_state:
            _cache_state["dir"] = _configure_compilation_cache()
        return _cache_state["dir"]


def _configure_compilation_cache() -> str | None:
    import jax

    setting = os.environ.get("CROSSJAX_COMPILATION_CACHE", "").strip()
    if setting.lower() in _OFF:
        logger.debug("CROSSJAX_COMPILATION_CACHE=%s: persistent compilation cache left to JAX's settings", setting)
        return None
    if not jax.config.jax_enable_compilation_cache:
        return None
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return str(configured)
    from_env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if from_env:  # set after JAX was imported (JAX reads it at import)
        directory = Path(from_env)
    elif setting.lower() in _ON:
        directory = default_compilation_cache_dir()
    else:
        directory = Path(setting).expanduser().absolute()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        logger.warning("persistent compilation cache disabled: cannot create %s (%s)", directory, e)
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    if not from_env:
        default = 1.0  # JAX's own default
        if (
            jax.config.jax_persistent_cache_min_compile_time_secs == default
            and "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ
        ):
            jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
    # JAX decides whether to use the cache at its first compile in the process; anything compiled before this
    # call (the user's own code, or model initialisation) made it decide "no": let it decide again.
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()
    logger.debug("persistent compilation cache: %s", directory)
    return str(directory)


def take_signal(signum: int, default: Any, handler: Callable) -> bool:
    """``handler`` for ``signum`` where the process has ``default`` for it (a program's own handler is kept) and
    this is the main thread (the only one Python lets set handlers); returns whether it was set."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signum) is not default:
        return False
    signal.signal(signum, handler)
    return True


class StepInterrupts:
    """Ctrl-C (SIGINT) held back while a step is inside the jitted call that donates the run's state, and raised
    once the call's outputs are assigned (:meth:`step_done`). Interrupted inside the call (JAX flattening its
    outputs), the donated buffers were already deleted and the new ones lost: the model was left holding deleted
    arrays, and predict, save and fit then failed with "Array has been deleted". Installed once for a run (a
    flag a step, not a handler swap); outside the call a Ctrl-C raises at once, as Python's own handler does.
    Only on the main thread, and only where SIGINT has Python's default handler (a program's own is kept)."""

    def __init__(self) -> None:
        self.inside = False
        self.pending = False
        self.installed = False

    def install(self) -> None:
        self.installed = take_signal(signal.SIGINT, signal.default_int_handler, self._handle)

    def uninstall(self) -> None:
        """Python's handler back; a Ctrl-C still held (a step call that raised) is dropped with a warning."""
        if self.installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.installed = False
        if self.pending:
            logger.warning("a Ctrl-C arrived while the run was already stopping")
        self.inside = self.pending = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.inside:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def step_done(self) -> None:
        self.inside = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


# The status a shell reports for a process that SIGTERM ended: what a preempted run exits with
PREEMPTED_EXIT_STATUS = 128 + int(signal.SIGTERM)


class TrainingPreempted(SystemExit):
    """``fit`` (and the trainer's ``train``) stopped on a preemption notice (SIGTERM) once the step it had reached
    was checkpointed. A ``SystemExit``: uncaught, the program ends quietly with status 143, as SIGTERM would have
    ended it, and a script's ``except Exception`` does not swallow it. Run the same script again to resume:
    ``checkpoint`` is the folder the run resumes from (None where the run kept no checkpoints), ``finished``
    says the notice came as the run was ending and it completed (its model is saved as usual)."""

    def __init__(
        self, global_step: int, checkpoint: str | None, finished: bool = False, how_to_resume: str | None = None
    ) -> None:
        super().__init__(PREEMPTED_EXIT_STATUS)
        self.global_step = global_step
        self.checkpoint = checkpoint
        self.finished = finished
        # what the message says after "checkpointed in FOLDER: "
        self.how_to_resume = how_to_resume or "run it again with the same checkpoint folder to resume from there"

    def __reduce__(self):  # pickled and copied by its fields (a process pool passes it back), not SystemExit's args
        return type(self), (self.global_step, self.checkpoint, self.finished, self.how_to_resume)

    def __str__(self) -> str:
        if self.finished:
            return f"a preemption notice (SIGTERM) came as the run ended: it completed its {self.global_step} steps"
        if self.checkpoint is None:
            return (
                f"a preemption notice (SIGTERM) stopped the run after step {self.global_step}; it kept no "
                "checkpoints, so a new run starts from the beginning"
            )
        return (
            f"a preemption notice (SIGTERM) stopped the run after step {self.global_step}, checkpointed in "
            f"{self.checkpoint}: {self.how_to_resume}"
        )


class PreemptionNotice:
    """A preemption notice turned into a stop at a step's end. Cloud schedulers (spot and preemptible VMs and TPU
    slices, Kubernetes, SLURM) send SIGTERM some seconds before they end a process, which would lose every step
    since the last checkpoint. In a ``jax.distributed`` run, JAX's own preemption service catches the signal on
    any process and the processes agree on one step to stop at (``reached_preemption_sync_point``, asked at
    every step: :meth:`reached`). In a single process, a handler notes the signal; only where ``watch`` (the run
    keeps checkpoints: otherwise there is nothing to save and SIGTERM ends the process as before), on the main
    thread, and over the default handler (a program's own is kept). A second SIGTERM ends the process as soon as
    Python handles it (two during one native call, a compile or a step, arrive as one)."""

    def __init__(self) -> None:
        self.noticed = False
        self.installed = False
        self.synced = False

    def install(self, watch: bool) -> None:
        import jax

        if jax.distributed.is_initialized():
            self.synced = True
        elif watch:
            self.installed = take_signal(signal.SIGTERM, signal.SIG_DFL, self._handle)

    def uninstall(self) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self.installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.noticed:  # a second notice: end now, as the first would have without this handler
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.noticed = True
        logger.warning("SIGTERM (a preemption notice): the run stops after this step, with a checkpoint")

    def reached(self, step: int) -> bool:
        """Whether the run stops after ``step`` (called once at the end of every step, with its number)."""
        if self.synced:
            from jax.experimental import multihost_utils

            try:
                self.noticed = self.noticed or multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # the preemption service is off (jax_enable_preemption_service=False)
                self.synced = False
        return self.noticed
