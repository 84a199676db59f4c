"""Triton kernel: varlen bidirectional attention with ALiBi (FlashAttention-2 style).

Computes, on the packed tokens of a right-padded batch (no padding materialised, no [S, S] bias in memory):

    out[i] = softmax_j( q_i . k_j / sqrt(D) - slope_h * |pos_i - pos_j| ) @ v_j,   j in the sequence of i

Forward: one program per (query block, sequence, head) streams the key blocks of its own sequence with an
online softmax and saves the row logsumexp. Backward recomputes the probabilities from that logsumexp
(no [T, T] matrix is ever stored): a small kernel for delta = rowsum(dO * O), then one kernel for dK/dV
(loop over query blocks) and one for dQ (loop over key blocks), so no atomics are needed. When one key block
holds every sequence (S <= 128 at head dim 64, as in pretraining), a single kernel does all of it.

The launches are wrapped as torch.library custom ops (mosaicbert::triton_alibi_varlen_fwd / _bwd, with fake
functions and an autograd registration), so torch.compile treats the attention as an opaque call instead of
tracing the kernels; inside, every input is made contiguous before its strides are handed to a kernel.

Self-contained on purpose (torch + triton + stdlib): `save_pretrained` copies this file next to the weights.
Triton is imported in a try block so that transformers' remote-code import check does not require it.
Only long-standing Triton features are used (tl.load/store/dot/exp2 with masks) so it survives upgrades.
Run on CPU with TRITON_INTERPRET=1 set before this module is imported (that is how the tests run it).
"""

from __future__ import annotations

import math
import os

import torch

from .padding import max_seqlen_bound

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:
    triton = tl = None
    HAS_TRITON = False

# The interpreter is chosen when the kernels are decorated (at import), so read the variable once here.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
_LOG2E = 1.4426950408889634  # exp(x) = exp2(x * log2(e)): exp2 is the native instruction
_DELTA_BLOCK_T = 64  # tokens per program of the backward's delta kernel

if HAS_TRITON:

    @triton.jit
    def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        # fp32-accumulating matmul. UPCAST only under the interpreter with bf16: it keeps bf16 as raw uint16
        # and would multiply the bit patterns as integers (Triton 3.8), so compute in fp32 there.
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        return tl.dot(a, b, input_precision=PRECISION)

    @triton.jit
    def _load_rows(P, start, offs, mask, h, stride_t, stride_h, offs_d):
        """[len(offs), D] block of one head's rows of a packed [T, H, D] tensor (zeros past the sequence)."""
        return tl.load(P + (start + offs)[:, None] * stride_t + h * stride_h + offs_d[None, :],
                       mask=mask[:, None], other=0.0)

    @triton.jit
    def _alibi_scores(q, k, offs_m, offs_n, slope, qk_scale, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """[BLOCK_M, BLOCK_N] fp32 scores in the log2 domain: q.k * scale - slope * |i - j|.
        The cast keeps them fp32 if a caller passes the scale as fp64."""
        s = (_dot(q, tl.trans(k), PRECISION, UPCAST) * qk_scale).to(tl.float32)
        return s - slope * tl.abs(offs_m[:, None] - offs_n[None, :]).to(tl.float32)

    @triton.jit
    def _recompute_probs(q, k, offs_m, offs_n, mask_m, mask_n, lse, slope, qk_scale,
                         PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """Backward: the forward's probabilities [BLOCK_M, BLOCK_N] from the saved log2-domain logsumexp."""
        p = tl.exp2(_alibi_scores(q, k, offs_m, offs_n, slope, qk_scale, PRECISION, UPCAST) - lse[:, None])
        return tl.where(mask_m[:, None] & mask_n[None, :], p, 0.0)

    @triton.jit
    def _attention_fwd_kernel(
        Q, K, V, O, LSE, CU, SLOPES,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
        stride_ot, stride_oh, stride_lh,
        qk_scale,  # 1/sqrt(D) * log2(e): scores live in the log2 domain
        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        pid_m, b, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        start = tl.load(CU + b).to(tl.int64)  # int64: token * stride can exceed 2^31 for big batches
        seqlen = (tl.load(CU + b + 1) - tl.load(CU + b)).to(tl.int32)
        if pid_m * BLOCK_M >= seqlen:  # grid is sized by the longest sequence; shorter ones exit early
            return
        slope = tl.load(SLOPES + h) * 1.4426950408889634  # ALiBi slope in the log2 domain too
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # positions inside the sequence
        offs_n0 = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        mask_m = offs_m < seqlen

        q = _load_rows(Q, start, offs_m, mask_m, h, stride_qt, stride_qh, offs_d)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max
        l_i = tl.zeros([BLOCK_M], tl.float32)  # running row sum of exp2(s - m_i)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        for start_n in range(0, seqlen, BLOCK_N):  # bidirectional: every key block of the sequence
            offs_n = start_n + offs_n0
            mask_n = offs_n < seqlen
            k = _load_rows(K, start, offs_n, mask_n, h, stride_kt, stride_kh, offs_d)
            v = _load_rows(V, start, offs_n, mask_n, h, stride_vt, stride_vh, offs_d)
            s = _alibi_scores(q, k, offs_m, offs_n, slope, qk_scale, PRECISION, UPCAST)  # [BLOCK_M, BLOCK_N]
            s = tl.where(mask_n[None, :], s, float("-inf"))  # keys past the end of the sequence
            # online softmax; the first block always holds key 0, so m_new is finite from the start
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION, UPCAST)
            m_i = m_new
        acc = acc / l_i[:, None]
        tl.store(O + (start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
                 acc.to(O.dtype.element_ty), mask=mask_m[:, None])
        tl.store(LSE + h * stride_lh + start + offs_m, m_i + tl.log2(l_i), mask=mask_m)  # log2 domain

    @triton.jit
    def _attention_bwd_dkdv_kernel(
        Q, K, V, O, DO, LSE, DELTA, DQ, DK, DV, CU, SLOPES,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
        stride_dot, stride_doh, stride_dqt, stride_dqh, stride_dkt, stride_dkh, stride_dvt, stride_dvh, stride_lh,
        qk_scale, sm_scale,
        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WHOLE_SEQUENCE: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        # One program owns a key block and loops over the query blocks: dK, dV accumulate in registers.
        # WHOLE_SEQUENCE (the launcher's promise that BLOCK_N >= every sequence length): the key block is the
        # whole sequence, so each query block's dS rows are complete and dQ = dS K is finished here, and
        # delta = rowsum(dO * O) is computed from O here too. One launch instead of three (delta, dK/dV, dQ),
        # and P and dP are computed once instead of twice.
        pid_n, b, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        start = tl.load(CU + b).to(tl.int64)
        seqlen = (tl.load(CU + b + 1) - tl.load(CU + b)).to(tl.int32)
        if pid_n * BLOCK_N >= seqlen:
            return
        slope = tl.load(SLOPES + h) * 1.4426950408889634
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m0 = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        mask_n = offs_n < seqlen
        k = _load_rows(K, start, offs_n, mask_n, h, stride_kt, stride_kh, offs_d)
        v = _load_rows(V, start, offs_n, mask_n, h, stride_vt, stride_vh, offs_d)
        dk = tl.zeros([BLOCK_N, D], tl.float32)
        dv = tl.zeros([BLOCK_N, D], tl.float32)
        for start_m in range(0, seqlen, BLOCK_M):
            offs_m = start_m + offs_m0
            mask_m = offs_m < seqlen
            q = _load_rows(Q, start, offs_m, mask_m, h, stride_qt, stride_qh, offs_d)
            do = _load_rows(DO, start, offs_m, mask_m, h, stride_dot, stride_doh, offs_d)
            lse = tl.load(LSE + h * stride_lh + start + offs_m, mask=mask_m, other=0.0)
            if WHOLE_SEQUENCE:
                o = _load_rows(O, start, offs_m, mask_m, h, stride_ot, stride_oh, offs_d)
                delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
            else:
                delta = tl.load(DELTA + h * stride_lh + start + offs_m, mask=mask_m, other=0.0)
            p = _recompute_probs(q, k, offs_m, offs_n, mask_m, mask_n, lse, slope, qk_scale, PRECISION, UPCAST)
            dv += _dot(tl.trans(p.to(do.dtype)), do, PRECISION, UPCAST)
            dp = _dot(do, tl.trans(v), PRECISION, UPCAST)
            ds = p * (dp - delta[:, None])  # softmax backward; the ALiBi bias is constant
            dk += _dot(tl.trans(ds.to(q.dtype)), q, PRECISION, UPCAST)
            if WHOLE_SEQUENCE:
                dq = (_dot(ds.to(k.dtype), k, PRECISION, UPCAST) * sm_scale).to(tl.float32)
                tl.store(DQ + (start + offs_m)[:, None] * stride_dqt + h * stride_dqh + offs_d[None, :],
                         dq.to(DQ.dtype.element_ty), mask=mask_m[:, None])
        dk = (dk * sm_scale).to(tl.float32)
        tl.store(DK + (start + offs_n)[:, None] * stride_dkt + h * stride_dkh + offs_d[None, :],
                 dk.to(DK.dtype.element_ty), mask=mask_n[:, None])
        tl.store(DV + (start + offs_n)[:, None] * stride_dvt + h * stride_dvh + offs_d[None, :],
                 dv.to(DV.dtype.element_ty), mask=mask_n[:, None])

    @triton.jit
    def _attention_bwd_dq_kernel(
        Q, K, V, DO, LSE, DELTA, DQ, CU, SLOPES,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
        stride_dot, stride_doh, stride_dqt, stride_dqh, stride_lh,
        qk_scale, sm_scale,
        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        # one program owns a query block and loops over the key blocks: dQ accumulates in registers
        pid_m, b, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        start = tl.load(CU + b).to(tl.int64)
        seqlen = (tl.load(CU + b + 1) - tl.load(CU + b)).to(tl.int32)
        if pid_m * BLOCK_M >= seqlen:
            return
        slope = tl.load(SLOPES + h) * 1.4426950408889634
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n0 = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        mask_m = offs_m < seqlen
        q = _load_rows(Q, start, offs_m, mask_m, h, stride_qt, stride_qh, offs_d)
        do = _load_rows(DO, start, offs_m, mask_m, h, stride_dot, stride_doh, offs_d)
        lse = tl.load(LSE + h * stride_lh + start + offs_m, mask=mask_m, other=0.0)
        delta = tl.load(DELTA + h * stride_lh + start + offs_m, mask=mask_m, other=0.0)
        dq = tl.zeros([BLOCK_M, D], tl.float32)
        for start_n in range(0, seqlen, BLOCK_N):
            offs_n = start_n + offs_n0
            mask_n = offs_n < seqlen
            k = _load_rows(K, start, offs_n, mask_n, h, stride_kt, stride_kh, offs_d)
            v = _load_rows(V, start, offs_n, mask_n, h, stride_vt, stride_vh, offs_d)
            p = _recompute_probs(q, k, offs_m, offs_n, mask_m, mask_n, lse, slope, qk_scale, PRECISION, UPCAST)
            dp = _dot(do, tl.trans(v), PRECISION, UPCAST)
            ds = p * (dp - delta[:, None])
            dq += _dot(ds.to(k.dtype), k, PRECISION, UPCAST)
        dq = (dq * sm_scale).to(tl.float32)
        tl.store(DQ + (start + offs_m)[:, None] * stride_dqt + h * stride_dqh + offs_d[None, :],
                 dq.to(DQ.dtype.element_ty), mask=mask_m[:, None])

    @triton.jit
    def _attention_bwd_delta_kernel(O, DO, DELTA, T, stride_ot, stride_oh, stride_dot, stride_doh, stride_lh,
                          D: tl.constexpr, BLOCK_T: tl.constexpr):
        # delta[h, t] = rowsum(dO * O) in fp32, read straight from the bf16/fp16 tensors (no upcast copies)
        pid_t, h = tl.program_id(0), tl.program_id(1)
        offs_t = (pid_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)  # int64: t * stride can pass 2^31
        offs_d = tl.arange(0, D)
        mask_t = offs_t < T
        o = _load_rows(O, 0, offs_t, mask_t, h, stride_ot, stride_oh, offs_d).to(tl.float32)
        do = _load_rows(DO, 0, offs_t, mask_t, h, stride_dot, stride_doh, offs_d).to(tl.float32)
        tl.store(DELTA + h * stride_lh + offs_t, tl.sum(o * do, 1), mask=mask_t)


def _check_inputs(qkv: torch.Tensor) -> None:
    if not HAS_TRITON:
        raise ValueError("attention_backend='triton' requested but triton is not installed")
    if not (qkv.is_cuda or TRITON_INTERPRET):
        raise ValueError(
            f"attention_backend='triton' needs CUDA tensors (got device={qkv.device}); on CPU it only runs "
            "under the Triton interpreter (TRITON_INTERPRET=1 set before import, for tests)"
        )
    if qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"expected qkv of shape [T, 3, H, D], got {tuple(qkv.shape)}")
    if qkv.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"attention_backend='triton' supports head dims {SUPPORTED_HEAD_DIMS}, got {qkv.shape[-1]}")
    if qkv.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"attention_backend='triton' supports fp32/fp16/bf16, got {qkv.dtype}")


def _config(D: int, dtype: torch.dtype, block_m: int | None, block_n: int | None):
    # Starting points, not tuned. Powers of two >= 16 (tl.dot's minimum tile). 64x64 fp16/bf16 tiles need at
    # most ~75 KB of shared memory (D=128 dK/dV); fp32 tiles are twice the bytes and D=128 would need ~210 KB
    # (more than an A100 has), so fp32 with D >= 64 uses 32x32 tiles.
    default = 32 if dtype == torch.float32 and D >= 64 else 64
    bm = block_m or default
    bn = block_n or default
    num_warps = 4 if D <= 64 and bm * bn < 128 * 128 else 8  # bigger tiles: more warps to hold them
    return bm, bn, num_warps


# The one-kernel backward's default tiles: 16 queries x a key block of the whole sequence, 4 warps. On an H200 at
# B=256, S=128, D=64 (benchmarks/attention_backends.py --triton_blocks 64x64 16x128): 0.263 ms per layer against
# 0.283 for the three kernels at 64x64; bigger query blocks spill registers (64x128: 0.54 ms). Beyond 128 keys x
# D=64 it is not used by default (not measured, and the [keys, D] fp32 dK/dV accumulators grow).
_WHOLE_SEQUENCE_BLOCK_M = 16
_WHOLE_SEQUENCE_KEYS_X_DIM = 128 * 64


def _bwd_config(D: int, dtype: torch.dtype, max_seqlen: int, block_m: int | None, block_n: int | None):
    """Backward tiles -> (bm, bn, num_warps, whole_sequence).

    whole_sequence when the key block covers every sequence (bn >= max_seqlen): then one kernel computes dQ, dK,
    dV and delta. By default it is chosen for 16-bit inputs when the block fits the budget above; an explicit
    block_n chooses it whenever block_n >= max_seqlen.
    """
    if block_n is None and dtype != torch.float32:
        whole = max(16, triton.next_power_of_2(max(int(max_seqlen), 1)))
        if whole * D <= _WHOLE_SEQUENCE_KEYS_X_DIM:
            block_m, block_n = block_m or _WHOLE_SEQUENCE_BLOCK_M, whole
    bm, bn, num_warps = _config(D, dtype, block_m, block_n)
    return bm, bn, num_warps, bn >= max_seqlen


# Software-pipelining depth of the kernels' loops; None leaves Triton's default (not tuned).
_NUM_STAGES: int | None = None


def _launch_args(num_warps: int) -> dict:
    return dict(num_warps=num_warps) if _NUM_STAGES is None else dict(num_warps=num_warps, num_stages=_NUM_STAGES)


def _dot_args(dtype: torch.dtype) -> dict:
    # fp32 inputs: full-precision dots (Triton would use TF32 on Ampere+ otherwise); ignored for fp16/bf16
    upcast = TRITON_INTERPRET and dtype == torch.bfloat16
    return dict(PRECISION="ieee" if dtype == torch.float32 or upcast else "tf32", UPCAST=upcast)


def _launch_fwd(qkv, cu_seqlens, max_seqlen: int, slopes, block_m=None, block_n=None):
    """Runs the forward kernel on real tensors -> (out [T, H, D], lse [H, T] fp32, log2 domain), both contiguous.

    Every input is first put in the layout the kernel is written for (qkv contiguous, int32 cu_seqlens, fp32
    slopes), whatever the caller passed: the strides handed to the kernel are then always those of the
    tensors it reads.
    """
    qkv = qkv.contiguous()
    T, _, H, D = qkv.shape
    q, k, v = qkv.unbind(1)  # each [T, H, D], strided views (3*H*D, D, 1) into qkv: no copies
    out = torch.empty(T, H, D, device=qkv.device, dtype=qkv.dtype)
    lse = torch.empty(H, T, device=qkv.device, dtype=torch.float32)  # log2-domain logsumexp per row
    cu_seqlens = cu_seqlens.to(device=qkv.device, dtype=torch.int32).contiguous()
    slopes = slopes.to(device=qkv.device, dtype=torch.float32).contiguous()
    bm, bn, num_warps = _config(D, qkv.dtype, block_m, block_n)
    sm_scale = 1.0 / math.sqrt(D)
    batch = cu_seqlens.numel() - 1
    if T > 0 and batch > 0 and max_seqlen > 0:
        grid = (triton.cdiv(max_seqlen, bm), batch, H)
        _attention_fwd_kernel[grid](
            q, k, v, out, lse, cu_seqlens, slopes,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1), lse.stride(0),
            sm_scale * _LOG2E,
            D=D, BLOCK_M=bm, BLOCK_N=bn, **_launch_args(num_warps), **_dot_args(qkv.dtype),
        )
    return out, lse


def _launch_bwd(dout, qkv, out, lse, cu_seqlens, slopes, max_seqlen: int, block_m=None, block_n=None):
    """Runs the backward kernels on real tensors -> dqkv [T, 3, H, D], contiguous (same layout rules as
    `_launch_fwd`; dout may come in any layout, e.g. expanded or transposed by the ops after attention)."""
    qkv = qkv.contiguous()
    T, _, H, D = qkv.shape
    dout = dout.to(qkv.dtype).contiguous()
    out = out.contiguous()
    lse = lse.to(torch.float32).contiguous()
    cu_seqlens = cu_seqlens.to(device=qkv.device, dtype=torch.int32).contiguous()
    slopes = slopes.to(device=qkv.device, dtype=torch.float32).contiguous()
    bm, bn, num_warps, whole_sequence = _bwd_config(D, qkv.dtype, max_seqlen, block_m, block_n)
    sm_scale = 1.0 / math.sqrt(D)
    dqkv = torch.empty(T, 3, H, D, device=qkv.device, dtype=qkv.dtype)  # kernels write into its 3 slices
    batch = cu_seqlens.numel() - 1
    if T > 0 and batch > 0 and max_seqlen > 0:
        q, k, v = qkv.unbind(1)
        dq, dk, dv = dqkv.unbind(1)
        # delta_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij: the softmax-backward correction, [H, T] fp32.
        # The whole-sequence kernel computes it itself (lse stands in for the unused pointer).
        delta = lse
        if not whole_sequence:
            delta = torch.empty(H, T, device=qkv.device, dtype=torch.float32)
            _attention_bwd_delta_kernel[(triton.cdiv(T, _DELTA_BLOCK_T), H)](
                out, dout, delta, T, out.stride(0), out.stride(1), dout.stride(0), dout.stride(1), delta.stride(0),
                D=D, BLOCK_T=_DELTA_BLOCK_T,
            )
        common = dict(D=D, BLOCK_M=bm, BLOCK_N=bn, **_launch_args(num_warps), **_dot_args(qkv.dtype))
        _attention_bwd_dkdv_kernel[(triton.cdiv(max_seqlen, bn), batch, H)](
            q, k, v, out, dout, lse, delta, dq, dk, dv, cu_seqlens, slopes,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
            dout.stride(0), dout.stride(1), dq.stride(0), dq.stride(1), dk.stride(0), dk.stride(1),
            dv.stride(0), dv.stride(1), lse.stride(0), sm_scale * _LOG2E, sm_scale,
            WHOLE_SEQUENCE=whole_sequence, **common,
        )
        if not whole_sequence:
            _attention_bwd_dq_kernel[(triton.cdiv(max_seqlen, bm), batch, H)](
                q, k, v, dout, lse, delta, dq, cu_seqlens, slopes,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                dout.stride(0), dout.stride(1), dq.stride(0), dq.stride(1),
                lse.stride(0), sm_scale * _LOG2E, sm_scale, **common,
            )
    else:
        dqkv.zero_()
    return dqkv


class TritonAlibiVarlenAttention(torch.autograd.Function):
    """Plain autograd.Function over the same launches: eager only (torch.compile would trace into it and into
    the kernel calls, see below). Kept as the reference the custom-op path is tested against."""

    @staticmethod
    def forward(ctx, qkv, cu_seqlens, max_seqlen, slopes, block_m=None, block_n=None):
        out, lse = _launch_fwd(qkv, cu_seqlens, max_seqlen, slopes, block_m, block_n)
        ctx.save_for_backward(qkv, out, lse, cu_seqlens, slopes)
        ctx.max_seqlen, ctx.block_m, ctx.block_n = max_seqlen, block_m, block_n
        return out

    @staticmethod
    def backward(ctx, dout):
        qkv, out, lse, cu_seqlens, slopes = ctx.saved_tensors
        dqkv = _launch_bwd(dout, qkv, out, lse, cu_seqlens, slopes, ctx.max_seqlen, ctx.block_m, ctx.block_n)
        return dqkv, None, None, None, None, None


# torch.compile: the launches are wrapped as torch.library custom ops, opaque to dynamo and inductor. Traced
# instead (autograd.Function + user-defined Triton kernels), inductor may hand the kernels buffers whose layout
# differs from the strides passed as arguments at trace time (q/k/v and dq/dk/dv as unbind views of qkv/dqkv):
# illegal memory accesses on GPU. An op runs eagerly on real tensors, and `_launch_*` fix the layouts.
# The fake (meta) functions give the outputs' shapes/dtypes/strides: all contiguous, as the launches allocate.
# The op names are global to the process, and this file can be imported twice under different module names
# (the package, and a Hugging Face remote-code copy next to exported weights): the first import registers, later
# ones reuse the registered ops (same kernels; a schema mismatch would fail loudly at the call).
_OP_NAMESPACE = "mosaicbert"
_FWD_NAME = "triton_alibi_varlen_fwd"
_BWD_NAME = "triton_alibi_varlen_bwd"
_FWD_SCHEMA = (
    "(Tensor qkv, Tensor cu_seqlens, SymInt max_seqlen, Tensor slopes, int? block_m, int? block_n) -> (Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "(Tensor dout, Tensor qkv, Tensor out, Tensor lse, Tensor cu_seqlens, Tensor slopes, SymInt max_seqlen, "
    "int? block_m, int? block_n) -> Tensor"
)


def _registered_op(name: str):
    """torch.ops.mosaicbert.<name> if some import already registered it, else None."""
    try:
        return getattr(getattr(torch.ops, _OP_NAMESPACE), name)
    except (AttributeError, RuntimeError):
        return None


def _register_ops():
    fwd_op, bwd_op = _registered_op(_FWD_NAME), _registered_op(_BWD_NAME)
    if fwd_op is not None and bwd_op is not None:
        return fwd_op, bwd_op

    @torch.library.custom_op(f"{_OP_NAMESPACE}::{_BWD_NAME}", mutates_args=(), schema=_BWD_SCHEMA)
    def bwd_op(dout, qkv, out, lse, cu_seqlens, slopes, max_seqlen, block_m=None, block_n=None):
        return _launch_bwd(dout, qkv, out, lse, cu_seqlens, slopes, int(max_seqlen), block_m, block_n)

    @bwd_op.register_fake
    def _(dout, qkv, out, lse, cu_seqlens, slopes, max_seqlen, block_m=None, block_n=None):
        return qkv.new_empty(qkv.shape)  # contiguous, as _launch_bwd allocates it

    @torch.library.custom_op(f"{_OP_NAMESPACE}::{_FWD_NAME}", mutates_args=(), schema=_FWD_SCHEMA)
    def fwd_op(qkv, cu_seqlens, max_seqlen, slopes, block_m=None, block_n=None):
        return _launch_fwd(qkv, cu_seqlens, int(max_seqlen), slopes, block_m, block_n)

    @fwd_op.register_fake
    def _(qkv, cu_seqlens, max_seqlen, slopes, block_m=None, block_n=None):
        T, _, H, D = qkv.shape
        return qkv.new_empty((T, H, D)), qkv.new_empty((H, T), dtype=torch.float32)

    def setup_context(ctx, inputs, output):
        qkv, cu_seqlens, max_seqlen, slopes, block_m, block_n = inputs
        out, lse = output
        ctx.save_for_backward(qkv, out, lse, cu_seqlens, slopes)
        ctx.max_seqlen, ctx.block_m, ctx.block_n = max_seqlen, block_m, block_n

    def backward(ctx, dout, dlse):
        # lse is an internal output (the public function returns `out` only): its gradient is never used
        qkv, out, lse, cu_seqlens, slopes = ctx.saved_tensors
        dqkv = bwd_op(dout, qkv, out, lse, cu_seqlens, slopes, ctx.max_seqlen, ctx.block_m, ctx.block_n)
        return dqkv, None, None, None, None, None

    fwd_op.register_autograd(backward, setup_context=setup_context)
    return _registered_op(_FWD_NAME), _registered_op(_BWD_NAME)


if HAS_TRITON:
    triton_alibi_varlen_fwd, triton_alibi_varlen_bwd = _register_ops()
else:
    triton_alibi_varlen_fwd = triton_alibi_varlen_bwd = None


def triton_alibi_varlen_attention(qkv, cu_seqlens, max_seqlen, slopes, block_m=None, block_n=None):
    """qkv [T, 3, H, D] packed tokens, cu_seqlens [B+1] int32, slopes [H] fp32 -> out [T, H, D]."""
    _check_inputs(qkv)
    if not isinstance(max_seqlen, torch.SymInt):  # a SymInt under torch.compile: int() would specialise on it
        max_seqlen = int(max_seqlen)
    out, _ = triton_alibi_varlen_fwd(qkv, cu_seqlens, max_seqlen, slopes, block_m, block_n)
    return out


def triton_attention(qkv: torch.Tensor, ctx, dropout_p: float) -> torch.Tensor:
    """Backend entry point: attend(qkv [T, 3, H, D], AttentionContext, dropout_p) -> [T, H, D]."""
    if dropout_p > 0.0:
        raise ValueError(
            "attention_backend='triton' does not support attention dropout; set attention_probs_dropout_prob=0.0 "
            "or use another backend"
        )
    info = ctx.info
    return triton_alibi_varlen_attention(qkv, info.cu_seqlens, max_seqlen_bound(info), ctx.alibi.slopes(qkv.device))
