"""Peak memory of PyTorch code on any device, CPU included, by following the life of every tensor storage.

`MemoryTracker` is a `TorchDispatchMode`: every ATen operator that runs in its thread while it is active (forward,
autograd backward, optimizer steps, custom `torch.library` operators such as bitsandbytes' kernels) passes through
it. Each output tensor's storage (`tensor.untyped_storage()`) that no input of the operator owns is a new
allocation: the tracker adds `storage.nbytes()` to its live bytes and keeps a weak reference to the storage whose
callback subtracts them again when the storage is freed. Storages have PyObject preservation in torch 2.x (the
Python storage object lives exactly as long as the C++ `StorageImpl`, whether or not Python still refers to it), so
the callback runs when the memory is released, not when the last Python name goes away (checked in
`tests/memory/test_tracker.py`). Views share their base's storage and so are counted once.

Storages alive before the tracker starts are counted only when they belong to its `roots` (modules: parameters,
their gradients, buffers and the tensors bitsandbytes hangs on them; optimizers: state and parameters; tensors
and their gradients; containers of these): that is the baseline. What the code allocates on top of it is followed
operator by operator, and `peak_bytes` is the largest sum ever reached (baseline included): what
`torch.cuda.max_memory_allocated` reports on a GPU, less the caching allocator's rounding to 512-byte blocks.

Custom operators whose kernel for the device is a Python composite (bitsandbytes' "default" kernels, e.g.
`int8_scaled_mm`, and on the CPU `int8_vectorwise_quant` and `gemm_4bit`) are opened (`open_composites`): their
kernel runs with the tracker on, so its temporaries are seen and marked (`StorageRecord.inside`). Such kernels can
differ by device (CUDA has fused kernels for some), so `peak_without(lambda r: r.inside is not None)` also gives
the peak without them.

What it does not see:
    - memory allocated outside tensor storages: scratch space that a kernel `malloc`s internally (oneDNN/MKL
      workspaces, bitsandbytes' C kernels, the CPU attention kernel's per-thread buffers), and temporaries of an
      operator's C++ implementation that never become tensors visible to the dispatcher;
    - allocator effects: fragmentation, caching (`max_memory_reserved`), CUDA's 512-byte rounding, the CUDA context;
    - tensors created without an ATen operator (`torch.frombuffer`, C++ code that allocates without dispatching)
      unless they are roots (`torch.tensor`, `torch.as_tensor` and `torch.from_numpy` are seen: they end with
      `aten.lift_fresh`); operators run in other threads; `UntypedStorage.resize_` (not an operator: a later
      operator that returns the storage updates its size); sparse and storage-less (wrapper subclass) tensors;
    - storages on other devices than `device`, and meta/fake tensors (their storage is on the meta device).
A storage that existed before the tracker started without being a root is never counted, even when it is freed or
modified in place inside; a storage allocated inside and still alive at the end stays counted (`current_bytes`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _pop_mode, _push_mode

BASELINE_PHASE = "baseline"
"""`StorageRecord.phase` of the storages counted from the roots when the tracker starts."""
_MAX_OBJECT_DEPTH = 4
_FRESH_OPS = frozenset({torch.ops.aten.lift_fresh.default})
"""Operators whose output is their input tensor, created just before without an operator (`torch.tensor`,
`torch.as_tensor` of Python data, `torch.from_numpy`): counted as new when that storage is unknown."""


@dataclass(frozen=True)
class StorageRecord:
    """One tracked storage.

    Attributes:
        nbytes: `storage.nbytes()` (bytes), the size counted.
        origin: `"root:<label>"` for a baseline storage, else the operator that created it (`"aten.mm.default"`,
            `"bitsandbytes.int8_scaled_mm.default"`).
        phase: the innermost phase active when it was created (`None` outside phases; `BASELINE_PHASE` for roots).
        shape: the shape of the first tensor seen on it (a view's shape can differ from the storage's size).
        dtype: that tensor's dtype.
        inside: the custom operator (opened with `open_composites`) whose composite kernel allocated it as a
            temporary, freed before that operator returned; `None` for everything else (an opened operator's
            outputs have `origin` set to the operator itself, as if it had not been opened).
    """

    nbytes: int
    origin: str
    phase: str | None
    shape: tuple[int, ...]
    dtype: torch.dtype
    inside: str | None = None


@dataclass
class PhaseStats:
    """What happened while one phase was active (all its entries together).

    Attributes:
        name: the phase label.
        calls: how many times it was entered.
        peak_bytes: the most live bytes (baseline included) while it was active, entry and exit included.
        entry_bytes: live bytes when it was first entered.
        seconds: wall-clock seconds spent in it (tracking overhead included).
        peak_event: index into the event history at its peak (for `live_at_peak`).
    """

    name: str
    calls: int = 0
    peak_bytes: int = 0
    entry_bytes: int = 0
    seconds: float = 0.0
    peak_event: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (without the event index)."""
        return {key: value for key, value in dataclasses.asdict(self).items() if key != "peak_event"}


@dataclass
class _Live:
    ref: weakref.ref
    record_id: int
    nbytes: int


@dataclass
class _Wrapped:
    owner: Any
    name: str
    had_own: bool
    previous: Any = field(default=None)


class MemoryTracker(TorchDispatchMode):
    """Follow the live bytes of tensor storages on `device` and record their peak, overall and per phase.

    Use it as a context manager around the code to measure; it is single-use and follows the thread that enters it:

        with MemoryTracker(roots={"model": model, "optimizer": optimizer}) as tracker:
            tracker.wrap(trainer, "generate", "generation")  # label an existing method, restored on exit
            with tracker.phase("training"):
                loss = model(batch).loss
                loss.backward()
        tracker.peak_bytes, tracker.phase_peaks, tracker.top_storages(5)

    Args:
        roots: objects whose storages alive at entry are the persistent baseline: modules, optimizers, tensors, or
            lists/tuples/dicts of them; a dict labels them (`StorageRecord.origin` is `"root:<key>"`).
        device: the device whose storages are counted (`"cpu"`, `"cuda"`, `"cuda:0"`: the index is ignored).
        history: keep every allocation and free (a few dozen bytes each), so that `live_at_peak` can list what was
            alive at the overall or a phase's peak.
        open_composites: run the Python composite kernels of custom operators (those with a
            CompositeExplicitAutograd kernel and none for `device`, e.g. bitsandbytes' `int8_scaled_mm` and, on the
            CPU, `gemm_4bit`: dequantize, then `linear`) with the tracker on, so that the temporaries they allocate
            and free are seen (marked by `StorageRecord.inside`). Off: such an operator is one step, only its outputs
            are counted.
    """

    def __init__(
        self, roots: Any = (), device: str | torch.device = "cpu", history: bool = True, open_composites: bool = True
    ) -> None:
        super().__init__()
        self.device_type = torch.device(device).type
        self.open_composites = open_composites
        self._device_key_name = {"cpu": "CPU", "cuda": "CUDA", "xpu": "XPU", "mps": "MPS"}.get(self.device_type, "")
        self._device_keys = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, self._device_key_name or "CPU"))
        self._open_cache: dict[Any, bool] = {}
        self._opened: list[str] = []
        self._roots = roots
        self._history = history
        self._live: dict[int, _Live] = {}
        self._records: list[StorageRecord] = []
        self._events: list[int] = []  # record id when allocated, ~record id when freed
        self._phase_stack: list[PhaseStats] = []
        self._phases: dict[str, PhaseStats] = {}
        self._wrapped: list[_Wrapped] = []
        self._state = "new"
        self.current_bytes = 0
        """Live bytes now (baseline included)."""
        self.peak_bytes = 0
        """The most live bytes reached since entry (baseline included)."""
        self.baseline_bytes = 0
        """Bytes of the roots' distinct storages at entry."""
        self.allocations = 0
        """Storages created by operators while active."""
        self._peak_event = 0

    # ------------------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> MemoryTracker:
        if self._state != "new":
            raise RuntimeError("a MemoryTracker can be entered once; make a new one")
        for label, tensor in _root_tensors(self._roots, label=None):
            storage = self._storage(tensor)
            if storage is not None:
                self._add(storage, f"root:{label}" if label else "root", BASELINE_PHASE, tensor)
        self.baseline_bytes = self.current_bytes
        self._state = "active"
        return super().__enter__()

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        try:
            super().__exit__(exc_type, exc_value, traceback)
        finally:
            self._state = "closed"
            self.restore()
            self._live.clear()  # drops the weak references: their callbacks never run

    def restore(self) -> None:
        """Put back every method replaced by `wrap` (latest first); done on exit."""
        while self._wrapped:
            wrapped = self._wrapped.pop()
            if wrapped.had_own:
                setattr(wrapped.owner, wrapped.name, wrapped.previous)
            else:
                delattr(wrapped.owner, wrapped.name)

    # ------------------------------------------------------------------------------------------------ phases
    @contextmanager
    def phase(self, name: str) -> Iterator[PhaseStats]:
        """Label what runs inside: its peak goes to `phase_peaks[name]` (phases nest; each active one is updated)."""
        stats = self._phases.get(name)
        if stats is None:
            stats = self._phases[name] = PhaseStats(name, entry_bytes=self.current_bytes)
        stats.calls += 1
        self._phase_stack.append(stats)
        self._raise_phase_peak(stats)
        start = time.perf_counter()
        try:
            yield stats
        finally:
            stats.seconds += time.perf_counter() - start
            self._raise_phase_peak(stats)
            del self._phase_stack[len(self._phase_stack) - 1 - self._phase_stack[::-1].index(stats)]

    def wrap(self, owner: Any, name: str, phase: str | Callable[[], str | None]) -> Callable[..., Any]:
        """Replace `owner.name` (a method or function attribute) by a wrapper that runs it in a phase, until the
        tracker exits or `restore` is called.

        Args:
            owner: the object (or class, or module) whose attribute is wrapped; the wrapper is set on it.
            name: the attribute.
            phase: the phase label, or a callable returning it at call time (`None`: no phase for that call), e.g.
                `lambda: "training_forward" if torch.is_grad_enabled() else "rollout"`.
        """
        original = getattr(owner, name)
        own = vars(owner) if hasattr(owner, "__dict__") else {}
        self._wrapped.append(_Wrapped(owner, name, name in own, own.get(name)))

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            label = phase() if callable(phase) else phase
            if label is None or self._state != "active":
                return original(*args, **kwargs)
            with self.phase(label):
                return original(*args, **kwargs)

        setattr(owner, name, wrapper)
        return wrapper

    @property
    def phase_peaks(self) -> dict[str, int]:
        """Phase -> the most live bytes (baseline included) while it was active."""
        return {name: stats.peak_bytes for name, stats in self._phases.items()}

    @property
    def phases(self) -> dict[str, PhaseStats]:
        """Phase -> its statistics."""
        return dict(self._phases)

    # ------------------------------------------------------------------------------------------------ what was live
    def live_at_peak(self, phase: str | None = None) -> list[StorageRecord]:
        """The storages alive at the overall peak (or at `phase`'s peak), largest first. Needs `history=True`.

        Raises:
            RuntimeError: the tracker keeps no history.
            KeyError: `phase` never ran.
        """
        if not self._history:
            raise RuntimeError("live_at_peak needs MemoryTracker(history=True)")
        end = self._peak_event if phase is None else self._phases[phase].peak_event
        live: set[int] = set()
        for event in self._events[:end]:
            if event >= 0:
                live.add(event)
            else:
                live.discard(~event)
        return sorted((self._records[i] for i in live), key=lambda record: record.nbytes, reverse=True)

    def top_storages(self, count: int = 10, phase: str | None = None) -> list[StorageRecord]:
        """The `count` largest storages alive at the overall (or `phase`'s) peak."""
        return self.live_at_peak(phase)[:count]

    def breakdown(
        self, phase: str | None = None, key: Callable[[StorageRecord], str] = lambda record: record.origin
    ) -> dict[str, int]:
        """Bytes alive at the overall (or `phase`'s) peak, summed by `key` (default: the creating operator or
        root), largest first."""
        totals: dict[str, int] = {}
        for record in self.live_at_peak(phase):
            totals[key(record)] = totals.get(key(record), 0) + record.nbytes
        return dict(sorted(totals.items(), key=lambda item: item[1], reverse=True))

    def peak_without(self, exclude: Callable[[StorageRecord], bool]) -> int:
        """The overall peak (bytes, baseline included) of the same run with the storages `exclude` accepts left out,
        replayed from the history; e.g. `peak_without(lambda r: r.inside is not None)` is the peak without the
        temporaries of opened composite kernels (what `open_composites=False` reports)."""
        if not self._history:
            raise RuntimeError("peak_without needs MemoryTracker(history=True)")
        current = peak = 0
        for event in self._events:
            record = self._records[event if event >= 0 else ~event]
            if not exclude(record):
                current += record.nbytes if event >= 0 else -record.nbytes
                peak = max(peak, current)
        return peak

    def summary(self) -> dict[str, Any]:
        """JSON-ready: device, baseline, peak and current bytes, allocations and every phase's statistics."""
        return {
            "device": self.device_type,
            "baseline_bytes": self.baseline_bytes,
            "peak_bytes": self.peak_bytes,
            "current_bytes": self.current_bytes,
            "allocations": self.allocations,
            "phases": {name: stats.to_dict() for name, stats in self._phases.items()},
        }

    # ------------------------------------------------------------------------------------------------ dispatch
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self._opens(func, args, kwargs):
            # A custom operator whose kernel on this device is its Python composite (bitsandbytes' "default"
            # kernels): run that kernel with the mode back on, so that its temporaries are seen too.
            self._opened.append(str(func))
            first_record = len(self._records)
            _push_mode(self)
            try:
                out = func.redispatch(self._device_keys, *args, **kwargs)
            finally:
                _pop_mode()
                self._opened.pop()
            self._label_outputs(out, str(func), first_record)
        else:
            out = func(*args, **kwargs)
        inputs: set[int] | None = None
        for tensor in _tensors(out):
            storage = self._storage(tensor)
            if storage is None:
                continue
            live = self._live.get(storage._cdata)
            if live is not None:
                if live.nbytes != storage.nbytes():  # resized in place (out=, resize_)
                    record = self._records[live.record_id]
                    self._remove(storage._cdata, live.record_id)
                    self._add(storage, record.origin, record.phase, tensor, record.inside)
                continue
            if inputs is None:
                fresh = func in _FRESH_OPS  # their input was just made outside the dispatcher: it is new too
                sources = () if fresh else _tensors((args, kwargs))
                inputs = {s._cdata for s in map(self._storage, sources) if s is not None}
            if storage._cdata not in inputs:  # else: a view of, or in place on, a storage from before the tracker
                self.allocations += 1
                phase = self._phase_stack[-1].name if self._phase_stack else None
                self._add(storage, str(func), phase, tensor, self._opened[-1] if self._opened else None)
        return out

    def _label_outputs(self, out: Any, func: str, first_record: int) -> None:
        """The storages an opened operator returns that its kernel allocated are its outputs, not temporaries."""
        for tensor in _tensors(out):
            storage = self._storage(tensor)
            live = self._live.get(storage._cdata) if storage is not None else None
            if live is not None and live.record_id >= first_record:
                record = self._records[live.record_id]
                self._records[live.record_id] = dataclasses.replace(record, origin=func, inside=None)

    def _opens(self, func: Any, args: tuple, kwargs: dict) -> bool:
        """Whether `func` is a non-ATen operator whose kernel for this device is a CompositeExplicitAutograd
        (Python) one (cached per operator), called on tensors of this device only."""
        opens = self._open_cache.get(func)
        if opens is None:
            namespace = getattr(func, "namespace", "aten")
            has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
            opens = (
                self.open_composites
                and namespace not in ("aten", "prim", "prims")
                and bool(self._device_key_name)
                and not has_kernel(func.name(), self._device_key_name)
                and has_kernel(func.name(), "CompositeExplicitAutograd")
            )
            self._open_cache[func] = opens
        return opens and all(tensor.device.type == self.device_type for tensor in _tensors((args, kwargs)))

    # ------------------------------------------------------------------------------------------------ bookkeeping
    def _storage(self, tensor: torch.Tensor) -> torch.UntypedStorage | None:
        if tensor.device.type != self.device_type or tensor.is_sparse:
            return None
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):  # wrapper subclasses without storage
            return None
        return storage if storage.device.type == self.device_type else None

    def _add(
        self,
        storage: torch.UntypedStorage,
        origin: str,
        phase: str | None,
        tensor: torch.Tensor,
        inside: str | None = None,
    ) -> None:
        key = storage._cdata
        if key in self._live:
            return
        nbytes = storage.nbytes()
        record_id = len(self._records)
        self._records.append(StorageRecord(nbytes, origin, phase, tuple(tensor.shape), tensor.dtype, inside))
        callback = functools.partial(_on_free, weakref.ref(self), key, record_id)
        self._live[key] = _Live(weakref.ref(storage, callback), record_id, nbytes)
        if self._history:
            self._events.append(record_id)
        self.current_bytes += nbytes
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes = self.current_bytes
            self._peak_event = len(self._events)
        for stats in self._phase_stack:
            self._raise_phase_peak(stats)

    def _remove(self, key: int, record_id: int) -> None:
        live = self._live.get(key)
        if live is None or live.record_id != record_id:
            return
        del self._live[key]
        self.current_bytes -= live.nbytes
        if self._history:
            self._events.append(~record_id)

    def _raise_phase_peak(self, stats: PhaseStats) -> None:
        if self.current_bytes > stats.peak_bytes:
            stats.peak_bytes = self.current_bytes
            stats.peak_event = len(self._events)


def _on_free(tracker_ref: weakref.ref, key: int, record_id: int, _storage_ref: weakref.ref) -> None:
    """Weak-reference callback: the storage `key` was freed."""
    tracker = tracker_ref()
    if tracker is not None and tracker._state != "closed":
        tracker._remove(key, record_id)


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors in an operator's arguments or outputs (nested tuples, lists and dicts)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _root_tensors(value: Any, label: str | None, depth: int = 0) -> Iterator[tuple[str | None, torch.Tensor]]:
    """`(label, tensor)` for every tensor reachable from a root (see `MemoryTracker`'s `roots`).

    Raises:
        TypeError: a root that is none of a tensor, module, optimizer or container of them.
    """
    if isinstance(value, torch.Tensor):
        yield label, value
        yield from ((label, t) for t in _tensor_attributes(value))
    elif isinstance(value, torch.nn.Module):
        for module in value.modules():
            for tensor in (*module._parameters.values(), *module._buffers.values()):
                if tensor is not None:
                    yield label, tensor
                    yield from ((label, t) for t in _tensor_attributes(tensor))
            for name, attribute in vars(module).items():
                if name not in ("_parameters", "_buffers", "_modules"):
                    yield from ((label, t) for t in _attached_tensors(attribute, 0))
    elif isinstance(value, torch.optim.Optimizer):
        for state in value.state.values():
            yield from _root_tensors(state, label, depth + 1)
        for group in value.param_groups:
            yield from _root_tensors(group["params"], label, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _root_tensors(item, str(key) if depth == 0 and label is None else label, depth + 1)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            yield from _root_tensors(item, label, depth + 1)
    elif value is not None and not isinstance(value, (int, float, str, bool)):
        raise TypeError(f"MemoryTracker roots: cannot find tensors in a {type(value).__name__}")


def _tensor_attributes(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """A root tensor's gradient and the tensors stored as its attributes: bitsandbytes' `Int8Params.CB`/`SCB`,
    `Params4bit.quant_state`."""
    if tensor.is_leaf and tensor.grad is not None:
        yield tensor.grad
    for item in getattr(tensor, "__dict__", {}).values():
        yield from _attached_tensors(item, 1)


def _attached_tensors(value: Any, depth: int) -> Iterator[torch.Tensor]:
    """Tensors in a module or tensor attribute: tensors (and their own attributes), containers, dataclasses and
    bitsandbytes objects (`QuantState`: absmax, code, nested state; `MatmulLtState`: CB, SCB), `depth` levels deep
    at most; modules are left to `Module.modules()`."""
    if depth > _MAX_OBJECT_DEPTH or isinstance(value, (torch.nn.Module, type)):
        return
    if isinstance(value, torch.Tensor):
        yield value
        for item in getattr(value, "__dict__", {}).values():
            yield from _attached_tensors(item, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _attached_tensors(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _attached_tensors(item, depth + 1)
    elif dataclasses.is_dataclass(value) or type(value).__module__.startswith("bitsandbytes"):
        for item in getattr(value, "__dict__", {}).values():
            yield from _attached_tensors(item, depth + 1)


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages of `tensors` (views of one storage counted once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
    return sum(seen.values())
