"""Launching Triton kernels again without Triton's per-launch Python (the Mamba2 scan's host cost).

A `kernel[grid](*args)` call goes through Triton's autotuner (its key from the arguments, the
config's pre-hook) and `JITFunction.run` (binding and specializing every argument, a cache key
built as a string, launch metadata) before the compiled kernel's launcher runs: tens of
microseconds per launch for kernels with ~40 arguments, ~18 launches per Mamba2 layer and step in
mamba-ssm's SSD scan, where the colocated 1-GPU step is host-bound (docs/benchmarks.md).

`CachedLaunch` stands in for such a kernel. For each distinct call (same non-tensor arguments,
tensors of the same dtype, device, shape and 16-byte alignment, the same grid when it is a tuple;
everything Triton specializes on and the autotuner keys on, and more) it lets Triton launch twice:
the first time compiles and autotunes, the second time records the arguments Triton hands to the
compiled kernel's launcher. From then on it calls that launcher directly, with the call's tensors
put in place of the recorded ones and the current stream, after the autotuned config's pre-hook
(mamba-ssm's zeroing of accumulators) as the autotuner would. Any call it cannot record safely
(launch hooks that do something, e.g. a profiler's; a tensor that does not map to one launcher
argument; Triton's interpreter; a launcher that is not where Triton 3.x puts it) keeps Triton's
own path for that call, and `refusal` says why.

`install(modules)` puts one `CachedLaunch` in place of every `*_kernel` Triton kernel defined in
the given modules (the module globals that mamba-ssm's Python wrappers launch by name);
`uninstall(modules)` puts the kernels back.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

__all__ = ["CachedLaunch", "install", "uninstall"]

_SLOW = object()  # a call key that keeps Triton's own path


def _idle(hooks) -> bool:
    """Launch hooks that would do nothing: None (Triton 3.3-3.5, 3.9) or an empty `HookChain`
    (Triton 3.6 always passes its chains), so replaying without them and without the launch
    metadata they would read changes nothing. A hook added later (a profiler) is seen on the
    next launch, which then goes through Triton."""
    return all(h is None or (type(h).__name__ == "HookChain" and not getattr(h, "calls", True))
               for h in hooks)


def _current_stream() -> int:
    """The current CUDA stream of the current device, as Triton's launch takes it."""
    return torch._C._cuda_getCurrentRawStream(torch.cuda.current_device())


def _arg_key(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (value.dtype, value.device, value.shape, value.data_ptr() % 16 == 0)
    return value


@dataclass(slots=True)
class _Recorded:
    """What a call replays: Triton's compiled kernel and its launcher, the launcher's first nine
    arguments as recorded, the bound arguments with the call's tensors taken out (`slots`: where
    each goes, from which positional index or keyword), and the autotuned config's pre-hook."""

    compiled: Any
    run: Any
    prefix: tuple
    bound: list
    slots: list
    pre_hook: Any
    config_kwargs: dict


class CachedLaunch:
    """A Triton kernel (`triton.jit` or `triton.autotune`d) whose repeated launches skip Triton's
    Python; `kernel[grid](*args, **kwargs)` as before. `stats` counts fast launches ("hits"), Triton's
    own launches ("misses") and calls kept on Triton's path ("slow")."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.arg_names = list(kernel.arg_names)
        self._calls: dict[tuple, Any] = {}
        self.stats = {"hits": 0, "misses": 0, "slow": 0}
        self.refusal: str | None = None
        """Why the last call that keeps Triton's path could not be replayed."""

    def __getattr__(self, name: str) -> Any:  # .fn, .configs, .cache ... of the kernel
        return getattr(self.kernel, name)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self._launch(grid, args, kwargs)

    def _launch(self, grid, args: tuple, kwargs: dict):
        key = (tuple(map(_arg_key, args)), tuple((k, _arg_key(v)) for k, v in kwargs.items()),
               grid if isinstance(grid, tuple) else None)
        rec = self._calls.get(key)
        if rec is None:  # first launch: Triton compiles and autotunes
            self._calls[key] = compiled = self.kernel[grid](*args, **kwargs)
            self.stats["misses"] += 1
            if not (hasattr(compiled, "function") and hasattr(compiled, "packed_metadata")):
                self._calls[key] = _SLOW  # Triton's interpreter, or a version we do not know
                self.refusal = f"the launch returned {type(compiled).__name__}, not a compiled kernel"
            return compiled
        if rec is _SLOW or (isinstance(rec, _Recorded) and not _idle(rec.prefix[7:9])):
            self.stats["slow"] += 1
            return self.kernel[grid](*args, **kwargs)
        if not isinstance(rec, _Recorded):  # second launch: record what Triton passes on
            self.stats["misses"] += 1
            recorded, out = self._record(rec, grid, args, kwargs)
            self._calls[key] = recorded if recorded is not None else _SLOW
            return out
        self.stats["hits"] += 1
        bound = rec.bound.copy()
        for index, source in rec.slots:
            bound[index] = args[source] if isinstance(source, int) else kwargs[source]
        if rec.pre_hook is not None:
            rec.pre_hook({**dict(zip(self.arg_names, args)), **kwargs, **rec.config_kwargs})
        g0, g1, g2, _, function, packed, *_ = rec.prefix
        rec.run(g0, g1, g2, _current_stream(), function, packed, None, None, None, *bound)
        return rec.compiled

    def _record(self, compiled, grid, args: tuple, kwargs: dict):
        """Launch through Triton once more with the compiled kernel's launcher spied on; returns
        (the recording or None where it is not safe to replay, Triton's return value)."""
        # Triton 3.x: `run` is a property returning the launcher `_run` (3.6, 3.9), or the
        # launcher itself.
        attr = "_run" if isinstance(getattr(type(compiled), "run", None), property) else "run"
        launcher = getattr(compiled, attr, None)
        if launcher is None:
            self.refusal = f"the compiled kernel has no launcher {attr!r}"
            return None, self.kernel[grid](*args, **kwargs)
        seen: list[tuple] = []

        def spy(*launch_args):
            seen.append(launch_args)
            return launcher(*launch_args)

        setattr(compiled, attr, spy)
        try:
            out = self.kernel[grid](*args, **kwargs)
        finally:
            setattr(compiled, attr, launcher)
        if out is not compiled or len(seen) != 1 or len(seen[0]) < 9:
            self.refusal = (f"Triton launched {len(seen)} times through the launcher "
                            f"{type(compiled).__name__}.{attr} ({[len(a) for a in seen]} "
                            f"arguments), returned the same kernel: {out is compiled}")
            return None, out
        prefix, bound = seen[0][:9], list(seen[0][9:])
        if prefix[4] != compiled.function or prefix[5] is not compiled.packed_metadata \
                or not _idle(prefix[7:9]):
            # enter/exit hooks that do something (a profiler's): Triton's path
            self.refusal = (f"launcher arguments 4-8 are not (function, packed metadata, "
                            f"metadata, idle hooks): {[type(a).__name__ for a in prefix[4:9]]}")
            return None, out
        slots = []
        sources = [(i, a) for i, a in enumerate(args)] + list(kwargs.items())
        for source, value in sources:
            if not isinstance(value, torch.Tensor):
                continue  # part of the call's key: the recorded value is the call's
            where = [i for i, b in enumerate(bound) if b is value]
            if len(where) != 1:
                self.refusal = f"argument {source!r} is {len(where)} launcher arguments"
                return None, out
            slots.append((where[0], source))
            bound[where[0]] = None  # no reference kept to this call's tensor
        if any(isinstance(b, torch.Tensor) for b in bound):
            self.refusal = "a launcher argument is a tensor the call did not pass"
            return None, out
        config = getattr(self.kernel, "best_config", None)  # an autotuner's pick for this call
        pre_hook = getattr(config, "pre_hook", None)
        return _Recorded(compiled, launcher, prefix, bound, slots, pre_hook,
                         config.all_kwargs() if pre_hook is not None else {}), out


def _is_triton_kernel(value: Any) -> bool:
    try:
        from triton.runtime.autotuner import Autotuner
        from triton.runtime.jit import JITFunction
    except ImportError:
        return False
    return isinstance(value, (Autotuner, JITFunction))


def install(modules: list[ModuleType]) -> dict[str, CachedLaunch]:
    """Replace every Triton kernel named `*_kernel` among the modules' globals by a
    `CachedLaunch` (one per kernel, shared by the modules that hold it); idempotent. Returns the
    cached launches by global name."""
    proxies = {id(v.kernel): v for m in modules for v in vars(m).values()
               if isinstance(v, CachedLaunch)}
    installed: dict[str, CachedLaunch] = {}
    for module in modules:
        for name, value in list(vars(module).items()):
            if isinstance(value, CachedLaunch):
                installed[name] = value
            elif name.endswith("_kernel") and _is_triton_kernel(value):
                installed[name] = proxies.setdefault(id(value), CachedLaunch(value))
                setattr(module, name, installed[name])
    return installed


def uninstall(modules: list[ModuleType]) -> None:
    """Put each `CachedLaunch` among the modules' globals back to the Triton kernel it stands in
    for (`install` undone); idempotent."""
    for module in modules:
        for name, value in list(vars(module).items()):
            if isinstance(value, CachedLaunch):
                setattr(module, name, value.kernel)
