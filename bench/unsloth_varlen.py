"""Measurement aid: Unsloth's padding-free attention as it runs on torch >= 2.12, on a lent box whose torch is 2.11.

Unsloth 2026.10.9 sends a packed batch's attention through one flash varlen call when torch's
`torch.nn.attention.varlen.varlen_attn` takes `window_size` and `enable_gqa` (torch >= 2.12); with torch 2.11 it runs
one SDPA call per run of equal-length documents and copies Q/K/V and the outputs around them. On torch 2.12/2.13 it
then takes its "lean" path, `torch.ops.aten._flash_attention_forward` / `_backward` (flash takes GQA natively),
whenever torch would not pick cuDNN for varlen, which torch 2.13 never does on a GPU.

`apply()` makes torch 2.11 pass those checks: a `varlen_attn` with the 2.12 signature (never called: it raises) and
a cuDNN check that says no, as 2.13's does. Unsloth then runs exactly its lean path's aten kernels. Call it before
Unsloth is imported; the bench does when a case carries `+varlen` (BENCH_UNSLOTH_VARLEN=1). On a torch that has the
real thing it does nothing.
"""
from __future__ import annotations

import inspect
import os

ENV = "BENCH_UNSLOTH_VARLEN"


def apply() -> bool:
    """True when the torch >= 2.12 checks were emulated; False when not asked for or torch already passes them."""
    if os.environ.get(ENV) != "1":
        return False
    import torch.nn.attention.varlen as varlen

    if "enable_gqa" in inspect.signature(varlen.varlen_attn).parameters:
        return False

    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                    enable_gqa=False):
        raise RuntimeError("bench/unsloth_varlen.py emulates Unsloth's lean flash path only")

    varlen.varlen_attn = varlen_attn
    varlen._can_use_cudnn = lambda *args, **kwargs: False
    return True
