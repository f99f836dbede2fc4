// hc_pre / hc_head, the AI Vector half of the mixed AIC/AIV kernel (the projection x . fn^T runs on the Cube unit,
// hc_pre_cube.h, and reaches the vector cores through the workspace):
//
//   phase 0  (bf16 x) split fn into fn_hi + fn_lo in bf16 -- or, with xCast (few tokens), cast x to float32 --
//            each AIV a share, to the workspace, then an all-AIV barrier and a flag to this group's AIC, which waits
//            for it before its first load;
// Per core: its token range (HcTokenRange over the 2 x groups AIV cores), walked in tiles of tileT tokens.
//   phase 2  per tile: wait (once) for the AIC flag, add the K parts of the tile's projections and sums of squares
//            (the diagonal of the Cube's x x^T) from the workspace; rsqrt, mixes, logits; pre/post sigmoids and the
//            20 Sinkhorn iterations run vectorised across the tile's tokens (one 32-byte "lane row" per
//            coefficient); mix, rstd, post and comb are staged token-major and written with DataCopyPad;
//   phase 3  per token, D chunk by D chunk: CopyIn hc rows of x, y = sum_i pre_i x_i (Muls + Axpy), cast, CopyOut
//            (the only read of x by the vector cores).
// bf16 inputs are cast to float32 in UB; all vector arithmetic is float32.
#pragma once
#include "kernel_operator.h"
#include "hc_pre_cube.h"
#include "mhc_tiling_data.h"
#include "stream_rows.h"

namespace mhc_av4 {
using namespace AscendC;

template <typename T, bool HEAD>
class HcPreKernel {
 public:
  __aicore__ inline HcPreKernel() {}

  __aicore__ inline void Init(GM_ADDR x, GM_ADDR fn, GM_ADDR scale, GM_ADDR base, GM_ADDR cfg, GM_ADDR y,
                              GM_ADDR post, GM_ADDR comb, GM_ADDR mix, GM_ADDR rstd, GM_ADDR ws,
                              const HcPreTilingData* td, TPipe* pipe) {
    td_ = td;
    pipe_ = pipe;
    if (GetBlockIdx() < td->usedCores) HcTokenRange(GetBlockIdx(), td->frontCores, td->baseTokens, &start_, &count_);
    rows_ = td->M + 1;
    xGm_.SetGlobalBuffer((__gm__ T*)x, static_cast<uint64_t>(td->T * td->K));
    fnGm_.SetGlobalBuffer((__gm__ float*)fn, static_cast<uint64_t>(td->M * td->K));
    splitGm_.SetGlobalBuffer((__gm__ T*)(ws + td->wsFnOffset), static_cast<uint64_t>(2 * td->M * td->K));
    xfGm_.SetGlobalBuffer((__gm__ float*)(ws + td->wsFnOffset), static_cast<uint64_t>(td->T * td->K));
    rawGm_.SetGlobalBuffer((__gm__ float*)(ws + td->wsRawOffset),
                           static_cast<uint64_t>(td->kSplit * td->T * td->n16));
    sqGm_.SetGlobalBuffer((__gm__ float*)(ws + td->wsSqOffset),
                          static_cast<uint64_t>(td->kSplit * td->tiles * td->baseM * td->baseM));
    yGm_.SetGlobalBuffer((__gm__ T*)y, static_cast<uint64_t>(td->T * td->D));
    mixGm_.SetGlobalBuffer((__gm__ float*)mix, static_cast<uint64_t>(td->T * td->M));
    rstdGm_.SetGlobalBuffer((__gm__ float*)rstd, static_cast<uint64_t>(td->T));
    if constexpr (!HEAD) {
      postGm_.SetGlobalBuffer((__gm__ float*)post, static_cast<uint64_t>(td->T * td->hc));
      combGm_.SetGlobalBuffer((__gm__ float*)comb, static_cast<uint64_t>(td->T * td->hc * td->hc));
    }
    // Small parameters once per launch through the scalar unit: scale (3 or 1), base (M), cfg.
    GlobalTensor<float> g;
    g.SetGlobalBuffer((__gm__ float*)scale);
    for (int32_t i = 0; i < (HEAD ? 1 : 3); ++i) scale_[i] = g.GetValue(i);
    g.SetGlobalBuffer((__gm__ float*)base);
    for (int32_t m = 0; m < td->M; ++m) base_[m] = g.GetValue(m);
    g.SetGlobalBuffer((__gm__ float*)cfg);  // [iters, hc_eps, norm_eps], or [hc_eps, norm_eps] for the head
    iters_ = HEAD ? 0 : static_cast<int32_t>(g.GetValue(0) + 0.5f);
    hcEps_ = g.GetValue(HEAD ? 0 : 1);
    normEps_ = g.GetValue(HEAD ? 1 : 2);

    pipe_->InitBuffer(rawQue_, 2, td->rawInBytes);
    pipe_->InitBuffer(sqQue_, 2, td->sqInBytes);
    if (td->splitChunk > 0) {
      pipe_->InitBuffer(splitInQue_, 1, static_cast<uint32_t>(HcAlignUp(td->splitChunk * 4, kUbAlign)));
      pipe_->InitBuffer(splitOutQue_, 1, static_cast<uint32_t>(2 * HcAlignUp(td->splitChunk * 2, kUbAlign)));
      pipe_->InitBuffer(splitBuf_, static_cast<uint32_t>(HcAlignUp(td->splitChunk * 4, kUbAlign)));
    }
    pipe_->InitBuffer(coefBuf_, td->coefBytes);
    pipe_->InitBuffer(stageQue_, 1, td->stageBytes);
    pipe_->InitBuffer(yInQue_, 2, td->yInBytes);
    pipe_->InitBuffer(yCastBuf_, td->yCastBytes);
    pipe_->InitBuffer(yOutQue_, 2, td->yOutBytes);
  }

  __aicore__ inline void Process() {
    if constexpr (sizeof(T) == 2) {
      if (td_->xCast) CastX();
      else SplitFn();
      CrossCoreSetFlag<0x0, PIPE_MTE3>(kFlagFnSplit);   // all AIV: the split is complete ...
      CrossCoreWaitFlag(kFlagFnSplit);
      CrossCoreSetFlag<0x2, PIPE_MTE3>(kFlagFnReady);   // ... this group's AIC may load it
    }
    const int64_t end = start_ + count_;
    for (int64_t tok0 = start_; tok0 < end; tok0 += td_->tileT) {
      const int32_t nt = static_cast<int32_t>(end - tok0 < td_->tileT ? end - tok0 : td_->tileT);
      Coefficients(tok0, nt);
      for (int32_t t = 0; t < nt; ++t) Collapse(tok0 + t, t);
    }
    WaitRaw();   // a core without tokens still takes its one release from the AIC
  }

 private:
  // ------------------------------------------------------------------------------------------ phase 0
  // this AIV core's share [*begin, *end) of `total` elements dealt over all AIV cores in 16-element aligned shares
  // (empty for the cores past the last share)
  __aicore__ inline void AivShare(int64_t total, int64_t* begin, int64_t* end) const {
    const int64_t cores = 2 * static_cast<int64_t>(td_->groups);
    const int64_t per = HcAlignUp((total + cores - 1) / cores, 16);
    *begin = GetBlockIdx() * per;
    *end = *begin + per < total ? *begin + per : total;
  }

  // n elements of src from off, GM -> UB through splitInQue_ (phase 0's input queue), ready for the vector unit
  template <typename U>
  __aicore__ inline LocalTensor<U> CopyInChunk(const GlobalTensor<U>& src, int64_t off, uint32_t n) {
    LocalTensor<U> in = splitInQue_.AllocTensor<U>();
    DataCopyPad(in, src[off], DataCopyExtParams(1, static_cast<uint32_t>(n * sizeof(U)), 0, 0, 0),
                DataCopyPadExtParams<U>(false, 0, 0, 0));
    splitInQue_.EnQue(in);
    return splitInQue_.DeQue<U>();
  }

  // (xCast) x (bf16) -> float32 into the workspace, this core's share of the T x K elements, for the Cube
  __aicore__ inline void CastX() {
    const int64_t total = td_->T * td_->K;
    int64_t begin = 0, end = 0;
    AivShare(total, &begin, &end);
    for (int64_t off = begin; off < end; off += td_->splitChunk) {
      const uint32_t n = static_cast<uint32_t>(end - off < td_->splitChunk ? end - off : td_->splitChunk);
      LocalTensor<T> in = CopyInChunk(xGm_, off, n);
      LocalTensor<float> out = splitOutQue_.AllocTensor<float>();
      Cast(out, in, RoundMode::CAST_NONE, n);
      splitOutQue_.EnQue(out);
      splitInQue_.FreeTensor(in);
      out = splitOutQue_.DeQue<float>();
      DataCopyPad(xfGm_[off], out, DataCopyExtParams(1, n * 4, 0, 0, 0));
      splitOutQue_.FreeTensor(out);
    }
  }

  // fn (float32) = hi + lo in bf16, this core's share of the M x K elements: hi = bf16(fn), lo = bf16(fn - hi)
  __aicore__ inline void SplitFn() {
    const int64_t total = static_cast<int64_t>(td_->M) * td_->K;
    int64_t begin = 0, end = 0;
    AivShare(total, &begin, &end);
    const int64_t loOff = HcAlignUp(td_->splitChunk * 2, kUbAlign) / 2;
    for (int64_t off = begin; off < end; off += td_->splitChunk) {
      const uint32_t n = static_cast<uint32_t>(end - off < td_->splitChunk ? end - off : td_->splitChunk);
      LocalTensor<float> in = CopyInChunk(fnGm_, off, n);
      LocalTensor<T> out = splitOutQue_.AllocTensor<T>();
      LocalTensor<float> hiF = splitBuf_.Get<float>();
      Cast(out, in, RoundMode::CAST_RINT, n);          // hi
      PipeBarrier<PIPE_V>();
      Cast(hiF, out, RoundMode::CAST_NONE, n);
      PipeBarrier<PIPE_V>();
      Sub(hiF, in, hiF, n);                            // fn - hi, exact in float32
      PipeBarrier<PIPE_V>();
      Cast(out[loOff], hiF, RoundMode::CAST_RINT, n);  // lo
      splitOutQue_.EnQue(out);
      splitInQue_.FreeTensor(in);
      out = splitOutQue_.DeQue<T>();
      DataCopyPad(splitGm_[off], out, DataCopyExtParams(1, n * 2, 0, 0, 0));
      DataCopyPad(splitGm_[total + off], out[loOff], DataCopyExtParams(1, n * 2, 0, 0, 0));
      splitOutQue_.FreeTensor(out);
    }
  }

  // ------------------------------------------------------------------------------------------ phase 2
  // Coefficient rows (lanes floats each, one lane per token of the tile): raw/mix [0, M), ss -> r at row M,
  // logits [M+1, 2M+1), then scratch rows s0..s3.
  __aicore__ inline void WaitRaw() {
    if (rawWaited_) return;
    CrossCoreWaitFlag(kFlagRawReady);   // every AIC's partial projections are in the workspace
    rawWaited_ = true;
  }

  // raw[t, :] = sum over the K parts of the Cube's partial projections of tokens tok0 .. tok0 + nt
  __aicore__ inline void LoadProjections(int64_t tok0, int32_t nt, LocalTensor<float>& raw) {
    WaitRaw();
    const int32_t n16 = td_->n16, cols = td_->nCols;
    for (int32_t p = 0; p < td_->kSplit; ++p) {
      LocalTensor<float> in = rawQue_.AllocTensor<float>();
      DataCopyExtParams cp(static_cast<uint16_t>(nt), static_cast<uint32_t>(cols * 4),
                           static_cast<uint32_t>((n16 - cols) * 4),
                           static_cast<uint32_t>((n16 * 4 - HcAlignUp(cols * 4, kUbAlign)) / kUbAlign), 0);
      DataCopyPad(in, rawGm_[(p * td_->T + tok0) * n16], cp, DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
      rawQue_.EnQue(in);
      in = rawQue_.DeQue<float>();
      if (p == 0) Adds(raw, in, 0.0f, nt * n16);
      else Add(raw, raw, in, nt * n16);
      PipeBarrier<PIPE_V>();
      rawQue_.FreeTensor(in);
    }
  }

  // sums[8 t] = sum over the K parts of x x^T's diagonal entry of token tok0 + t (one float per 32-byte row)
  __aicore__ inline void LoadSquares(int64_t tok0, int32_t nt, LocalTensor<float>& sums) {
    const int64_t bm = td_->baseM;
    for (int32_t p = 0; p < td_->kSplit; ++p) {
      LocalTensor<float> in = sqQue_.AllocTensor<float>();
      for (int32_t t = 0; t < nt; ++t) {
        const int64_t tok = tok0 + t, tile = tok / bm, r = tok % bm;
        DataCopyPad(in[t * 8], sqGm_[((p * td_->tiles + tile) * bm + r) * bm + r],
                    DataCopyExtParams(1, 4, 0, 0, 0), DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
      }
      sqQue_.EnQue(in);
      in = sqQue_.DeQue<float>();
      if (p == 0) Adds(sums, in, 0.0f, nt * 8);
      else Add(sums, sums, in, nt * 8);
      PipeBarrier<PIPE_V>();
      sqQue_.FreeTensor(in);
    }
  }

  __aicore__ inline LocalTensor<float> Row(int32_t r) { return coefBuf_.Get<float>()[r * td_->lanes]; }
  __aicore__ inline LocalTensor<float> Z(int32_t m) { return Row(rows_ + m); }

  __aicore__ inline void Coefficients(int64_t tok0, int32_t nt) {
    const int32_t M = td_->M, hc = td_->hc;
    LocalTensor<float> raw = coefBuf_.Get<float>()[(2 * rows_ + 4) * td_->lanes];
    LocalTensor<float> sums = raw[HcAlignUp(td_->tileT * td_->n16, 8)];
    LoadProjections(tok0, nt, raw);
    LoadSquares(tok0, nt, sums);
    TEventID vs = pipe_->FetchEventID(HardEvent::V_S);
    SetFlag<HardEvent::V_S>(vs);
    WaitFlag<HardEvent::V_S>(vs);
    for (int32_t t = 0; t < nt; ++t) {  // token-major -> lane rows (the Sinkhorn runs across tokens)
      for (int32_t m = 0; m < M; ++m) {
        float v = raw.GetValue(t * td_->n16 + m);
        if (td_->nCols == 2 * M) v += raw.GetValue(t * td_->n16 + M + m);   // x . fn_hi + x . fn_lo
        Row(m).SetValue(t, v);
      }
      Row(M).SetValue(t, sums.GetValue(t * 8));
    }
    TEventID sv = pipe_->FetchEventID(HardEvent::S_V);
    SetFlag<HardEvent::S_V>(sv);
    WaitFlag<HardEvent::S_V>(sv);

    LocalTensor<float> r = Row(M);  // r = 1 / sqrt(ss / K + norm_eps)
    Muls(r, r, 1.0f / static_cast<float>(td_->K), nt);
    PipeBarrier<PIPE_V>();
    Adds(r, r, normEps_, nt);
    PipeBarrier<PIPE_V>();
    Sqrt(r, r, nt);
    PipeBarrier<PIPE_V>();
    Reciprocal(r, r, nt);
    PipeBarrier<PIPE_V>();
    for (int32_t m = 0; m < M; ++m) Mul(Row(m), Row(m), r, nt);  // mix = raw * r
    PipeBarrier<PIPE_V>();
    for (int32_t m = 0; m < M; ++m) Muls(Z(m), Row(m), scale_[HEAD ? 0 : (m < hc ? 0 : (m < 2 * hc ? 1 : 2))], nt);
    PipeBarrier<PIPE_V>();
    for (int32_t m = 0; m < M; ++m) Adds(Z(m), Z(m), base_[m], nt);
    PipeBarrier<PIPE_V>();
    for (int32_t i = 0; i < hc; ++i) {
      Sigmoid(Z(i), nt);
      PipeBarrier<PIPE_V>();
      Adds(Z(i), Z(i), hcEps_, nt);  // pre = sigmoid + eps
    }
    if constexpr (!HEAD) {
      for (int32_t i = 0; i < hc; ++i) {
        Sigmoid(Z(hc + i), nt);
        PipeBarrier<PIPE_V>();
        Muls(Z(hc + i), Z(hc + i), 2.0f, nt);  // post = 2 sigmoid
      }
      PipeBarrier<PIPE_V>();
      Sinkhorn(nt);
    }
    PipeBarrier<PIPE_V>();
    StageOut(tok0, nt);
  }

  __aicore__ inline void Sigmoid(LocalTensor<float> z, int32_t n) {  // 1 / (1 + exp(-z))
    Muls(z, z, -1.0f, n);
    PipeBarrier<PIPE_V>();
    Exp(z, z, n);
    PipeBarrier<PIPE_V>();
    Adds(z, z, 1.0f, n);
    PipeBarrier<PIPE_V>();
    Reciprocal(z, z, n);
  }

  // Sinkhorn as the reference: row softmax + eps, column norm, then (iters - 1) x (row norm, column norm).
  __aicore__ inline LocalTensor<float> C(int32_t j, int32_t k) { return Z(2 * td_->hc + j * td_->hc + k); }

  __aicore__ inline void Normalize(bool columns, int32_t n) {
    const int32_t hc = td_->hc;
    LocalTensor<float> s = Row(2 * rows_);
    for (int32_t a = 0; a < hc; ++a) {
      Duplicate(s, hcEps_, n);
      PipeBarrier<PIPE_V>();
      for (int32_t b = 0; b < hc; ++b) {
        Add(s, s, columns ? C(b, a) : C(a, b), n);
        PipeBarrier<PIPE_V>();
      }
      for (int32_t b = 0; b < hc; ++b) Div(columns ? C(b, a) : C(a, b), columns ? C(b, a) : C(a, b), s, n);
      PipeBarrier<PIPE_V>();
    }
  }

  __aicore__ inline void Sinkhorn(int32_t n) {
    const int32_t hc = td_->hc;
    LocalTensor<float> mx = Row(2 * rows_ + 1), s = Row(2 * rows_);
    for (int32_t j = 0; j < hc; ++j) {
      Adds(mx, C(j, 0), 0.0f, n);
      PipeBarrier<PIPE_V>();
      for (int32_t k = 1; k < hc; ++k) {
        Max(mx, mx, C(j, k), n);
        PipeBarrier<PIPE_V>();
      }
      for (int32_t k = 0; k < hc; ++k) Sub(C(j, k), C(j, k), mx, n);
      PipeBarrier<PIPE_V>();
      for (int32_t k = 0; k < hc; ++k) Exp(C(j, k), C(j, k), n);
      PipeBarrier<PIPE_V>();
      Duplicate(s, 0.0f, n);
      PipeBarrier<PIPE_V>();
      for (int32_t k = 0; k < hc; ++k) {
        Add(s, s, C(j, k), n);
        PipeBarrier<PIPE_V>();
      }
      for (int32_t k = 0; k < hc; ++k) Div(C(j, k), C(j, k), s, n);
      PipeBarrier<PIPE_V>();
      for (int32_t k = 0; k < hc; ++k) Adds(C(j, k), C(j, k), hcEps_, n);
      PipeBarrier<PIPE_V>();
    }
    Normalize(true, n);
    for (int32_t it = 1; it < iters_; ++it) {
      Normalize(false, n);
      Normalize(true, n);
    }
  }

  // mix, rstd (and post, comb) of the tile, token-major, to GM; pre kept in scalars for phase 3.
  __aicore__ inline void StageOut(int64_t tok0, int32_t nt) {
    const int32_t M = td_->M, hc = td_->hc;
    TEventID vs = pipe_->FetchEventID(HardEvent::V_S);
    SetFlag<HardEvent::V_S>(vs);
    WaitFlag<HardEvent::V_S>(vs);
    LocalTensor<float> st = stageQue_.AllocTensor<float>();
    const int32_t oMix = 0;
    const int32_t oR = static_cast<int32_t>(HcAlignUp(nt * M, 8));
    const int32_t oPost = oR + 8 * ((nt + 7) / 8);
    const int32_t oComb = oPost + static_cast<int32_t>(HcAlignUp(nt * hc, 8));
    for (int32_t t = 0; t < nt; ++t) {
      for (int32_t m = 0; m < M; ++m) st.SetValue(oMix + t * M + m, Row(m).GetValue(t));
      st.SetValue(oR + t, Row(M).GetValue(t));
      for (int32_t i = 0; i < hc; ++i) pre_[t][i] = Z(i).GetValue(t);
      if constexpr (!HEAD) {
        for (int32_t i = 0; i < hc; ++i) st.SetValue(oPost + t * hc + i, Z(hc + i).GetValue(t));
        for (int32_t i = 0; i < hc * hc; ++i) st.SetValue(oComb + t * hc * hc + i, Z(2 * hc + i).GetValue(t));
      }
    }
    TEventID s3 = pipe_->FetchEventID(HardEvent::S_MTE3);
    SetFlag<HardEvent::S_MTE3>(s3);
    WaitFlag<HardEvent::S_MTE3>(s3);
    DataCopyPad(mixGm_[tok0 * M], st[oMix], DataCopyExtParams(1, static_cast<uint32_t>(nt * M * 4), 0, 0, 0));
    DataCopyPad(rstdGm_[tok0], st[oR], DataCopyExtParams(1, static_cast<uint32_t>(nt * 4), 0, 0, 0));
    if constexpr (!HEAD) {
      DataCopyPad(postGm_[tok0 * hc], st[oPost], DataCopyExtParams(1, static_cast<uint32_t>(nt * hc * 4), 0, 0, 0));
      DataCopyPad(combGm_[tok0 * hc * hc], st[oComb],
                  DataCopyExtParams(1, static_cast<uint32_t>(nt * hc * hc * 4), 0, 0, 0));
    }
    TEventID m3 = pipe_->FetchEventID(HardEvent::MTE3_S);  // the staging buffer is rewritten by the next tile
    SetFlag<HardEvent::MTE3_S>(m3);
    WaitFlag<HardEvent::MTE3_S>(m3);
    stageQue_.FreeTensor(st);
  }

  // ------------------------------------------------------------------------------------------ phase 3
  __aicore__ inline void Collapse(int64_t tok, int32_t t) {
    for (int32_t c = 0; c < td_->dChunks; ++c) {
      const int32_t dLen = c == td_->dChunks - 1 ? td_->dTail : td_->dChunk;
      const int64_t d0 = static_cast<int64_t>(c) * td_->dChunk;
      LocalTensor<T> xIn = yInQue_.AllocTensor<T>();
      av4_common::CopyInRows(xIn, xGm_, tok * td_->K + d0, td_->hc, td_->D, td_->dChunk, dLen);
      yInQue_.EnQue(xIn);

      xIn = yInQue_.DeQue<T>();
      LocalTensor<float> cast = yCastBuf_.Get<float>();
      LocalTensor<float> xf;
      LocalTensor<float> sum;
      if constexpr (sizeof(T) == sizeof(float)) {
        xf = xIn.template ReinterpretCast<float>();
        sum = cast;
      } else {
        xf = cast;
        sum = cast[td_->hc * td_->dChunk];
        Cast(xf, xIn, RoundMode::CAST_NONE, static_cast<uint32_t>(td_->hc * td_->dChunk));
        PipeBarrier<PIPE_V>();
      }
      Muls(sum, xf, pre_[t][0], dLen);
      PipeBarrier<PIPE_V>();
      for (int32_t i = 1; i < td_->hc; ++i) {
        Axpy(sum, xf[i * td_->dChunk], pre_[t][i], dLen);
        PipeBarrier<PIPE_V>();
      }
      LocalTensor<T> yOut = yOutQue_.AllocTensor<T>();
      if constexpr (sizeof(T) == sizeof(float)) {
        Adds(yOut.template ReinterpretCast<float>(), sum, 0.0f, dLen);
      } else {
        Cast(yOut, sum, RoundMode::CAST_RINT, static_cast<uint32_t>(dLen));
      }
      yOutQue_.EnQue(yOut);
      yInQue_.FreeTensor(xIn);

      yOut = yOutQue_.DeQue<T>();
      DataCopyPad(yGm_[tok * td_->D + d0], yOut,
                  DataCopyExtParams(1, static_cast<uint32_t>(dLen * sizeof(T)), 0, 0, 0));
      yOutQue_.FreeTensor(yOut);
    }
  }

  const HcPreTilingData* td_ = nullptr;
  TPipe* pipe_ = nullptr;
  int64_t start_ = 0, count_ = 0;
  int32_t rows_ = 0, iters_ = 0;
  float hcEps_ = 0.0f, normEps_ = 0.0f;
  float scale_[3] = {0.0f, 0.0f, 0.0f};
  float base_[kMaxM] = {};
  float pre_[kMaxTileT][kMaxHc] = {};

  bool rawWaited_ = false;
  GlobalTensor<T> xGm_, yGm_, splitGm_;
  GlobalTensor<float> fnGm_, xfGm_, rawGm_, sqGm_, mixGm_, rstdGm_, postGm_, combGm_;
  TQue<QuePosition::VECIN, 1> rawQue_, sqQue_, yInQue_, splitInQue_;
  TQue<QuePosition::VECOUT, 1> stageQue_, yOutQue_, splitOutQue_;
  TBuf<QuePosition::VECCALC> coefBuf_, yCastBuf_, splitBuf_;
};

// The body of the hc_pre / hc_head kernel entries (HEAD: post and comb are absent): the AIC cores project x . fn^T
// on the Cube unit -- x cast to float32 by the AIV cores when td->xCast (bf16 x, decode), so a float32 projection
// onto fn -- and the AIV cores run HcPreKernel.
template <typename T, bool HEAD>
__aicore__ inline void RunHcPre(GM_ADDR x, GM_ADDR fn, GM_ADDR scale, GM_ADDR base, GM_ADDR cfg, GM_ADDR y,
                                GM_ADDR post, GM_ADDR comb, GM_ADDR mix, GM_ADDR rstd, GM_ADDR workspace,
                                const HcPreTilingData* td) {
  GM_ADDR ws = GetUserWorkspace(workspace);
  TPipe pipe;
  if ASCEND_IS_AIC {
    if (td->xCast) {
      HcProjCube<float> cube;
      cube.Init(ws + td->wsFnOffset, fn, ws, td, &pipe);
      cube.Process();
    } else {
      HcProjCube<T> cube;
      cube.Init(x, fn, ws, td, &pipe);
      cube.Process();
    }
  } else {
    HcPreKernel<T, HEAD> op;
    op.Init(x, fn, scale, base, cfg, y, post, comb, mix, rstd, ws, td, &pipe);
    op.Process();
  }
}

}  // namespace mhc_av4
