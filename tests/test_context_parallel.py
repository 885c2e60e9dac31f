"""Context parallelism (flash_attn_rocm.context_parallel).

- The step planner, exhaustively against the global mask (pure Python).
- The split helpers.
- The ring and the all-gather over gloo with 4 spawned processes (subgroups of 2, 3 and 4 ranks):
  on CPU in float64 with the PyTorch block backend (EagerBlocks), against single-process eager
  attention and its autograd gradients (tight tolerance: the algorithm is exact); on one GPU with
  the kernels (every rank on cuda:0, gloo staging through the host), against single-process
  flash_attn_func, within twice PyTorch's own low-precision eager error.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import attention_ref

from flash_attn_rocm.context_parallel import _plan
from flash_attn_rocm.context_parallel import (
    EagerBlocks,
    cp_flash_attn_func,
    cp_flash_attn_varlen_func,
    cp_indices,
    cp_position_ids,
    cp_split,
    cp_unsplit,
)

WORLD_SIZES = (2, 3, 4)
NPROCS = max(WORLD_SIZES)

# ---------------------------------------------------------------- the planner


def _check_plan(q_segs, k_segs, lo, hi):
    """The calls cover exactly the visible cells, once, every call's rows and columns see something,
    and 'aligned' calls' kernel distances are the global ones."""
    gq = torch.cat([torch.arange(s.start, s.start + s.length) for s in q_segs])
    gk = torch.cat([torch.arange(s.start, s.start + s.length) for s in k_segs])
    d = gk[None, :] - gq[:, None]
    want = torch.ones(d.shape, dtype=torch.bool)
    if lo is not None:
        want &= d >= lo
    if hi is not None:
        want &= d <= hi
    got = torch.zeros(d.shape, dtype=torch.int64)
    for c in _plan.plan(q_segs, k_segs, lo, hi):
        (a, b), (e, f) = c.q_rows, c.k_rows
        m, n = b - a, f - e
        i, j = torch.arange(m)[:, None], torch.arange(n)[None, :]
        rel = j - i - (n - m)
        left, right = c.window[0], 0 if c.causal else c.window[1]
        vis = torch.ones(m, n, dtype=torch.bool)
        if left >= 0:
            vis &= rel >= -left
        if right >= 0:
            vis &= rel <= right
        assert vis.any(1).all() and vis.any(0).all(), c
        got[a:b, e:f] += vis.long()
        if c.aligned:
            assert torch.equal(i + n - m - j, -d[a:b, e:f]), c
    assert torch.equal(got, want.long()), (q_segs, k_segs, lo, hi)


BANDS = [(None, None), (None, 0), (-3, 0), (-7, 2), (-1, 1), (None, 4), (-5, 5), (0, 0), (-6, None)]


def test_plan_zigzag_exhaustive():
    for w in (1, 2, 3, 4):
        for c in (1, 2, 3, 5):
            for r in range(w):
                for lo, hi in BANDS:
                    for s in range(w):
                        _check_plan(_plan.zigzag_segments(r, w, c), _plan.zigzag_segments(s, w, c), lo, hi)
                    _check_plan(_plan.zigzag_segments(r, w, c), [_plan.Segment(0, 0, 2 * w * c)], lo, hi)
                    _check_plan(_plan.contiguous_segments(r, 2 * c), [_plan.Segment(0, 0, 2 * w * c)], lo, hi)


def test_plan_random_segments():
    rng = random.Random(0)

    def segs():
        out, local = [], 0
        for _ in range(rng.randint(1, 3)):
            length = rng.randint(1, 6)
            out.append(_plan.Segment(local, rng.randint(0, 20), length))
            local += length
        return out

    for _ in range(2000):
        lo, hi = rng.choice([None, *range(-8, 8)]), rng.choice([None, *range(-8, 8)])
        if lo is None or hi is None or lo <= hi:
            _check_plan(segs(), segs(), lo, hi)


def test_plan_classic_zigzag_steps():
    """Causal zigzag: one call per step: the whole local square causal on the diagonal step, all
    queries against the first key chunk of an earlier rank, the second query chunk against all
    keys of a later rank."""
    w, c = 4, 8
    for r in range(w):
        for s in range(w):
            calls = _plan.plan(_plan.zigzag_segments(r, w, c), _plan.zigzag_segments(s, w, c), None, 0)
            assert len(calls) == 1
            call = calls[0]
            if s == r:
                assert (call.q_rows, call.k_rows, call.causal) == ((0, 2 * c), (0, 2 * c), True)
            elif s < r:
                assert (call.q_rows, call.k_rows, call.causal) == ((0, 2 * c), (0, c), False)
            else:
                assert (call.q_rows, call.k_rows, call.causal) == ((c, 2 * c), (0, 2 * c), False)


# ---------------------------------------------------------------- split helpers


@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
def test_split_roundtrip(layout):
    x = torch.arange(2 * 24 * 3).reshape(2, 24, 3)
    for w in (1, 2, 3, 4):
        shards = [cp_split(x, w, r, layout=layout) for r in range(w)]
        assert torch.equal(cp_unsplit(shards, layout=layout), x)
        assert torch.equal(torch.cat([cp_position_ids(24, w, r, layout=layout) for r in range(w)]).sort().values,
                           torch.arange(24))
    assert cp_indices(8, 2, 0).tolist() == [0, 1, 6, 7]
    assert cp_indices(8, 2, 1).tolist() == [2, 3, 4, 5]


def test_split_varlen():
    cu = torch.tensor([0, 8, 8, 24], dtype=torch.int32)
    x = torch.arange(24)
    shards = [cp_split(x, 2, r, dim=0, cu_seqlens=cu) for r in range(2)]
    assert shards[0].tolist() == [0, 1, 6, 7, 8, 9, 10, 11, 20, 21, 22, 23]
    assert torch.equal(cp_unsplit(shards, dim=0, cu_seqlens=cu), x)
    assert cp_position_ids(None, 2, 1, cu_seqlens=cu).tolist() == [2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10, 11]
    with pytest.raises(ValueError, match="multiples of 4"):
        cp_indices(None, 2, 0, cu_seqlens=[0, 6])


# ---------------------------------------------------------------- the distributed cases


def _cases(gpu: bool):
    """(id, world_size, kwargs) for every case; kwargs: shapes and flash_attn_func arguments."""
    base = []
    for causal in (False, True):
        for method in ("ring", "all_gather"):
            base.append(dict(causal=causal, method=method))
    base += [
        dict(causal=True, method="ring", nheads_k=2),  # GQA
        dict(causal=True, method="all_gather", nheads_k=1),  # MQA
        dict(causal=True, method="ring", window_size=(5, 0)),
        dict(causal=False, method="ring", window_size=(4, 3)),
        dict(causal=False, method="all_gather", window_size=(7, 2)),
        dict(causal=True, method="ring", softcap=2.0),
        dict(causal=True, method="ring", layout="contiguous"),
        dict(causal=False, method="all_gather", layout="contiguous", window_size=(3, 3)),
        dict(causal=True, method="all_gather", alibi=True),
        dict(causal=True, method="ring", seqlen_k=2),  # cross-attention, sk != sq, bottom-right aligned
        dict(causal=True, method="ring", deterministic=True),
        dict(varlen=True, causal=True, method="ring"),
        dict(varlen=True, causal=False, method="ring", nheads_k=2),
        dict(varlen=True, causal=True, method="all_gather", window_size=(6, 0)),
        dict(varlen=True, causal=True, method="all_gather"),
    ]
    if not gpu:  # the kernels' input contract, checked on CPU in float16
        base += [dict(kw, contract=True) for kw in (
            dict(causal=True, method="ring", nheads_k=2), dict(causal=False, method="ring", window_size=(4, 3)),
            dict(causal=True, method="all_gather", window_size=(5, 0)), dict(varlen=True, causal=True, method="ring"),
            dict(varlen=True, causal=False, method="all_gather", nheads_k=1))]
    cases = []
    for w in WORLD_SIZES:
        for i, kw in enumerate(base):
            name = "-".join(f"{k}={v}" for k, v in kw.items())
            cases.append((f"w{w}-{i}-{name}", w, kw))
    return cases


class ContractBlocks(EagerBlocks):
    """EagerBlocks that first checks what the kernels' ops check (csrc/api/checks.h): half dtypes,
    contiguous last dim, 16-byte aligned rows, float32 contiguous lse of the right shape, int32
    cu_seqlens; so the CPU run catches a view the kernels would refuse."""

    @staticmethod
    def _tensor(name, t, rank):
        assert t.dtype in (torch.float16, torch.bfloat16), (name, t.dtype)
        assert t.dim() == rank and t.stride(-1) == 1, (name, t.shape, t.stride())
        assert t.data_ptr() % 16 == 0 and all(st % 8 == 0 for st in t.stride()[:-1]), (name, t.stride())

    def _check(self, tensors, lse, varlen):
        rank = 3 if varlen is not None else 4
        for name, t in tensors.items():
            self._tensor(name, t, rank)
        q = tensors["q"]
        if varlen is not None:
            cu_q, cu_k, max_q, max_k = varlen
            assert cu_q.dtype == cu_k.dtype == torch.int32 and cu_q.shape == cu_k.shape
            assert int(cu_q[-1]) == q.shape[0] and int(cu_k[-1]) == tensors["k"].shape[0]
            assert isinstance(max_q, int) and isinstance(max_k, int)
        if lse is not None:
            shape = (q.shape[1], q.shape[0]) if varlen is not None else (q.shape[0], q.shape[2], q.shape[1])
            assert lse.dtype == torch.float32 and lse.is_contiguous() and tuple(lse.shape) == shape

    def forward(self, q, k, v, causal, window, args, varlen=None):
        self._check(dict(q=q, k=k, v=v), None, varlen)
        assert min(window) >= -1
        return super().forward(q, k, v, causal, window, args, varlen)

    def backward(self, dout, q, k, v, out, lse, causal, window, args, varlen=None):
        self._check(dict(q=q, k=k, v=v, out=out, dout=dout), lse, varlen)
        return super().backward(dout, q, k, v, out, lse, causal, window, args, varlen)


def _reference(q, k, v, dout, fn, upcast=False):
    """Out and gradients of the whole attention in one process; fn(q, k, v) -> out. upcast: leaves
    and dout in float32 (the accuracy reference for half-precision runs)."""
    dt = torch.float32 if upcast else q.dtype
    q, k, v = (t.detach().to(dt).requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(dout.to(out.dtype))
    return out.detach(), q.grad, k.grad, v.grad


def _run_case(kw, group, rank, w, device, dtype, gpu):
    torch.manual_seed(1234)
    contract = kw.get("contract", False)
    if contract:
        dtype = torch.float16
    nheads, nheads_k, d = 4, kw.get("nheads_k", 4), 16 if gpu else 8
    chunk = 8 if gpu else 3
    layout = kw.get("layout", "zigzag")
    parts = 2 * w if layout == "zigzag" else w
    args = dict(causal=kw["causal"], window_size=kw.get("window_size", (-1, -1)), softcap=kw.get("softcap", 0.0))
    deterministic = kw.get("deterministic", False)
    alibi = torch.rand(nheads, device=device) * 0.5 if kw.get("alibi") else None
    blocks = None if gpu else ContractBlocks() if contract else EagerBlocks()
    cp_kw = dict(group=group, method=kw["method"], layout=layout, block_attention=blocks,
                 deterministic=deterministic, alibi_slopes=alibi, **args)

    if kw.get("varlen"):
        lengths = [parts * chunk, 2 * parts * chunk, parts, 0, parts * 3]
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
        bounds = list(zip(cu.tolist(), cu.tolist()[1:]))
        q = torch.randn(int(cu[-1]), nheads, d, device=device, dtype=dtype)
        k, v = (torch.randn(int(cu[-1]), nheads_k, d, device=device, dtype=dtype) for _ in range(2))

        def eager(q, k, v):  # per sequence, in the leaves' dtype
            return torch.cat([attention_ref(q[None, a:b], k[None, a:b], v[None, a:b], upcast=False, alibi_slopes=alibi,
                                            **args)[0][0] for a, b in bounds])

        def kernels(q, k, v):
            from flash_attn_rocm import flash_attn_varlen_func

            return flash_attn_varlen_func(q, k, v, cu, cu, max(lengths), max(lengths), alibi_slopes=alibi, **args)

        split = dict(dim=0, cu_seqlens=cu, layout=layout)

        def run(ql, kl, vl):
            return cp_flash_attn_varlen_func(ql, kl, vl, cu, cu, max(lengths), max(lengths), **cp_kw)
    else:
        q = torch.randn(2, parts * chunk, nheads, d, device=device, dtype=dtype)
        k, v = (torch.randn(2, parts * kw.get("seqlen_k", chunk), nheads_k, d, device=device, dtype=dtype)
                for _ in range(2))

        def eager(q, k, v):
            return attention_ref(q, k, v, upcast=False, alibi_slopes=alibi, **args)[0]

        def kernels(q, k, v):
            from flash_attn_rocm import flash_attn_func

            return flash_attn_func(q, k, v, alibi_slopes=alibi, deterministic=deterministic, **args)

        split = dict(dim=1, layout=layout)

        def run(ql, kl, vl):
            return cp_flash_attn_func(ql, kl, vl, **cp_kw)

    dout = torch.randn_like(q)
    ql, kl, vl = (cp_split(t, w, rank, **split).requires_grad_() for t in (q, k, v))
    out = run(ql, kl, vl)
    out.backward(cp_split(dout, w, rank, **split))
    got = (out.detach(), ql.grad, kl.grad, vl.grad)

    def mine(tensors):
        return [cp_split(t, w, rank, **split) for t in tensors]

    names = ("out", "dq", "dk", "dv")
    if contract:  # float16 on CPU: the contract, and a loose check of the values
        for name, g, r_ in zip(names, got, mine(_reference(q, k, v, dout, eager, upcast=True))):
            assert g.dtype == dtype
            torch.testing.assert_close(g.float(), r_, rtol=2e-2, atol=2e-2, msg=lambda m: f"{name}: {m}")
        return
    if not gpu:  # float64, the same algorithm as eager attention: equal to rounding
        for name, g, r_ in zip(names, got, mine(_reference(q, k, v, dout, eager))):
            assert g.shape == r_.shape and g.dtype == r_.dtype, (name, g.shape, r_.shape)
            torch.testing.assert_close(g, r_, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")
        return
    single = mine(_reference(q, k, v, dout, kernels))
    ref32 = mine(_reference(q, k, v, dout, eager, upcast=True))
    low = mine(_reference(q, k, v, dout, eager))
    for name, g, fa, r32, pt in zip(names, got, single, ref32, low):
        assert g.shape == fa.shape and g.dtype == fa.dtype, (name, g.shape, fa.shape)
        eager_err = (pt.float() - r32).abs().max().item()
        # Each kernel call returns its block's out/dq/dk/dv rounded to dtype, and the ring sums up
        # to 2 w of them (zigzag: two chunks a rank) in fp32: half an ulp of the largest value per
        # call on top of one call's error (bf16 w4: about 0.015 at |dk| 1; fp16: 8x less).
        rounding = 2 * w * 0.5 * torch.finfo(dtype).eps * r32.abs().max().item()
        atol = 1e-3 * max(1.0, r32.abs().max().item()) + rounding
        err = (g.float() - r32).abs().max().item()
        assert err <= 2 * eager_err + atol, f"{name}: error {err:.3g} vs fp32, eager {dtype} error {eager_err:.3g}"
        err_fa = (g.float() - fa.float()).abs().max().item()
        assert err_fa <= 2 * eager_err + atol, (f"{name}: {err_fa:.3g} from single-process flash_attn_func, eager "
                                                f"{dtype} error {eager_err:.3g}")


def _refusals(group, device):
    """Arguments the ring refuses, by name."""
    q = torch.randn(1, 4, 2, 8, device=device, dtype=torch.float64)
    eager = EagerBlocks()
    with pytest.raises(NotImplementedError, match="dropout_p"):
        cp_flash_attn_func(q, q, q, dropout_p=0.1, group=group, block_attention=eager)
    with pytest.raises(NotImplementedError, match="alibi_slopes"):
        cp_flash_attn_func(q, q, q, alibi_slopes=torch.ones(2, device=device), causal=True, group=group,
                           block_attention=eager)
    with pytest.raises(NotImplementedError, match="window_size"):
        cu = torch.tensor([0, 4 * dist.get_world_size(group), 12 * dist.get_world_size(group)], dtype=torch.int32)
        ql = torch.randn(int(cu[-1]) // dist.get_world_size(group), 2, 8, dtype=torch.float64, device=device)
        cp_flash_attn_varlen_func(ql, ql, ql, cu, cu, 8, 8, causal=True, window_size=(3, 0), group=group,
                                  block_attention=eager)
    with pytest.raises(ValueError, match="multiple of"):
        cp_flash_attn_func(q[:, :3], q[:, :3], q[:, :3], causal=True, group=group, block_attention=eager)
    # Inference (no autograd) takes the same path.
    q = torch.randn(2, 8, 2, 8, device=device, dtype=torch.float64)
    with torch.no_grad():
        out, lse, _ = cp_flash_attn_func(q, q, q, causal=True, group=group, block_attention=eager,
                                         return_attn_probs=True)
    out_grad = cp_flash_attn_func(q.clone().requires_grad_(), q, q, causal=True, group=group, block_attention=eager)
    torch.testing.assert_close(out, out_grad.detach())
    assert lse.shape == (2, 2, 8) and not out.requires_grad


def _worker(rank, nprocs, init_file, out_dir, gpu, dtype_name):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=nprocs,
                            timeout=datetime.timedelta(seconds=60))
    device = "cuda:0" if gpu else "cpu"
    dtype = getattr(torch, dtype_name)
    if not gpu:
        torch.set_num_threads(1)
    groups = {w: dist.new_group(list(range(w))) for w in WORLD_SIZES}
    results = {}
    for case_id, w, kw in _cases(gpu):
        if rank >= w:
            continue
        try:
            _run_case(kw, groups[w], rank, w, device, dtype, gpu)
            results[case_id] = "ok"
        except Exception:
            results[case_id] = traceback.format_exc()
    if rank < 2:
        try:
            _refusals(groups[2], device)
            results["refusals"] = "ok"
        except Exception:
            results["refusals"] = traceback.format_exc()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


def _spawn(tmp_path_factory, gpu, dtype_name):
    out_dir = tmp_path_factory.mktemp(f"cp_{'gpu' if gpu else 'cpu'}_{dtype_name}")
    mp.spawn(_worker, args=(NPROCS, str(out_dir / "init"), str(out_dir), gpu, dtype_name), nprocs=NPROCS)
    results = {}
    for r in range(NPROCS):
        with open(out_dir / f"rank{r}.json") as f:
            for case_id, status in json.load(f).items():
                results.setdefault(case_id, {})[r] = status
    return results


def _assert_case(results, case_id):
    statuses = results[case_id]
    failures = {r: s for r, s in statuses.items() if s != "ok"}
    assert not failures, "\n".join(f"rank {r}:\n{s}" for r, s in failures.items())


@pytest.fixture(scope="module")
def cpu_results(tmp_path_factory):
    return _spawn(tmp_path_factory, False, "float64")


@pytest.mark.parametrize("case_id", [c[0] for c in _cases(False)] + ["refusals"])
def test_cpu_gloo(cpu_results, case_id):
    _assert_case(cpu_results, case_id)


_GPU_DTYPES = ("float16", "bfloat16")


@pytest.fixture(scope="module", params=_GPU_DTYPES)
def gpu_results(request, tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return _spawn(tmp_path_factory, True, request.param)


@pytest.mark.parametrize("case_id", [c[0] for c in _cases(True)])
def test_gpu_kernels_one_device(gpu_results, case_id):
    _assert_case(gpu_results, case_id)


def test_benchmark_command_line():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_context_parallel

    args = bench_context_parallel.parse_args(["--gpus", "2", "4", "--method", "ring", "all_gather"])
    assert args.gpus == [2, 4] and args.seqlen == 128 * 1024 and args.headdim == 128 and args.causal
