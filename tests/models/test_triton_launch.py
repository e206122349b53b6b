"""`triton_launch.CachedLaunch` against a stand-in for a Triton kernel that follows Triton 3.x's
launch protocol (JITFunction.run handing the compiled kernel's launcher the grid, the stream,
the function, packed metadata, launch metadata and hooks, then every bound argument; an
autotuner's best config and its pre-hook). The real kernels under the cache run on the GPU
(tests/models/test_ssd_kernels.py) and, on Triton's path, under its interpreter
(test_ssd_mamba_ssm.py)."""

import gc
import weakref

import pytest
import torch
from titan_mimo.models.language import triton_launch
from titan_mimo.models.language.triton_launch import CachedLaunch


class FakeCompiled:
    def __init__(self, log):
        self.function, self.packed_metadata = object(), object()
        self._run = lambda *a: log.append(a)

    @property
    def run(self):  # Triton 3.9's CompiledKernel: `run` returns the launcher `_run`
        return self._run


class FakeConfig:
    def __init__(self, pre_hook=None):
        self.pre_hook = pre_hook

    def all_kwargs(self):
        return {"BLOCK": 64}


class FakeKernel:
    """`kernel[grid](x_ptr, y_ptr, n, BLOCK=...)`: compiles once per (dtypes, n), launches through
    the compiled kernel's launcher with every argument in signature order."""

    arg_names = ("x_ptr", "y_ptr", "n", "BLOCK")

    def __init__(self, pre_hook=None, hooks=(None, None, None)):
        self.launches, self.triton_calls, self.compiled = [], 0, {}
        self.best_config, self.hooks = FakeConfig(pre_hook), hooks

    def __getitem__(self, grid):
        def run(x_ptr, y_ptr, n):
            self.triton_calls += 1
            key = (x_ptr.dtype, y_ptr.dtype, n)
            compiled = self.compiled.setdefault(key, FakeCompiled(self.launches))
            nargs = {"x_ptr": x_ptr, "y_ptr": y_ptr, "n": n, "BLOCK": 64}
            if self.best_config.pre_hook is not None:
                self.best_config.pre_hook(nargs)
            g = grid(nargs) if callable(grid) else grid
            compiled.run(g[0], g[1] if len(g) > 1 else 1, 1, 7, compiled.function,
                         compiled.packed_metadata, *self.hooks, x_ptr, y_ptr, n, 64)
            return compiled
        return run


@pytest.fixture(autouse=True)
def stream(monkeypatch):
    monkeypatch.setattr(triton_launch, "_current_stream", lambda: 7)


def test_third_launch_calls_the_launcher_directly_with_the_new_tensors():
    kernel = FakeKernel()
    cached = CachedLaunch(kernel)
    grid = lambda meta: (meta["n"] // meta["BLOCK"],)
    calls = [(torch.zeros(256), torch.ones(256)) for _ in range(4)]
    for x, y in calls:
        assert cached[grid](x, y, 256) is kernel.compiled[(torch.float32, torch.float32, 256)]
    assert kernel.triton_calls == 2 and cached.stats == {"hits": 2, "misses": 2, "slow": 0}
    assert len(kernel.launches) == 4
    for (x, y), launch in zip(calls, kernel.launches):
        assert launch[:3] == (4, 1, 1) and launch[3] == 7 and launch[6:9] == (None, None, None)
        assert launch[9] is x and launch[10] is y and launch[11:] == (256, 64)


def test_a_different_call_launches_through_triton_again():
    """Another int, dtype, shape or 16-byte alignment is another call (Triton specializes on
    them); a tuple grid is part of the call too."""
    kernel = FakeKernel()
    cached = CachedLaunch(kernel)
    base = torch.zeros(64)
    for _ in range(3):
        cached[(1,)](base, base.clone(), 64)
    assert kernel.triton_calls == 2
    variants = [(torch.zeros(64), torch.zeros(64), 32),                 # int
                (torch.zeros(64, dtype=torch.float64), torch.zeros(64), 64),  # dtype
                (torch.zeros(32), torch.zeros(32), 64),                 # shape
                (torch.zeros(65)[1:], torch.zeros(64), 64)]             # misaligned pointer
    for i, (x, y, n) in enumerate(variants):
        cached[(1,)](x, y, n)
        assert kernel.triton_calls == 3 + i, i
    cached[(2,)](base, base.clone(), 64)
    assert kernel.triton_calls == 7


def test_the_autotuned_configs_pre_hook_runs_on_the_fast_path():
    zeroed = []
    kernel = FakeKernel(pre_hook=lambda nargs: zeroed.append((nargs["y_ptr"], nargs["BLOCK"])))
    cached = CachedLaunch(kernel)
    ys = [torch.ones(16) for _ in range(3)]
    for y in ys:
        cached[(1,)](torch.zeros(16), y, 16)
    assert cached.stats["hits"] == 1
    assert [z[0] for z in zeroed] == ys and all(z[1] == 64 for z in zeroed)


def test_no_reference_is_kept_to_a_recorded_calls_tensors():
    kernel = FakeKernel()
    cached = CachedLaunch(kernel)
    keep = torch.zeros(8)
    cached[(1,)](keep, torch.zeros(8), 8)
    x = torch.zeros(8)
    ref = weakref.ref(x)
    cached[(1,)](keep, x, 8)  # the recording call
    kernel.launches.clear()
    del x
    gc.collect()
    assert ref() is None


class HookChain:  # Triton 3.6's knobs.runtime launch hooks: always passed, often empty
    def __init__(self):
        self.calls = []


def test_empty_hook_chains_are_replayed_without_and_a_hook_added_later_is_seen():
    enter, leave = HookChain(), HookChain()
    kernel = FakeKernel(hooks=(object(), enter, leave))  # metadata, then the two chains
    cached = CachedLaunch(kernel)
    for _ in range(3):
        cached[(1,)](torch.zeros(8), torch.zeros(8), 8)
    assert cached.stats["hits"] == 1 and kernel.launches[-1][6:9] == (None, None, None)
    enter.calls.append(print)  # a profiler starts listening: Triton launches (and calls it)
    cached[(1,)](torch.zeros(8), torch.zeros(8), 8)
    assert cached.stats == {"hits": 1, "misses": 2, "slow": 1} and kernel.triton_calls == 3


@pytest.mark.parametrize("why", ["hooks", "aliased", "interpreter"])
def test_calls_it_cannot_replay_keep_tritons_path(why):
    """A profiler's launch hooks, one tensor passed twice (which launcher slot is which?), or a
    launch that returns no compiled kernel (Triton's interpreter): Triton launches every time."""
    class Interpreted(FakeKernel):  # launches, returns no compiled kernel
        def __getitem__(self, grid):
            run = super().__getitem__(grid)
            return lambda *a: (run(*a), None)[1]

    if why == "interpreter":
        kernel = Interpreted()
    else:
        kernel = FakeKernel(hooks=(None, object(), None) if why == "hooks" else (None, None, None))
    cached = CachedLaunch(kernel)
    x = torch.zeros(8)
    for _ in range(4):
        cached[(1,)](x, x if why == "aliased" else torch.zeros(8), 8)
    assert kernel.triton_calls == 4 and cached.stats["hits"] == 0
    # The interpreter's first launch already shows it; the others fail at the recording one.
    assert cached.stats["slow"] == (3 if why == "interpreter" else 2)


def test_install_replaces_the_modules_kernels_once(tmp_path, monkeypatch):
    """Every Triton kernel named *_kernel (not other Triton functions, not other names) becomes
    one CachedLaunch shared by the modules that hold it; installing again changes nothing."""
    import importlib.util
    import types

    pytest.importorskip("triton")
    path = tmp_path / "fake_ssd_module.py"
    path.write_text(
        "import triton\n\n\n"
        "@triton.jit\ndef _scan_kernel(x_ptr):\n    pass\n\n\n"
        "@triton.jit\ndef _helper(x_ptr):\n    pass\n\n\n"
        "_plain_kernel = 3\n")
    spec = importlib.util.spec_from_file_location("fake_ssd_module", path)
    first = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(first)
    second = types.ModuleType("second")
    second._scan_kernel = first._scan_kernel  # imported by name into another module
    kernel = first._scan_kernel
    launches = triton_launch.install([first, second])
    assert set(launches) == {"_scan_kernel"}
    assert first._scan_kernel is second._scan_kernel is launches["_scan_kernel"]
    assert launches["_scan_kernel"].kernel is kernel and first._helper is not None
    assert not isinstance(first._helper, CachedLaunch) and first._plain_kernel == 3
    assert launches["_scan_kernel"].arg_names == ["x_ptr"]
    assert triton_launch.install([second, first]) == launches
    assert first._scan_kernel is launches["_scan_kernel"]
    triton_launch.uninstall([first, second])
    assert first._scan_kernel is second._scan_kernel is kernel and first._plain_kernel == 3
    triton_launch.uninstall([first, second])
    assert first._scan_kernel is kernel
