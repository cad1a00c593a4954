"""The workaround for bitsandbytes' in-place CPU repacking of 4-bit weights (`stackrlhf.models.bnb_cpu`).

Every test runs bitsandbytes' AVX512-BF16 code path whatever this CPU has: the `packed_kernel` fixture makes
bitsandbytes' CPU-feature detection (`bitsandbytes.nn.modules.has_avx512bf16`, read by `Linear4bit()`) answer yes,
and counts what that path does (repackings, fused-kernel calls), which with the workaround must be nothing.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import bitsandbytes as bnb
import bitsandbytes.functional as bnb_functional
import bitsandbytes.nn.modules as bnb_modules
import pytest
import torch
from bitsandbytes.functional import dequantize_4bit
from peft import LoraConfig
from torch.utils._python_dispatch import TorchDispatchMode

from stackrlhf import AutoModelForCausalLMWithValueHead
from stackrlhf.models import bnb_cpu
from stackrlhf.models.bundled import TINY_MODEL

# (out_features, in_features): fits the fused kernel; fits it in neither dimension (bitsandbytes alone asserts that
# out_features is a multiple of 32, and its scale reshape fails when in_features is not one of the blocksize, 64).
SHAPES = [(64, 128), (48, 96)]
QUANTIZATIONS = [("nf4", True), ("nf4", False), ("fp4", True), ("fp4", False)]


class KernelCalls(TorchDispatchMode):
    """Counts what bitsandbytes' fused CPU kernel path does: repackings of a weight for it
    (`_convert_weight_packed_for_cpu`, as `Linear4bit.forward` calls it), calls of
    `bitsandbytes.functional.gemv_4bit` (which `matmul_4bit` calls on the CPU only for a repacked weight) and, inside
    `with calls:`, runs of the kernel's op `bitsandbytes::gemv_4bit` however they are reached."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.repacks = self.gemv = self.ops = 0
        repack, gemv = bnb_modules._convert_weight_packed_for_cpu, bnb_functional.gemv_4bit

        def counted_repack(*args: Any, **kwargs: Any) -> Any:
            self.repacks += 1
            return repack(*args, **kwargs)

        def counted_gemv(A: torch.Tensor, B: torch.Tensor, *args: Any, state: Any = None, **kwargs: Any) -> Any:
            self.gemv += 1
            if bnb_functional.has_avx512bf16():
                return gemv(A, B, *args, state=state, **kwargs)
            # No fused kernel on this CPU: a stand-in of the right shape (only the test of the bug itself gets here).
            return torch.zeros(*A.shape[:-1], state.shape[0], dtype=A.dtype)

        monkeypatch.setattr(bnb_modules, "_convert_weight_packed_for_cpu", counted_repack)
        monkeypatch.setattr(bnb_functional, "gemv_4bit", counted_gemv)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func._schema.name == "bitsandbytes::gemv_4bit":
            self.ops += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return self.repacks + self.gemv + self.ops


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: bitsandbytes' OpenMP dequantization of these tiny layers gets up to 100x slower with more
    on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def packed_kernel(monkeypatch: pytest.MonkeyPatch) -> KernelCalls:
    """Force bitsandbytes' AVX512-BF16 repacking path on (see the module docstring); count what it does."""
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    calls = KernelCalls(monkeypatch)
    assert bnb_cpu.install()
    return calls


@contextlib.contextmanager
def without_workaround() -> Iterator[None]:
    """bitsandbytes' own `Linear4bit.forward` inside the block; the workaround again after it."""
    bnb_cpu.uninstall()
    try:
        yield
    finally:
        bnb_cpu.install()


@contextlib.contextmanager
def dequantized_reference() -> Iterator[None]:
    """Every `Linear4bit` computes `x @ dequantize_4bit(W).T + b` in its compute dtype inside the block."""
    patched = bnb.nn.Linear4bit.forward

    def forward(self: bnb.nn.Linear4bit, x: torch.Tensor) -> torch.Tensor:
        state = self.weight.quant_state
        assert not getattr(state, "packing_format_for_cpu", False)
        dtype = self.compute_dtype if self.compute_dtype is not None else x.dtype
        weight = dequantize_4bit(self.weight.data, state).to(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        return torch.nn.functional.linear(x.to(dtype), weight, bias).to(x.dtype)

    bnb.nn.Linear4bit.forward = forward
    try:
        yield
    finally:
        bnb.nn.Linear4bit.forward = patched


def _layer(
    out_features: int, in_features: int, quant_type: str, double_quant: bool, compute_dtype: torch.dtype
) -> bnb.nn.Linear4bit:
    """A quantized `Linear4bit` (with a bias) built under the current CPU-feature detection."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(in_features, out_features)
    layer = bnb.nn.Linear4bit(
        in_features, out_features, compute_dtype=compute_dtype, compress_statistics=double_quant, quant_type=quant_type
    )
    layer.load_state_dict(linear.state_dict())
    return layer.to("cpu")  # quantizes


def _snapshot(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The layer's saved weight tensors (quantized weight, scales, packed quantization state), copied.

    Not the bias: bitsandbytes' forward pass casts it to the compute dtype in place, on any CPU.
    """
    return {name: tensor.detach().clone() for name, tensor in layer.state_dict().items() if name != "bias"}


def _assert_same_state(layer: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    """The layer's weight keeps the generic layout and exactly the bytes and scales it was quantized to."""
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    state = {name: tensor for name, tensor in layer.state_dict().items() if name != "bias"}
    assert state.keys() == snapshot.keys()
    for name, tensor in snapshot.items():
        assert torch.equal(state[name], tensor), name


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, compute_dtype: torch.dtype) -> None:
    """Equal up to the compute dtype's rounding (the reference and bitsandbytes may round in different places)."""
    tol = 1e-5 if compute_dtype == torch.float32 else 2e-2
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol * max(scale, 1.0), rtol=tol)


def _reference(layer: bnb.nn.Linear4bit, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and input gradient (of `output.sum()`) of the dequantized layer."""
    x = x.detach().requires_grad_(True)
    with dequantized_reference():
        out = layer(x)
    out.float().sum().backward()
    return out.detach(), x.grad


def test_is_affected_from_0_49() -> None:
    assert not bnb_cpu.is_affected("0.48.2")
    assert bnb_cpu.is_affected("0.49.0") and bnb_cpu.is_affected("0.50.2")
    assert bnb_cpu.is_affected("0.51.0.dev0")


def test_install_is_idempotent() -> None:
    assert bnb_cpu.install() == bnb_cpu.is_affected()
    forward = bnb.nn.Linear4bit.forward
    assert bnb_cpu.install() == bnb_cpu.is_affected()
    assert bnb.nn.Linear4bit.forward is forward


def test_loading_a_4bit_model_installs_it() -> None:
    with without_workaround():
        assert not bnb_cpu.is_installed()
        AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL, load_in_4bit=True)
        assert bnb_cpu.is_installed() == bnb_cpu.is_affected()


@pytest.mark.skipif(not bnb_cpu.is_affected(), reason="this bitsandbytes does not repack in place")
def test_bitsandbytes_alone_repacks_in_place(packed_kernel: KernelCalls) -> None:
    """The bug itself (and that `packed_kernel` sees that path): if this fails, bitsandbytes fixed it; narrow
    `bnb_cpu.AFFECTED_VERSIONS`."""
    x = torch.randn(3, 128)
    with without_workaround():
        small = _layer(48, 128, "nf4", True, torch.float32).eval()
        with torch.no_grad(), pytest.raises(AssertionError, match="N must be divisible by block_n"):
            small(x)

        layer = _layer(64, 128, "nf4", False, torch.float32).eval()
        expected, _ = _reference(layer, x)
        with torch.no_grad(), packed_kernel:
            layer(x)
        assert layer.weight.quant_state.packing_format_for_cpu  # the parameter itself was repacked
        assert (packed_kernel.repacks, packed_kernel.gemv) == (2, 1)
        assert packed_kernel.ops == bnb_functional.has_avx512bf16()  # the fused kernel itself, where the CPU has it
        layer.state_dict()  # converts it back, leaving the scales transposed
        assert not layer.weight.quant_state.packing_format_for_cpu
        with torch.no_grad():
            assert not torch.allclose(layer.train()(x), expected, atol=1e-2)


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize(("quant_type", "double_quant"), QUANTIZATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=["fits", "odd"])
def test_layer_gives_the_same_results_in_eval_and_train_mode(
    packed_kernel: KernelCalls,
    shape: tuple[int, int],
    quant_type: str,
    double_quant: bool,
    compute_dtype: torch.dtype,
) -> None:
    layer = _layer(*shape, quant_type, double_quant, compute_dtype)
    assert layer.support_avx512bf16_for_cpu
    snapshot = _snapshot(layer)
    x = torch.randn(2, 5, shape[1])
    expected, expected_grad = _reference(layer, x)

    with packed_kernel:
        with torch.no_grad():
            first = layer.eval()(x)
        _assert_close(first, expected, compute_dtype)
        first_grad = None
        for mode in ["eval", "train", "eval", "train"]:
            layer.train(mode == "train")
            with torch.no_grad():  # PPO's forward passes and generation
                assert torch.equal(layer(x), first)
            x_grad = x.clone().requires_grad_(True)  # training, or a forward pass with gradients in eval mode
            out = layer(x_grad)
            assert torch.equal(out, first)
            out.float().sum().backward()
            if first_grad is None:
                first_grad = x_grad.grad
                _assert_close(first_grad, expected_grad, compute_dtype)
            assert torch.equal(x_grad.grad, first_grad)
            _assert_same_state(layer, snapshot)

        clone = copy.deepcopy(layer).eval()
        with torch.no_grad():
            assert torch.equal(clone(x), first)
        _assert_same_state(clone, snapshot)
    assert packed_kernel.total == 0
    assert layer.support_avx512bf16_for_cpu  # turned off only during a call


@pytest.mark.parametrize("double_quant", [True, False], ids=["double_quant", "single_quant"])
def test_weight_repacked_before_install_is_converted_back(packed_kernel: KernelCalls, double_quant: bool) -> None:
    layer = _layer(64, 128, "nf4", double_quant, torch.float32)
    x = torch.randn(3, 128)
    expected, expected_grad = _reference(layer, x)
    with without_workaround(), torch.no_grad():
        layer.eval()(x)
        assert layer.weight.quant_state.packing_format_for_cpu
    kernel_calls = packed_kernel.total
    x_grad = x.clone().requires_grad_(True)
    out = layer.train()(x_grad)
    out.sum().backward()
    assert not layer.weight.quant_state.packing_format_for_cpu
    # The scales went through bfloat16: as close as the bfloat16 compute dtype gets.
    _assert_close(out, expected, torch.bfloat16)
    _assert_close(x_grad.grad, expected_grad, torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(layer.eval()(x), out)
    assert packed_kernel.total == kernel_calls


@pytest.mark.parametrize(
    ("quant_type", "double_quant", "compute_dtype"),
    [("nf4", True, torch.bfloat16), ("fp4", False, torch.bfloat16), ("nf4", False, torch.float32)],
    ids=["nf4-double-bfloat16", "fp4-bfloat16", "nf4-float32"],
)
def test_4bit_lora_policy_trains_switches_modes_generates_and_reloads(
    packed_kernel: KernelCalls, tmp_path, quant_type: str, double_quant: bool, compute_dtype: torch.dtype
) -> None:
    load_kwargs = {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": quant_type,
        "bnb_4bit_use_double_quant": double_quant,
        "bnb_4bit_compute_dtype": compute_dtype,
        "summary_dropout_prob": 0.0,  # train and eval passes of the same weights then agree
    }
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    torch.manual_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL, peft_config=lora, **load_kwargs)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(layer.support_avx512bf16_for_cpu for layer in layers)
    snapshots = [_snapshot(layer) for layer in layers]
    input_ids = torch.randint(3, model.config.vocab_size, (2, 12))

    def logits(train: bool = False) -> torch.Tensor:
        model.train(train)
        with torch.no_grad():
            return model(input_ids)[0]

    def reference_logits() -> torch.Tensor:
        with dequantized_reference():
            return logits()

    def assert_same_in_both_modes() -> torch.Tensor:
        """PPO's rollout log-probabilities (eval mode) are its training ones (train mode): the ratio starts at 1."""
        evaluated = logits()
        assert torch.equal(logits(train=True), evaluated)
        return evaluated

    def generate(train: bool = False) -> torch.Tensor:
        model.train(train)
        prompt = input_ids[:1, :4]
        return model.generate(prompt, max_new_tokens=6, do_sample=False, min_new_tokens=6, eos_token_id=None)

    def loss() -> torch.Tensor:
        lm_logits, _, values = model(input_ids)
        predicted = lm_logits[:, :-1].reshape(-1, lm_logits.shape[-1]).float()
        lm_loss = torch.nn.functional.cross_entropy(predicted, input_ids[:, 1:].reshape(-1))
        return lm_loss + values.float().pow(2).mean()

    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)

    with packed_kernel:
        _assert_close(assert_same_in_both_modes(), reference_logits(), compute_dtype)
        generated = generate()
        assert generated.shape == (1, 10)
        assert torch.equal(generate(train=True), generated)
        if compute_dtype == torch.float32:  # bfloat16 rounding may flip near-ties of a random model
            with dequantized_reference():
                assert torch.equal(generate(), generated)

        for step in range(3):
            logits()  # PPO: rollout and log-probabilities in eval mode ...
            model.train()  # ... then training
            optimizer.zero_grad()
            loss().backward()
            grads = {name: p.grad.clone() for name, p in trainable.items()}
            if step == 0:
                optimizer.zero_grad()
                with dequantized_reference():
                    loss().backward()
                for name, p in trainable.items():
                    _assert_close(grads[name], p.grad, compute_dtype)
                for name, p in trainable.items():
                    p.grad = grads[name]
            # Gradients reach every adapter, the first layers' through all the 4-bit layers above them (lora_A's
            # only once lora_B, zero at first, has moved).
            lora_grads = [g for name, g in grads.items() if "lora_B" in name or ("lora_A" in name and step > 0)]
            assert lora_grads and all(g.abs().sum() > 0 for g in lora_grads)
            optimizer.step()

        assert all(not torch.equal(p, before[name]) for name, p in trainable.items() if "lora_B" in name)
        for layer, snapshot in zip(layers, snapshots, strict=True):
            _assert_same_state(layer, snapshot)

        trained = assert_same_in_both_modes()
        _assert_close(trained, reference_logits(), compute_dtype)
        with model.pretrained_model.disable_adapter():
            base = assert_same_in_both_modes()
            _assert_close(base, reference_logits(), compute_dtype)
        assert not torch.allclose(base, trained)

        model.save_pretrained(tmp_path)
        reloaded = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path), **load_kwargs).eval()
        with torch.no_grad():
            assert torch.equal(reloaded(input_ids)[0], trained)
    assert packed_kernel.total == 0
