"""Devices, hosts and shardings: one ``Mesh`` over every device of every process.

The global batch is split over the ``data`` axis; parameters and optimizer state are replicated
(``sharding="replicated"``) or sharded over the same axis (``sharding="fsdp"``, ZeRO-3 style). Multi-host
runs use JAX's own runtime: :func:`initialize_distributed` wraps ``jax.distributed.initialize``.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger("crossjax")

DATA_AXIS = "data"
SHARDING_MODES = ("replicated", "fsdp")
# Arrays smaller than this stay replicated under fsdp: sharding them saves nothing and costs collectives.
FSDP_MIN_SIZE = 2**14


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: list[int] | None = None,
) -> bool:
    """Join a multi-process run through ``jax.distributed.initialize``; return True if it did.

    Call it once, before anything touches JAX devices (the examples do, from their ``--coordinator-address``
    / ``--num-processes`` / ``--process-id`` flags). With explicit arguments they are passed through. Without
    them it joins only when ``CROSSJAX_DISTRIBUTED=1`` is set, and JAX discovers coordinator, process count
    and id itself on the clusters it knows (TPU pod slices, SLURM, ...); ``JAX_COORDINATOR_ADDRESS`` sets only
    the coordinator (elsewhere pass ``num_processes`` and ``process_id``). Nothing in crossjax calls it
    implicitly, except :func:`make_mesh` when ``CROSSJAX_DISTRIBUTED=1`` is set. Calling it twice is harmless.
    """
    if jax.distributed.is_initialized():
        return True
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if not explicit and not distributed_requested():
        return False
    if coordinator_address is None and os.environ.get("JAX_COORDINATOR_ADDRESS"):
        coordinator_address = os.environ["JAX_COORDINATOR_ADDRESS"]
    kwargs = {}
    # CPU devices of different processes need a collectives implementation to talk to each other (older JAX
    # has none by default). Set it whatever the platform: JAX_PLATFORMS is often unset on CPU-only machines,
    # and on GPU/TPU hosts it only concerns the CPU backend. An explicit choice (e.g. "mpi") is kept.
    try:
        if getattr(jax.config, "jax_cpu_collectives_implementation", None) in (None, "", "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # noqa: BLE001 - a JAX without the option
        pass
    if local_device_ids is not None:
        kwargs["local_device_ids"] = local_device_ids
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id, **kwargs
    )
    logger.info(
        "jax.distributed initialised: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def distributed_requested() -> bool:
    """True when the environment asks crossjax to join a multi-process run (``CROSSJAX_DISTRIBUTED=1``)."""
    return os.environ.get("CROSSJAX_DISTRIBUTED", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class MeshPlan:
    """The mesh and the shardings a run uses; ``data_shards`` is how many ways the batch is split."""

    mesh: Mesh
    mode: str = "replicated"

    @property
    def data_shards(self) -> int:
        return int(self.mesh.shape[DATA_AXIS])

    @property
    def local_data_shards(self) -> int:
        """The batch's shards on this process's devices (the mesh's data shards times its share of them)."""
        devices = list(self.mesh.devices.flat)
        local = sum(1 for d in devices if d.process_index == jax.process_index())
        return max(1, self.data_shards * local // len(devices))

    @property
    def batch(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def param_sharding(self, array) -> NamedSharding:
        """Replicated, or under fsdp the largest axis divisible by the shard count is split."""
        if self.mode != "fsdp" or array.ndim == 0 or np.prod(array.shape) < FSDP_MIN_SIZE:
            return self.replicated
        axes = sorted(range(array.ndim), key=lambda i: -array.shape[i])
        for axis in axes:
            if array.shape[axis] % self.data_shards == 0:
                spec = [None] * array.ndim
                spec[axis] = DATA_AXIS
                return NamedSharding(self.mesh, PartitionSpec(*spec))
        return self.replicated

    def state_shardings(self, tree):
        return jax.tree.map(self.param_sharding, tree)

    def __reduce__(self) -> tuple:
        """Pickled as its devices' platforms and ids (a JAX device object cannot be pickled; CPU and GPU devices
        are both numbered from 0), found again when unpickled."""
        ids = tuple((d.platform, int(d.id)) for d in self.mesh.devices.reshape(-1))
        return _mesh_plan_of_device_ids, (ids, self.mode)

    def __deepcopy__(self, memo: dict) -> MeshPlan:
        return self  # frozen, over immutable devices: a copied model runs on the same ones

    def check_batch_size(self, batch_size: int, what: str = "batch_size") -> None:
        n = self.data_shards
        if batch_size % n:
            ok = [b for b in range(n, 8 * n + 1, n)][:6]
            raise ValueError(
                f"{what}={batch_size} is the global batch size and must divide by the {n} data shards "
                f"(devices) of the mesh; sizes that work: {', '.join(map(str, ok))}, ..."
            )
        if batch_size % jax.process_count():
            raise ValueError(
                f"{what}={batch_size} must divide by the number of processes {jax.process_count()}"
            )


def devices_for(device: Any) -> list | None:
    """sentence-transformers' ``device`` argument as JAX devices: None (every device of the default backend),
    "cpu", "cuda"/"gpu", "tpu" (every device of that platform) or "cuda:N"/"tpu:N" (that one device).

    A platform JAX has no backend for is a clear error instead of a silent fall-back to another one.
    """
    if device is None:
        return None
    spec = str(device).strip().lower()  # also torch.device("cuda:0")
    platform, _, index = spec.partition(":")
    platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
    if platform not in ("cpu", "gpu", "tpu"):
        raise ValueError(
            f"device={device!r} has no JAX backend; use 'cpu', 'cuda' (or 'gpu'), 'tpu', or e.g. 'cuda:0'"
        )
    try:
        found = jax.devices(platform)
    except RuntimeError as e:
        raise RuntimeError(
            f"device={device!r} was asked for, but JAX has no {platform.upper()} backend here "
            f"(available: {sorted({d.platform for d in jax.devices()})}). Install the matching jax build "
            "(e.g. `pip install -U 'jax[cuda12]'`, `'jax[tpu]'`) or pass device=None."
        ) from e
    if not index:
        return found
    if jax.process_count() > 1:  # torch's per-process "cuda:0" habit: here one mesh spans all processes' devices
        raise ValueError(
            f"device={device!r} names one device, but this run has {jax.process_count()} processes and its mesh "
            f"spans the devices of all of them: pass device=None or {platform!r}"
        )
    if not index.isdigit() or int(index) >= len(found):
        raise ValueError(f"device={device!r}: there are {len(found)} {platform} device(s), numbered from 0")
    return [found[int(index)]]


def make_mesh(sharding: str = "replicated", devices: Any = None) -> MeshPlan:
    """A 1-D ``data`` mesh over all devices of all processes, or over ``devices``: a list of JAX devices or a
    sentence-transformers ``device`` string (see :func:`devices_for`)."""
    if sharding not in SHARDING_MODES:
        raise ValueError(f"sharding={sharding!r} is not one of {SHARDING_MODES}")
    if distributed_requested():
        initialize_distributed()
    if devices is None or isinstance(devices, str) or not isinstance(devices, (list, tuple, np.ndarray)):
        devices = devices_for(devices)
    devices = np.asarray(jax.devices() if devices is None else devices)
    return MeshPlan(Mesh(devices.reshape(-1), (DATA_AXIS,)), sharding)


@functools.cache
def _replicator(sharding: NamedSharding):
    return jax.jit(lambda tree: tree, out_shardings=sharding)


def host_copy(tree, plan: MeshPlan, keep: bool = True):
    """``tree``'s arrays copied to host memory whole (fsdp shards joined), one array at a time, so no device
    ever holds a second whole copy of the model. An array spanning other processes' devices cannot be fetched
    whole: it is first replicated on the mesh (collective: every process calls this, in the same order).
    ``keep=False`` (processes that only take part in the collective) returns None."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = _replicator(plan.replicated)(x)
        return np.asarray(jax.device_get(x)) if keep else None

    copied = jax.tree.map(one, tree)
    return copied if keep else None


def _mesh_plan_of_device_ids(ids: tuple[tuple[str, int], ...], mode: str) -> MeshPlan:
    by_id = {}
    for platform in sorted({platform for platform, _ in ids}):
        try:
            by_id.update({(platform, int(d.id)): d for d in jax.devices(platform)})
        except RuntimeError:  # no such backend in this process
            pass
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise RuntimeError(
            f"this object was pickled on devices {list(ids)}, and this process has no device with id {missing}: "
            "save() it and load the folder instead"
        )
    return MeshPlan(Mesh(np.asarray([by_id[i] for i in ids]), (DATA_AXIS,)), mode)


def put_global(tree, shardings):
    """``jax.device_put`` onto mesh shardings that also works when the mesh spans several processes.

    ``shardings`` is one sharding for every leaf or a tree of them. In a multi-process run every process
    must hold the same host value of each leaf (true for parameters loaded from one checkpoint and for
    seeded RNG keys); each process then fills only its own devices' shards from it, without the per-leaf
    cross-process equality check ``device_put`` makes, and also for arrays already committed to a local
    device (which ``device_put`` refuses to move onto non-addressable devices). Typed PRNG keys keep their
    type; arrays that are already global are resharded by a jitted identity.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: _put_global_leaf(x, shardings), tree)
    return jax.tree.map(_put_global_leaf, tree, shardings)


def _put_global_leaf(x, sharding):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x if x.sharding == sharding else jax.jit(lambda a: a, out_shardings=sharding)(x)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _put_global_leaf(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def processes_differing(codes: list[int]) -> list[list[int]]:
    """For each of ``codes`` (digests of what every process must hold alike; their low 31 bits are compared, as
    JAX gathers int32 unless 64-bit mode is on), the processes whose value is not process 0's: one all-gather,
    so every process learns the same answer; nothing differs in a single-process run."""
    if jax.process_count() == 1:
        return [[] for _ in codes]
    every = _every_process([code & 0x7FFFFFFF for code in codes])
    return [np.flatnonzero(column != column[0]).tolist() for column in every.T]


def processes_flagged(flag: bool) -> list[int]:
    """The processes whose ``flag`` is set (one all-gather: every process learns the same list), so that a
    refusal one process finds on its own stops every process, instead of leaving the others in a collective."""
    if jax.process_count() == 1:
        return [0] if flag else []
    return np.flatnonzero(_every_process([int(bool(flag))])[:, 0]).tolist()


def _every_process(values: list[int]) -> np.ndarray:
    """(processes, len(values)) int32: every process's ``values``, gathered."""
    from jax.experimental import multihost_utils

    local = np.array(values, np.int32)
    return np.asarray(multihost_utils.process_allgather(local)).reshape(jax.process_count(), len(values))


def local_values_digest(tree) -> int:
    """A 64-bit digest of the values of ``tree``'s arrays that this process holds whole (arrays already spread
    over several processes are left out: they are one array by construction)."""
    import hashlib

    digest = hashlib.blake2b(digest_size=8)
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            continue
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        host = np.ascontiguousarray(np.asarray(leaf))
        digest.update(str((host.shape, host.dtype.str)).encode())
        digest.update(host.view(np.uint8).reshape(-1))
    return int.from_bytes(digest.digest(), "little")


def process_rows(sharding: NamedSharding, global_rows: int) -> np.ndarray:
    """The global batch rows this process's devices hold under ``sharding``, in the order in which
    ``jax.make_array_from_process_local_data`` expects them (ascending; replicas counted once)."""
    index_map = sharding.addressable_devices_indices_map((global_rows,))
    blocks = sorted({idx[0].indices(global_rows)[:2] for idx in index_map.values()})
    return np.concatenate([np.arange(start, stop) for start, stop in blocks])


def global_batch_array(local_rows: np.ndarray, sharding: NamedSharding, global_rows: int):
    """Assemble a global array from this process's rows (:func:`process_rows`; multi-host safe)."""
    global_shape = (global_rows, *local_rows.shape[1:])
    if jax.process_count() == 1:
        return jax.device_put(local_rows, sharding)
    return jax.make_array_from_process_local_data(sharding, local_rows, global_shape)
