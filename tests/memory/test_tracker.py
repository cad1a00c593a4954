"""`stackrlhf.memory.MemoryTracker` against hand-computed storage bytes on the CPU.

Every expected figure is derived in the test from shapes and dtypes (float32: 4 bytes per element); most match to
the byte, the rest within 1%.
"""

import gc
import weakref

import pytest
import torch

from stackrlhf.memory import BASELINE_PHASE, MemoryTracker, storage_bytes

F32 = 4


def nbytes(*shapes: tuple[int, ...], size: int = F32) -> int:
    """Bytes of tensors of `shapes` with `size`-byte elements."""
    total = 0
    for shape in shapes:
        count = 1
        for dim in shape:
            count *= dim
        total += count * size
    return total


def test_storage_weakref_dies_with_the_storage_not_with_the_python_object():
    """The premise of the tracker: torch 2.x preserves a storage's Python object while the C++ storage lives, so a
    weak reference to it dies exactly when the memory is released (here: when the last view goes)."""
    tensor = torch.zeros(1000)
    view = tensor[10:]
    storage = tensor.untyped_storage()
    died = []
    ref = weakref.ref(storage, lambda _: died.append(True))
    assert view.untyped_storage() is storage
    del storage
    gc.collect()
    assert ref() is not None and not died  # only the Python name went away
    del tensor
    assert not died  # the view keeps the storage
    del view
    assert died and ref() is None


def test_matmul_of_inputs_created_inside():
    with MemoryTracker() as tracker:
        a = torch.randn(256, 512)
        b = torch.randn(512, 128)
        out = a @ b
    assert out.shape == (256, 128)
    assert tracker.baseline_bytes == 0
    assert tracker.peak_bytes == nbytes((256, 512), (512, 128), (256, 128))
    assert tracker.current_bytes == tracker.peak_bytes
    assert [(record.origin, record.shape) for record in tracker.live_at_peak()] == [
        ("aten.randn.default", (256, 512)),
        ("aten.randn.default", (512, 128)),
        ("aten.mm.default", (256, 128)),
    ]


def test_views_are_counted_once_and_frees_are_seen():
    with MemoryTracker() as tracker:
        base = torch.randn(1000, 100)
        views = [base[10:], base.view(100, 1000), base.t(), base[:, 0], base.reshape(-1)]
        assert tracker.current_bytes == nbytes((1000, 100))
        copy = base.t().contiguous()  # a new storage
        assert tracker.current_bytes == 2 * nbytes((1000, 100))
        del base
        assert tracker.current_bytes == 2 * nbytes((1000, 100))  # the views keep it
        del views
        assert tracker.current_bytes == nbytes((1000, 100))
        del copy
        assert tracker.current_bytes == 0
    assert tracker.peak_bytes == 2 * nbytes((1000, 100))
    assert storage_bytes([torch.zeros(10)[2:], torch.zeros(3)]) == nbytes((10,), (3,))


def test_in_place_ops_and_tensors_from_before_the_tracker_are_not_counted():
    outside = torch.zeros(1000)
    with MemoryTracker() as tracker:
        outside.add_(1)  # in place on a storage from before: not an allocation
        view = outside[:10]
        made = torch.tensor([1.0, 2.0])  # torch.tensor ends with aten.lift_fresh: seen
        del outside, view  # freed inside, never counted: nothing to subtract
        assert tracker.current_bytes == nbytes((2,))
        resized = torch.empty(0)
        resized.resize_(500)  # grows in place
        assert tracker.current_bytes == nbytes((2,), (500,))
    assert made.sum() == 3 and tracker.allocations == 2


def test_linear_forward_and_backward():
    """`y = x W^T + b` for x (N, in): addmm saves x and W (already counted) and not its output, so the graph keeps
    nothing new; the backward pass creates grad_x = g W (N, in), grad_W = g^T x (out, in) and grad_b = sum(g) (out)."""
    n, d_in, d_out = 64, 512, 256
    linear = torch.nn.Linear(d_in, d_out)
    params = nbytes((d_out, d_in), (d_out,))
    with MemoryTracker(roots={"linear": linear}) as tracker:
        x = torch.randn(n, d_in, requires_grad=True)
        with tracker.phase("forward"):
            y = linear(x)
        assert tracker.current_bytes == params + nbytes((n, d_in), (n, d_out))
        g = torch.randn(n, d_out)
        with tracker.phase("backward"):
            y.backward(g)
        grads = nbytes((n, d_in), (d_out, d_in), (d_out,))
        assert tracker.current_bytes == params + nbytes((n, d_in), (n, d_out), (n, d_out)) + grads
        del y
        assert tracker.current_bytes == params + nbytes((n, d_in), (n, d_out)) + grads
        # The output is not saved for backward: once the loss is all that is left, x and the scalar remain.
        loss = linear(x).sum()
        assert tracker.current_bytes == params + nbytes((n, d_in), (n, d_out)) + grads + F32
    assert tracker.baseline_bytes == params
    assert {record.origin for record in tracker.live_at_peak() if record.phase == BASELINE_PHASE} == {"root:linear"}
    assert tracker.phase_peaks["forward"] == params + nbytes((n, d_in), (n, d_out))
    assert tracker.phase_peaks["backward"] == params + nbytes((n, d_in), (n, d_out), (n, d_out)) + grads
    backward_ops = {record.origin for record in tracker.live_at_peak("backward") if record.phase == "backward"}
    assert backward_ops == {"aten.mm.default", "aten.sum.dim_IntList"}  # ops run by autograd are seen
    assert loss.requires_grad


@pytest.mark.parametrize("foreach", [False, True])
def test_adam_step(foreach):
    """Adam on two parameters P1 (300x100), P2 (500x100) with their gradients as roots. The step allocates the
    float32 `step` counters (4 bytes each), exp_avg and exp_avg_sq (2 x params) and temporaries:
    - for-loop (`foreach=False`, the CPU default): per parameter `denom = (exp_avg_sq.sqrt() / c).add_(eps)`:
      sqrt and div outputs, 2 x P_i; the previous parameter's `denom` is still alive (the loop variable is
      rebound only after the new one exists), so the peak is at P2: states + denom(P1) + sqrt(P2) + div(P2);
    - foreach: one `_foreach_sqrt` of all exp_avg_sq (the divide and add are in place): states + P1 + P2.
    The second step allocates nothing persistent: the same peak."""
    p1, p2 = torch.nn.Parameter(torch.randn(300, 100)), torch.nn.Parameter(torch.randn(500, 100))
    p1.grad, p2.grad = torch.randn_like(p1), torch.randn_like(p2)
    optimizer = torch.optim.Adam([p1, p2], lr=1e-3, foreach=foreach)
    one, two = nbytes((300, 100)), nbytes((500, 100))
    with MemoryTracker(roots=[p1, p2, optimizer]) as tracker:
        with tracker.phase("first"):
            optimizer.step()
        with tracker.phase("second"):
            optimizer.step()
    baseline = 2 * (one + two)  # parameters and gradients
    states = 2 * (one + two) + 2 * F32
    temporaries = one + two if foreach else one + 2 * two
    assert tracker.baseline_bytes == baseline
    assert tracker.phase_peaks["first"] == tracker.phase_peaks["second"] == baseline + states + temporaries
    assert tracker.current_bytes == baseline + states
    assert torch.optim.Adam([p1]).defaults["foreach"] is None  # None: the for-loop on CPU tensors


def test_adam_states_present_at_entry_are_baseline():
    parameter = torch.nn.Parameter(torch.randn(100, 10))
    parameter.grad = torch.randn_like(parameter)
    optimizer = torch.optim.Adam([parameter], foreach=False)
    optimizer.step()
    with MemoryTracker(roots={"model": [parameter], "optimizer": optimizer}) as tracker:
        pass
    assert tracker.baseline_bytes == 4 * nbytes((100, 10)) + F32
    assert tracker.peak_bytes == tracker.baseline_bytes


def test_bitsandbytes_int8_linear_forward_is_seen():
    """`Linear8bitLt` on the CPU (eval, float16 input, no outlier threshold): the custom operators'
    outputs are counted: `int8_vectorwise_quant` (int8 (N, in) + float32 row scales (N,)) and `int8_scaled_mm`
    (float16 (N, out)); the weight (int8 (out, in)), its row scales (float32 (out,)) and the bias are the baseline.
    Opened, the CPU's Python kernel of `int8_vectorwise_quant` also shows its float32 temporaries."""
    bnb = pytest.importorskip("bitsandbytes")
    n, d_in, d_out = 32, 256, 128
    layer = bnb.nn.Linear8bitLt(d_in, d_out, has_fp16_weights=False)
    layer.load_state_dict(torch.nn.Linear(d_in, d_out).half().state_dict())
    layer = layer.to("cpu").eval()  # quantizes the weight
    x = torch.randn(n, d_in, dtype=torch.float16)
    with torch.no_grad():
        layer(x)  # first call: the layer moves its row scales to its state
    weights = nbytes((d_out, d_in), size=1) + nbytes((d_out,)) + nbytes((d_out,), size=2)
    outputs = nbytes((n, d_in), size=1) + nbytes((n,)) + nbytes((n, d_out), size=2)
    for open_composites in (False, True):
        with MemoryTracker(roots=layer, open_composites=open_composites) as tracker, torch.no_grad():
            y = layer(x)
        assert y.shape == (n, d_out)
        assert tracker.baseline_bytes == weights
        origins = {record.origin for record in tracker.live_at_peak() if record.phase != BASELINE_PHASE}
        assert "bitsandbytes.int8_vectorwise_quant.default" in origins
        if open_composites:
            assert any(record.inside is not None for record in tracker.live_at_peak())
            assert tracker.peak_bytes > weights + outputs
            assert tracker.peak_without(lambda record: record.inside is not None) == weights + outputs
        else:
            assert "bitsandbytes.int8_scaled_mm.default" in {r.origin for r in tracker._records}
            assert tracker.peak_bytes == weights + outputs
        assert tracker.current_bytes == weights + nbytes((n, d_out), size=2)


def test_wrap_labels_phases_and_restores():
    class Worker:
        def work(self, size: int) -> torch.Tensor:
            return torch.ones(size)

    worker = Worker()
    with MemoryTracker() as tracker:
        tracker.wrap(worker, "work", lambda: "with_grad" if torch.is_grad_enabled() else "no_grad")
        tracker.wrap(torch.nn.functional, "relu", "relu")  # a module attribute works too
        kept = worker.work(100)
        with torch.no_grad():
            worker.work(300)
        torch.nn.functional.relu(kept)
        assert "work" in vars(worker)
    assert "work" not in vars(worker) and torch.nn.functional.relu.__name__ == "relu"
    assert tracker.phase_peaks == {"with_grad": nbytes((100,)), "no_grad": nbytes((100,), (300,)), "relu": 800}
    assert tracker.phases["no_grad"].calls == 1 and tracker.phases["no_grad"].entry_bytes == nbytes((100,))
    assert tracker.current_bytes == nbytes((100,))


def test_nested_phases_and_summary():
    with MemoryTracker() as tracker:
        with tracker.phase("outer"):
            a = torch.zeros(100)
            with tracker.phase("inner"):
                b = torch.zeros(200)
                del b
            c = torch.zeros(50)
    assert tracker.phase_peaks == {"outer": nbytes((300,)), "inner": nbytes((300,))}
    assert tracker.breakdown("outer") == {"aten.zeros.default": nbytes((300,))}
    summary = tracker.summary()
    assert summary["peak_bytes"] == nbytes((300,)) and summary["current_bytes"] == nbytes((150,))
    assert summary["phases"]["inner"]["calls"] == 1
    assert a.numel() + c.numel() == 150


def test_meta_tensors_and_other_roots_are_ignored_and_tracker_is_single_use():
    meta = torch.nn.Linear(1000, 1000, device="meta")
    tracker = MemoryTracker(roots=[meta])
    with tracker:
        torch.empty(1000, 1000, device="meta")
    assert tracker.peak_bytes == 0
    with pytest.raises(RuntimeError, match="once"):
        tracker.__enter__()
    with pytest.raises(TypeError, match="cannot find tensors"):
        MemoryTracker(roots=[object()]).__enter__()
