"""The fast GPU path's pieces (mixed precision, compile, statistics on the device, the sync-free bank) and the
memory-mapped bank; tests marked ``cuda`` skip without a GPU."""

import json

import pytest
import torch
import torch.nn as nn

from adv_transport import ATL, AdversarialBank, BankMismatchError, LangevinSampler, ThreatModel, Trainer
from adv_transport.accel import Forward
from adv_transport.attacks import input_gradient
from adv_transport.data import IndexedBatches
from adv_transport.distributed import Runtime, ShardedBank
from adv_transport.errors import NonFiniteLossError

from conftest import TinyCNN, synthetic_dataset

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
THREAT = ThreatModel("linf", 0.1)


def _trainer(runtime=None, bank=None, run_dir=None, model=None, **kw):
    torch.manual_seed(0)
    data = synthetic_dataset(48)
    model = model or TinyCNN()
    bank = bank or AdversarialBank(len(data), data.shape, THREAT, dtype="int8", init="uniform")
    method = ATL(bank, LangevinSampler(THREAT, eta=0.02, noise_scale=0.2, steps=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    trainer = Trainer(model, opt, method, run_dir=run_dir, progress=False, runtime=runtime, **kw)
    return trainer, IndexedBatches(data, 10, seed=1)


def test_statistics_read_every_n_steps_give_the_same_run():
    plain, batches = _trainer()
    plain.fit(batches, epochs=2)
    fast, batches = _trainer(Runtime(sync_every=4))
    fast.fit(batches, epochs=2)
    for a, b in zip(plain.model.parameters(), fast.model.parameters()):
        assert torch.equal(a, b)
    strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h]  # noqa: E731
    assert strip(plain.history) == strip(fast.history) and plain.counts == fast.counts
    assert isinstance(fast.history[-1]["train_loss"], float)


def test_non_finite_loss_is_caught_at_the_next_read():
    trainer, batches = _trainer(Runtime(sync_every=2))
    with torch.no_grad():
        trainer.model.net[-1].bias[0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="between steps 0 and 1"):
        trainer.fit(batches, epochs=1)


def test_non_finite_loss_after_the_last_read_writes_no_checkpoint(tmp_path):
    # a loss that is non-finite while the parameters stay finite (a constant NaN added to the loss has no gradient,
    # as when float16's GradScaler skips a step): only the statistics show it, and they are read at the epoch's end
    trainer, batches = _trainer(Runtime(sync_every=1000), run_dir=tmp_path)
    trainer.fit(batches, epochs=1)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    plain = trainer.method.regularizer
    calls = []

    def nan_on_the_third_step(logits, y):
        calls.append(1)
        extra = plain(logits, y)
        return torch.tensor(float("nan")) if len(calls) == 3 else extra

    trainer.method.regularizer = nan_on_the_third_step
    with pytest.raises(NonFiniteLossError, match="non-finite training loss in epoch 1 before step 5"):
        trainer.fit(batches, epochs=2)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the parameter check alone would pass
    assert (tmp_path / "checkpoint.pt").read_bytes() == good  # the last good checkpoint is untouched
    assert len(trainer.history) == 1


def test_float16_input_gradients_do_not_underflow_to_sign_zero():
    class Small(nn.Module):  # logits of order 1e-7: their gradients underflow in float16
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(16, 3)

        def forward(self, x):
            return self.lin(x.flatten(1)) * 1e-7

    torch.manual_seed(0)
    model, x, y = Small(), torch.rand(8, 1, 4, 4), torch.arange(8) % 3
    exact, _ = input_gradient(model, x, y)
    plain, _ = input_gradient(Forward(model, amp="fp16", input_grad_scale=1.0), x, y)
    scaled, _ = input_gradient(Forward(model, amp="fp16", input_grad_scale=1024.0), x, y)
    assert bool((plain == 0).all())  # what the scale is for
    assert torch.equal(scaled.sign(), exact.sign())
    assert float((scaled - exact).norm() / exact.norm()) < 1e-2


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains(amp):
    trainer, batches = _trainer(Runtime(amp=amp))
    trainer.fit(batches, epochs=1)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert (trainer.runtime.scaler is not None) == (amp == "fp16")
    assert trainer.history[-1]["train_loss"] > 0


def test_compiled_model_checkpoints_load_with_and_without_compile(tmp_path):
    trainer, batches = _trainer(Runtime(compile=True, compile_backend="eager"), run_dir=tmp_path / "c")
    trainer.fit(batches, epochs=1)
    state = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)
    assert not any("_orig_mod" in k for k in state["model"])
    plain, _ = _trainer(run_dir=tmp_path / "c")
    assert plain.resume() and plain.epoch == 1
    again, _ = _trainer(Runtime(compile=True, compile_backend="eager"), run_dir=tmp_path / "c")
    assert again.resume()
    for a, b in zip(plain.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ memory-mapped bank


def test_memory_mapped_bank_checkpoints_record_the_file_and_keep_the_flags(tmp_path):
    data = synthetic_dataset(48)
    path = tmp_path / "bank.npy"
    bank = AdversarialBank(len(data), data.shape, THREAT, dtype="int8", init="uniform", path=path)
    trainer, batches = _trainer(bank=bank, run_dir=tmp_path / "run")
    trainer.fit(batches, epochs=1)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert "storage" not in state["method"]["bank"] and state["method"]["bank"]["memmap"] == str(path)
    values, flags = bank.storage.clone(), bank.initialized.clone()
    assert bool(flags.all())
    # reopened (a resume): values and flags are the file's
    again = AdversarialBank(len(data), data.shape, THREAT, dtype="int8", init="uniform", path=path)
    assert torch.equal(again.storage, values) and torch.equal(again.initialized, flags)
    resumed, batches = _trainer(bank=again, run_dir=tmp_path / "run")
    assert resumed.resume()
    resumed.fit(batches, epochs=2)
    # a file that does not match the run is refused and left as it is
    before = path.read_bytes()
    for kwargs in ({"dtype": "float16"}, {"init": "zero"}):
        with pytest.raises(BankMismatchError, match="does not match this run"):
            AdversarialBank(len(data), data.shape, THREAT, **{"dtype": "int8", "init": "uniform", **kwargs}, path=path)
    with pytest.raises(BankMismatchError, match="does not match this run .*eps"):
        AdversarialBank(len(data), data.shape, ThreatModel("linf", 0.2), dtype="int8", init="uniform", path=path)
    assert path.read_bytes() == before
    # a checkpoint of a memory-mapped bank does not load into a bank held in memory
    other, _ = _trainer(run_dir=tmp_path / "run")
    with pytest.raises(BankMismatchError, match="--bank-path"):
        other.resume()


def test_command_line_bank_path(mnist_dir, tmp_path, capsys):
    from adv_transport.cli import main

    argv = ["train", "--method", "atl", "--dataset", "mnist", "--batch-size", "50", "--eval-n", "10", "--no-progress",
            "--data-dir", str(mnist_dir), "--bank-path", str(tmp_path / "bank.npy"), "--bank-dtype", "int8"]
    assert main(argv + ["--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    meta = json.loads((tmp_path / "bank.npy.json").read_text())
    assert meta["num_examples"] == 200 and meta["dtype"] == "int8"
    assert main(argv + ["--epochs", "1", "--out", str(tmp_path / "run"), "--resume"]) == 0  # finished: loads, stops
    assert main(argv + ["--epochs", "1", "--out", str(tmp_path / "other")]) == 2
    assert "already exists" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ CUDA


@cuda
@pytest.mark.parametrize("home", ["cuda", "pinned"])
def test_gpu_bank_matches_the_cpu_bank(home):
    shape = (3, 8, 8)
    cpu = AdversarialBank(40, shape, THREAT, dtype="int8", copies=2)
    gpu = ShardedBank(40, shape, THREAT, dtype="int8", copies=2, device="cuda" if home == "cuda" else "cpu",
                      pin_memory=home == "pinned")
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        idx = torch.randperm(40, generator=g)[:16]
        copy = torch.randint(2, (16,), generator=g)
        x = torch.rand((16,) + shape, generator=g)
        delta = (torch.rand((16,) + shape, generator=g) - 0.5) * 0.3
        got, _ = gpu.read(idx, x.cuda(), copy)
        want, _ = cpu.read(idx, x, copy)
        assert torch.equal(got.cpu(), want)
        gpu.write(idx, copy, delta.cuda(), x.cuda())
        cpu.write(idx, copy, delta, x)
    gpu._flush(None)
    assert torch.equal(gpu.storage.cpu(), cpu.storage) and torch.equal(gpu.initialized.cpu(), cpu.initialized)


def test_the_optimizer_is_fused_on_a_gpu_only():
    from adv_transport.recipes import recipe
    from adv_transport.training import build_optimizer

    for method in ("sgd", "adam"):
        opt, _ = build_optimizer(recipe("atl", "cifar10").replace(optimizer=method), TinyCNN().parameters(), 10)
        assert not opt.defaults.get("fused"), "fused optimizers are for GPUs; the CPU keeps torch's default"
        if torch.cuda.is_available():
            opt, _ = build_optimizer(recipe("atl", "cifar10").replace(optimizer=method), TinyCNN().cuda().parameters(),
                                     10)
            assert opt.defaults["fused"] and opt._step_supports_amp_scaling


@cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_atl_step_does_not_synchronise_with_the_host(amp):
    from adv_transport.recipes import recipe
    from adv_transport.training import build_optimizer

    data = synthetic_dataset(96, shape=(3, 8, 8))
    rt = Runtime(device="cuda", keyed=True, sync_every=1000, bank_device="cuda", amp=amp, channels_last=True)
    model = rt.prepare_model(TinyCNN(channels=3))
    bank = rt.bank(len(data), data.shape, THREAT, dtype="int8", init="uniform")
    method = ATL(bank, LangevinSampler(THREAT, eta=0.02, noise_scale=0.2, steps=1))
    opt, _ = build_optimizer(recipe("atl", "cifar10").replace(lr=0.05, lr_schedule="constant"), model.parameters(), 6)
    trainer = Trainer(model, opt, method, progress=False, runtime=rt)  # fp16: GradScaler with a fused optimizer
    batches = rt.batches(data, 16)
    trainer.fit(batches, epochs=1)  # warm-up: allocations, kernels
    pinned = [(x.pin_memory(), y.pin_memory(), i) for x, y, i in IndexedBatches(data, 16, seed=2)]
    trainer._training_modes()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y, i in pinned:
            trainer._train_step(x.cuda(non_blocking=True), y.cuda(non_blocking=True), i, 1.0)
    finally:
        torch.cuda.set_sync_debug_mode(0)


@cuda
def test_sync_batchnorm_and_float16_on_the_gpu():
    class BN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(256, 3)

        def forward(self, x):
            return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))

    rt = Runtime(device="cuda", sync_bn=True, amp="fp16", bank_device="cuda")
    model = rt.prepare_model(BN())
    assert isinstance(model.bn, nn.SyncBatchNorm)
    data = synthetic_dataset(48)
    bank = rt.bank(len(data), data.shape, THREAT, dtype="float16", init="uniform")
    trainer, _ = _trainer(rt, bank=bank, model=model)
    trainer.fit(IndexedBatches(data, 16, device="cuda"), epochs=1)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@cuda
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_in_memory_batches_reach_the_gpu_from_pinned_memory_without_blocking(dtype):
    from torch.utils._python_dispatch import TorchDispatchMode

    from adv_transport.data import IndexedDataset

    data = synthetic_dataset(48)
    if dtype == "uint8":
        data = IndexedDataset((data.images * 255).round().to(torch.uint8), data.labels)
    copies = []

    class HostToDevice(TorchDispatchMode):  # (source pinned, non_blocking) of every copy from the host to the GPU
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and torch.device(kwargs.get("device") or "cpu").type == "cuda":
                copies.append((args[0].is_pinned(), bool(kwargs.get("non_blocking", False))))
            elif func is torch.ops.aten.copy_.default and args[0].is_cuda and not args[1].is_cuda:
                copies.append((args[1].is_pinned(), bool(args[2] if len(args) > 2 else kwargs.get("non_blocking"))))
            return func(*args, **kwargs)

    on_gpu = IndexedBatches(data, 16, seed=1, device="cuda")
    next(iter(on_gpu.iterate(0)))  # warm-up: CUDA context, pinned memory pool
    torch.cuda.synchronize()
    copies.clear()
    torch.cuda.set_sync_debug_mode("error")  # a blocking copy from pageable memory synchronises: an error here
    try:
        with HostToDevice():
            got = list(on_gpu.iterate(0))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(copies) == 2 * len(got) == 6 and all(pinned and non_blocking for pinned, non_blocking in copies)
    for (x, y, i), (x0, y0, i0) in zip(got, IndexedBatches(data, 16, seed=1).iterate(0)):  # the CPU path's values
        assert x.is_cuda and torch.equal(x.cpu(), x0) and torch.equal(y.cpu(), y0) and torch.equal(i, i0)


# ------------------------------------------------------------------------------------------------ the benchmark


def _gpu_step():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_step.py"
    spec = importlib.util.spec_from_file_location("gpu_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_step_benchmark_runs_quick_on_the_cpu(tmp_path):
    result = _gpu_step().main(["--device", "cpu", "--bank-device", "cpu", "--quick", "--out", str(tmp_path / "g")])
    assert set(result["methods"]) == {"clean", "atl", "fgsm-rs"}
    assert 0 < result["atl_bank_bookkeeping"]["share_of_atl_step"] < 1
    assert "bank bookkeeping" in (tmp_path / "g.md").read_text()


@cuda
@pytest.mark.parametrize("bank_device", ["cuda", "cpu"])
def test_gpu_step_benchmark_fast_path(bank_device):
    result = _gpu_step().main(["--quick", "--amp", "bf16", "--channels-last", "--bank-device", bank_device])
    assert result["methods"]["atl"]["ms_per_step"] > 0
