#include "bindings.h"

#include <cmath>
#include <cstdint>
#include <string>

#include "decoding.h"
#include "conv.h"
#include "gemm.h"
#include "quant.h"
#include "kernels.h"
#include "threadpool.h"

namespace clipcap {

namespace {

constexpr int64_t kMaxSafe = (int64_t{1} << 53) - 1;

[[noreturn]] void fail(const Napi::CallbackInfo& info, const std::string& what) {
  throw Napi::RangeError::New(info.Env(), "clipcap_native: " + what);
}

// a·b for sizes already checked to be in [0, 2^53): fails instead of overflowing.
int64_t checked_mul(const Napi::CallbackInfo& info, int64_t a, int64_t b) {
  if (a != 0 && b > kMaxSafe / a) fail(info, "size overflow");
  return a * b;
}

int64_t integer(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo = 0,
                int64_t hi = kMaxSafe) {
  if (!info[i].IsNumber()) fail(info, std::string(name) + " must be a number");
  const double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d == std::floor(d)) || d < static_cast<double>(lo) || d > static_cast<double>(hi))
    fail(info, std::string(name) + " must be an integer in range, got " + std::to_string(d));
  return static_cast<int64_t>(d);
}

double number(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsNumber()) fail(info, std::string(name) + " must be a number");
  return info[i].As<Napi::Number>().DoubleValue();
}

bool flag(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsBoolean()) fail(info, std::string(name) + " must be a boolean");
  return info[i].As<Napi::Boolean>().Value();
}

// The data of a typed array argument of the given element type holding at least `need` elements, or null
// for null/undefined when `nullable`.
template <typename T, napi_typedarray_type kType>
T* typed(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t need, bool nullable = false) {
  const Napi::Value v = info[i];
  if (nullable && (v.IsNull() || v.IsUndefined())) return nullptr;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != kType) {
    fail(info, std::string(name) + (kType == napi_float32_array ? " must be a Float32Array" : " must be an Int32Array"));
  }
  Napi::TypedArrayOf<T> arr = v.As<Napi::TypedArrayOf<T>>();
  if (static_cast<int64_t>(arr.ElementLength()) < need) {
    fail(info, std::string(name) + " has " + std::to_string(arr.ElementLength()) + " elements, needs " +
                   std::to_string(need));
  }
  return arr.Data();
}

float* f32(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t need, bool nullable = false) {
  return typed<float, napi_float32_array>(info, i, name, need, nullable);
}

int32_t* i32(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t need) {
  return typed<int32_t, napi_int32_array>(info, i, name, need);
}

int64_t length(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsTypedArray()) fail(info, std::string(name) + " must be a typed array");
  return static_cast<int64_t>(info[i].As<Napi::TypedArray>().ElementLength());
}

// [p, p + n) and [q, q + m) overlap (in elements of 4 bytes).
bool overlap(const void* p, int64_t n, const void* q, int64_t m) {
  const auto a = reinterpret_cast<uintptr_t>(p), b = reinterpret_cast<uintptr_t>(q);
  return a < b + static_cast<uintptr_t>(m) * 4 && b < a + static_cast<uintptr_t>(n) * 4;
}

void need_args(const Napi::CallbackInfo& info, size_t n, const char* fn) {
  if (info.Length() != n) fail(info, std::string(fn) + " takes " + std::to_string(n) + " arguments");
}

Activation activation_kind(const Napi::CallbackInfo& info, size_t i) {
  return static_cast<Activation>(integer(info, i, "activation kind", 0, 3));
}

}  // namespace

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("threads", num_threads());
  o.Set("gemmKernel", gemm_kernel() == GemmKernel::kAvx2 ? "avx2" : "portable");
  o.Set("avx2", cpu_has_avx2_fma());
  o.Set("convKernel", conv_kernel() == ConvKernel::kAvx512 ? "avx512" : "gemm");
  o.Set("avx512", cpu_has_avx512());
  return o;
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  need_args(info, 1, "setThreads");
  set_num_threads(static_cast<int>(integer(info, 0, "threads", 1, 1024)));
  return Napi::Number::New(info.Env(), num_threads());
}

Napi::Value SetGemmKernel(const Napi::CallbackInfo& info) {
  need_args(info, 1, "setGemmKernel");
  if (!info[0].IsString()) fail(info, "setGemmKernel takes 'avx2' or 'portable'");
  const std::string name = info[0].As<Napi::String>().Utf8Value();
  if (name != "avx2" && name != "portable") fail(info, "setGemmKernel takes 'avx2' or 'portable'");
  const bool ok = set_gemm_kernel(name == "avx2" ? GemmKernel::kAvx2 : GemmKernel::kPortable);
  return Napi::Boolean::New(info.Env(), ok);
}

Napi::Value SetConvKernel(const Napi::CallbackInfo& info) {
  need_args(info, 1, "setConvKernel");
  if (!info[0].IsString()) fail(info, "setConvKernel takes 'avx512' or 'gemm'");
  const std::string name = info[0].As<Napi::String>().Utf8Value();
  if (name != "avx512" && name != "gemm") fail(info, "setConvKernel takes 'avx512' or 'gemm'");
  const bool ok = set_conv_kernel(name == "avx512" ? ConvKernel::kAvx512 : ConvKernel::kGemm);
  return Napi::Boolean::New(info.Env(), ok);
}

namespace {
// GemmArgs::post for an activation fused into the product: ctx points at the Activation.
void post_activation(const void* ctx, float* row, int64_t n) {
  activation_serial(*static_cast<const Activation*>(ctx), row, n, row);
}
}  // namespace

// gemm(A, B, C, bias|null, M, N, K, transA, transB, alpha, accumulate, batch, strideA, strideB, strideC,
//      packedB[, activation])
// Operands are contiguous matrices: lda = transA ? M : K, ldb = transB ? K : N, ldc = N. With packedB, B is
// packB's layout of op(B) (packed_b_buffer_size(K, N) floats), shared by every batch. With an activation
// kind (as activation() takes it), C = f(result), applied in the GEMM's epilogue.
Napi::Value Gemm(const Napi::CallbackInfo& info) {
  if (info.Length() != 17) need_args(info, 16, "gemm");
  Activation act = Activation::kGelu;
  const bool fused = info.Length() == 17;
  if (fused) act = activation_kind(info, 16);
  const bool packedB = flag(info, 15, "packedB");
  GemmArgs g;
  g.M = integer(info, 4, "M");
  g.N = integer(info, 5, "N");
  g.K = integer(info, 6, "K");
  g.transA = flag(info, 7, "transA");
  g.transB = flag(info, 8, "transB");
  g.alpha = static_cast<float>(number(info, 9, "alpha"));
  g.accumulate = flag(info, 10, "accumulate");
  g.batch = integer(info, 11, "batch");
  g.strideA = integer(info, 12, "strideA");
  g.strideB = integer(info, 13, "strideB");
  g.strideC = integer(info, 14, "strideC");
  const int64_t last = g.batch > 0 ? g.batch - 1 : 0;
  const int64_t sizeA = checked_mul(info, g.M, g.K), sizeB = checked_mul(info, g.K, g.N);
  const int64_t sizeC = checked_mul(info, g.M, g.N);
  const int64_t needA = g.batch > 0 ? checked_mul(info, last, g.strideA) + sizeA : 0;
  if (packedB) {
    g.packedB = true;
    g.strideB = 0;
  }
  const int64_t needB =
      g.batch <= 0 ? 0 : packedB ? packed_b_buffer_size(g.K, g.N) : checked_mul(info, last, g.strideB) + sizeB;
  const int64_t needC = g.batch > 0 ? checked_mul(info, last, g.strideC) + sizeC : 0;
  if (g.batch > 1 && g.strideC < sizeC) fail(info, "gemm: output batches overlap");
  g.A = f32(info, 0, "A", needA);
  g.B = f32(info, 1, "B", needB);
  g.C = f32(info, 2, "C", needC);
  g.bias = f32(info, 3, "bias", g.N, true);
  if (overlap(g.C, needC, g.A, needA) || overlap(g.C, needC, g.B, needB)) fail(info, "gemm: C overlaps A or B");
  g.lda = g.transA ? g.M : g.K;
  g.ldb = g.transB ? g.K : g.N;
  g.ldc = g.N;
  if (fused) {
    g.post = post_activation;
    g.post_ctx = &act;
  }
  gemm(g);
  return info.Env().Undefined();
}

// packB(W, rows, cols, transB, out): out = pack_b of op(W), W stored (rows, cols) contiguous; op(W) is
// (K, N) = (rows, cols), or (cols, rows) with transB. out holds packed_b_buffer_size(K, N) floats.
Napi::Value PackB(const Napi::CallbackInfo& info) {
  need_args(info, 5, "packB");
  const int64_t rows = integer(info, 1, "rows"), cols = integer(info, 2, "cols");
  const bool transB = flag(info, 3, "transB");
  const int64_t K = transB ? cols : rows, N = transB ? rows : cols;
  const float* w = f32(info, 0, "W", checked_mul(info, rows, cols));
  float* out = f32(info, 4, "out", packed_b_buffer_size(K, N));
  if (overlap(out, packed_b_buffer_size(K, N), w, rows * cols)) fail(info, "packB: out overlaps W");
  pack_b(w, cols, transB, K, N, out);
  return info.Env().Undefined();
}

// unpackB(P, rows, cols, transB, out): the inverse of packB, out (rows, cols).
Napi::Value UnpackB(const Napi::CallbackInfo& info) {
  need_args(info, 5, "unpackB");
  const int64_t rows = integer(info, 1, "rows"), cols = integer(info, 2, "cols");
  const bool transB = flag(info, 3, "transB");
  const int64_t K = transB ? cols : rows, N = transB ? rows : cols;
  const float* p = f32(info, 0, "P", packed_b_buffer_size(K, N));
  float* out = f32(info, 4, "out", checked_mul(info, rows, cols));
  if (overlap(out, rows * cols, p, packed_b_buffer_size(K, N))) fail(info, "unpackB: out overlaps P");
  unpack_b(p, transB, K, N, out);
  return info.Env().Undefined();
}

// gemmQuant(A, W, scales|null, C, bias|null, M, N, K, transB, alpha, accumulate, format 0 int8 | 1 bf16): quant.h.
// W is an Int8Array (int8) or a Uint16Array (bf16) of K·N elements; scales (N) are required for int8.
Napi::Value GemmQuant(const Napi::CallbackInfo& info) {
  need_args(info, 12, "gemmQuant");
  QuantGemmArgs g;
  g.M = integer(info, 5, "M", 0, kSkinnyM);
  g.N = integer(info, 6, "N");
  g.K = integer(info, 7, "K");
  g.transB = flag(info, 8, "transB");
  g.alpha = static_cast<float>(number(info, 9, "alpha"));
  g.accumulate = flag(info, 10, "accumulate");
  g.format = static_cast<QuantFormat>(integer(info, 11, "format", 0, 1));
  const int64_t sizeW = checked_mul(info, g.K, g.N);
  const napi_typedarray_type want = g.format == QuantFormat::kInt8 ? napi_int8_array : napi_uint16_array;
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != want)
    fail(info, g.format == QuantFormat::kInt8 ? "gemmQuant: W must be an Int8Array" : "gemmQuant: W must be a Uint16Array");
  const Napi::TypedArray w = info[1].As<Napi::TypedArray>();
  if (static_cast<int64_t>(w.ElementLength()) < sizeW) fail(info, "gemmQuant: W is shorter than K·N");
  g.W = static_cast<const uint8_t*>(w.ArrayBuffer().Data()) + w.ByteOffset();
  g.A = f32(info, 0, "A", checked_mul(info, g.M, g.K));
  g.scales = f32(info, 2, "scales", g.N, g.format != QuantFormat::kInt8);
  const int64_t sizeC = checked_mul(info, g.M, g.N);
  g.C = f32(info, 3, "C", sizeC);
  g.bias = f32(info, 4, "bias", g.N, true);
  if (overlap(g.C, sizeC, g.A, g.M * g.K)) fail(info, "gemmQuant: C overlaps A");
  gemm_quant(g);
  return info.Env().Undefined();
}

// binary(op 0 add | 1 mul, a, b, out): out[i] = a[i] op b[i % b.length]
Napi::Value Binary(const Napi::CallbackInfo& info) {
  need_args(info, 4, "binary");
  const auto op = static_cast<BinaryOp>(integer(info, 0, "op", 0, 1));
  const int64_t n = length(info, 1, "a");
  const int64_t nb = length(info, 2, "b");
  if (nb == 0 ? n != 0 : n % nb != 0) fail(info, "binary: b's length must divide a's");
  const float* a = f32(info, 1, "a", n);
  const float* b = f32(info, 2, "b", nb);
  float* out = f32(info, 3, "out", n);
  binary_bcast(op, a, n, b, nb, out);
  return info.Env().Undefined();
}

// scale(a, s, out)
Napi::Value Scale(const Napi::CallbackInfo& info) {
  need_args(info, 3, "scale");
  const int64_t n = length(info, 0, "a");
  const float* a = f32(info, 0, "a", n);
  const double s = number(info, 1, "s");
  scale(a, n, s, f32(info, 2, "out", n));
  return info.Env().Undefined();
}

// axpy(a, b, alpha): a += alpha·b
Napi::Value Axpy(const Napi::CallbackInfo& info) {
  need_args(info, 3, "axpy");
  const int64_t n = length(info, 0, "a");
  float* a = f32(info, 0, "a", n);
  const float* b = f32(info, 1, "b", n);
  axpy(a, b, n, number(info, 2, "alpha"));
  return info.Env().Undefined();
}

// sumRows(x, rows, cols, out, accumulate)
Napi::Value SumRows(const Napi::CallbackInfo& info) {
  need_args(info, 5, "sumRows");
  const int64_t rows = integer(info, 1, "rows"), cols = integer(info, 2, "cols");
  const float* x = f32(info, 0, "x", checked_mul(info, rows, cols));
  float* out = f32(info, 3, "out", cols);
  sum_rows(x, rows, cols, out, flag(info, 4, "accumulate"));
  return info.Env().Undefined();
}

// activation(kind, x, y)
Napi::Value ActivationForward(const Napi::CallbackInfo& info) {
  need_args(info, 3, "activation");
  const Activation act = activation_kind(info, 0);
  const int64_t n = length(info, 1, "x");
  activation_forward(act, f32(info, 1, "x", n), n, f32(info, 2, "y", n));
  return info.Env().Undefined();
}

// activationBackward(kind, dy, saved, dx)
Napi::Value ActivationBackward(const Napi::CallbackInfo& info) {
  need_args(info, 4, "activationBackward");
  const Activation act = activation_kind(info, 0);
  const int64_t n = length(info, 1, "dy");
  activation_backward(act, f32(info, 1, "dy", n), f32(info, 2, "saved", n), n, f32(info, 3, "dx", n));
  return info.Env().Undefined();
}

// softmax(x, rows, cols, y, log)
Napi::Value Softmax(const Napi::CallbackInfo& info) {
  need_args(info, 5, "softmax");
  const int64_t rows = integer(info, 1, "rows"), cols = integer(info, 2, "cols");
  const int64_t n = checked_mul(info, rows, cols);
  softmax_rows(f32(info, 0, "x", n), rows, cols, f32(info, 3, "y", n), flag(info, 4, "log"));
  return info.Env().Undefined();
}

// layerNorm(x, weight, bias, rows, C, eps, y, mean, rstd)
Napi::Value LayerNorm(const Napi::CallbackInfo& info) {
  need_args(info, 9, "layerNorm");
  const int64_t rows = integer(info, 3, "rows"), C = integer(info, 4, "C");
  const int64_t n = checked_mul(info, rows, C);
  layernorm_forward(f32(info, 0, "x", n), f32(info, 1, "weight", C), f32(info, 2, "bias", C), rows, C,
                    static_cast<float>(number(info, 5, "eps")), f32(info, 6, "y", n), f32(info, 7, "mean", rows),
                    f32(info, 8, "rstd", rows));
  return info.Env().Undefined();
}

// layerNormBackward(dy, x, weight, mean, rstd, rows, C, dx, dweight, dbias)
Napi::Value LayerNormBackward(const Napi::CallbackInfo& info) {
  need_args(info, 10, "layerNormBackward");
  const int64_t rows = integer(info, 5, "rows"), C = integer(info, 6, "C");
  const int64_t n = checked_mul(info, rows, C);
  layernorm_backward(f32(info, 0, "dy", n), f32(info, 1, "x", n), f32(info, 2, "weight", C),
                     f32(info, 3, "mean", rows), f32(info, 4, "rstd", rows), rows, C, f32(info, 7, "dx", n),
                     f32(info, 8, "dweight", C), f32(info, 9, "dbias", C));
  return info.Env().Undefined();
}

namespace {
// Reads B, Tq, Tk, kvLen, C, nHead, scale, causal, dropoutP, dropoutSeed from info[first..first+9] and
// checks them.
AttentionArgs attention_geometry(const Napi::CallbackInfo& info, size_t first) {
  AttentionArgs a;
  a.B = integer(info, first, "B");
  a.Tq = integer(info, first + 1, "Tq");
  a.Tk = integer(info, first + 2, "Tk");
  a.kv_len = integer(info, first + 3, "kvLength", 0, a.Tk);
  a.C = integer(info, first + 4, "C");
  a.n_head = integer(info, first + 5, "nHead", 1);
  a.scale = static_cast<float>(number(info, first + 6, "scale"));
  a.causal = flag(info, first + 7, "causal");
  a.dropout_p = number(info, first + 8, "dropoutP");
  if (!(a.dropout_p >= 0.0 && a.dropout_p < 1.0)) fail(info, "attention: dropoutP must be in [0, 1)");
  a.dropout_seed = static_cast<uint32_t>(integer(info, first + 9, "dropoutSeed", 0, UINT32_MAX));
  if (a.C % a.n_head != 0) fail(info, "attention: channels do not split into heads");
  if (a.causal && a.kv_len < a.Tq) fail(info, "attention: causal needs kvLength >= Tq");
  return a;
}
}  // namespace

// attention(q, k, v, keyMask|null, out, probs|null, B, Tq, Tk, kvLen, C, nHead, scale, causal, dropoutP,
//           dropoutSeedUint32)
Napi::Value Attention(const Napi::CallbackInfo& info) {
  need_args(info, 16, "attention");
  AttentionArgs a = attention_geometry(info, 6);
  const int64_t nq = checked_mul(info, checked_mul(info, a.B, a.Tq), a.C);
  const int64_t nk = checked_mul(info, checked_mul(info, a.B, a.Tk), a.C);
  a.q = f32(info, 0, "q", nq);
  a.k = f32(info, 1, "k", nk);
  a.v = f32(info, 2, "v", nk);
  a.key_mask = f32(info, 3, "keyMask", checked_mul(info, a.B, a.Tk), true);
  float* out = f32(info, 4, "out", nq);
  float* probs = f32(info, 5, "probs", checked_mul(info, checked_mul(info, a.B * a.n_head, a.Tq), a.Tk), true);
  attention_forward(a, out, probs);
  return info.Env().Undefined();
}

// attentionQkv(qkv, keyMask|null, out, B, T, T, T, C, nHead, scale, causal, dropoutP, dropoutSeedUint32):
// self-attention with q, k and v the column blocks [0, C), [C, 2C), [2C, 3C) of qkv (B, T, 3C), read in place.
Napi::Value AttentionQkv(const Napi::CallbackInfo& info) {
  need_args(info, 13, "attentionQkv");
  AttentionArgs a = attention_geometry(info, 3);
  if (a.Tq != a.Tk || a.kv_len != a.Tk) fail(info, "attentionQkv: self-attention needs Tq = Tk = kvLength");
  const int64_t nq = checked_mul(info, checked_mul(info, a.B, a.Tq), a.C);
  const float* qkv = f32(info, 0, "qkv", checked_mul(info, nq, 3));
  a.q = qkv;
  a.k = qkv + a.C;
  a.v = qkv + 2 * a.C;
  a.ldq = a.ldkv = 3 * a.C;
  a.key_mask = f32(info, 1, "keyMask", checked_mul(info, a.B, a.Tk), true);
  attention_forward(a, f32(info, 2, "out", nq), nullptr);
  return info.Env().Undefined();
}

// attentionBackward(dout, q, k, v, probs, dq, dk, dv, B, Tq, Tk, kvLen, C, nHead, scale, causal, dropoutP,
//                   dropoutSeedUint32)
Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  need_args(info, 18, "attentionBackward");
  AttentionArgs a = attention_geometry(info, 8);
  const int64_t nq = checked_mul(info, checked_mul(info, a.B, a.Tq), a.C);
  const int64_t nk = checked_mul(info, checked_mul(info, a.B, a.Tk), a.C);
  const float* dout = f32(info, 0, "dout", nq);
  a.q = f32(info, 1, "q", nq);
  a.k = f32(info, 2, "k", nk);
  a.v = f32(info, 3, "v", nk);
  const float* probs = f32(info, 4, "probs", checked_mul(info, checked_mul(info, a.B * a.n_head, a.Tq), a.Tk));
  attention_backward(a, dout, probs, f32(info, 5, "dq", nq), f32(info, 6, "dk", nk), f32(info, 7, "dv", nk));
  return info.Env().Undefined();
}

// embedding(ids, table, out, V, C)
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  need_args(info, 5, "embedding");
  const int64_t V = integer(info, 3, "V"), C = integer(info, 4, "C");
  const int64_t n = length(info, 0, "ids");
  const int32_t* ids = i32(info, 0, "ids", n);
  const float* table = f32(info, 1, "table", checked_mul(info, V, C));
  float* out = f32(info, 2, "out", checked_mul(info, n, C));
  const int64_t bad = find_bad_id(ids, n, V);
  if (bad >= 0) fail(info, "embedding: id " + std::to_string(ids[bad]) + " is outside the table");
  embedding_forward(ids, n, table, V, C, out);
  return info.Env().Undefined();
}

// embeddingBackward(dy, ids, dtable, V, C)
Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  need_args(info, 5, "embeddingBackward");
  const int64_t V = integer(info, 3, "V"), C = integer(info, 4, "C");
  const int64_t n = length(info, 1, "ids");
  const int32_t* ids = i32(info, 1, "ids", n);
  const float* dy = f32(info, 0, "dy", checked_mul(info, n, C));
  float* dtable = f32(info, 2, "dtable", checked_mul(info, V, C));
  const int64_t bad = find_bad_id(ids, n, V);
  if (bad >= 0) fail(info, "embeddingBackward: id " + std::to_string(ids[bad]) + " is outside the table");
  embedding_backward(dy, ids, n, dtable, V, C);
  return info.Env().Undefined();
}

namespace {
// Targets must be ignoreIndex or a class in [0, V).
void check_targets(const Napi::CallbackInfo& info, const int32_t* targets, int64_t N, int64_t V, int32_t ignore) {
  for (int64_t r = 0; r < N; ++r)
    if (targets[r] != ignore && (targets[r] < 0 || targets[r] >= V))
      fail(info, "crossEntropy: target " + std::to_string(targets[r]) + " is outside the classes");
}
}  // namespace

// crossEntropy(logits, targets, N, V, ignoreIndex) -> [lossSum, count]
Napi::Value CrossEntropy(const Napi::CallbackInfo& info) {
  need_args(info, 5, "crossEntropy");
  const int64_t N = integer(info, 2, "N"), V = integer(info, 3, "V");
  const auto ignore = static_cast<int32_t>(integer(info, 4, "ignoreIndex", INT32_MIN, INT32_MAX));
  const float* logits = f32(info, 0, "logits", checked_mul(info, N, V));
  const int32_t* targets = i32(info, 1, "targets", N);
  check_targets(info, targets, N, V, ignore);
  const CrossEntropySum s = cross_entropy_forward(logits, targets, N, V, ignore);
  Napi::Array r = Napi::Array::New(info.Env(), 2);
  r.Set(0u, Napi::Number::New(info.Env(), s.loss_sum));
  r.Set(1u, Napi::Number::New(info.Env(), static_cast<double>(s.count)));
  return r;
}

// crossEntropyBackward(logits, targets, N, V, ignoreIndex, factor, dlogits)
Napi::Value CrossEntropyBackward(const Napi::CallbackInfo& info) {
  need_args(info, 7, "crossEntropyBackward");
  const int64_t N = integer(info, 2, "N"), V = integer(info, 3, "V");
  const auto ignore = static_cast<int32_t>(integer(info, 4, "ignoreIndex", INT32_MIN, INT32_MAX));
  const int64_t n = checked_mul(info, N, V);
  const float* logits = f32(info, 0, "logits", n);
  const int32_t* targets = i32(info, 1, "targets", N);
  check_targets(info, targets, N, V, ignore);
  cross_entropy_backward(logits, targets, N, V, ignore, number(info, 5, "factor"), f32(info, 6, "dlogits", n));
  return info.Env().Undefined();
}

// adamw(param, grad, m, v, lr, beta1, beta2, eps, weightDecay, stepSize, bc2Sqrt)
Napi::Value AdamW(const Napi::CallbackInfo& info) {
  need_args(info, 11, "adamw");
  const int64_t n = length(info, 0, "param");
  float* p = f32(info, 0, "param", n);
  const float* g = f32(info, 1, "grad", n);
  float* m = f32(info, 2, "m", n);
  float* v = f32(info, 3, "v", n);
  AdamWArgs a;
  a.lr = number(info, 4, "lr");
  a.beta1 = number(info, 5, "beta1");
  a.beta2 = number(info, 6, "beta2");
  a.eps = number(info, 7, "eps");
  a.weight_decay = number(info, 8, "weightDecay");
  a.step_size = number(info, 9, "stepSize");
  a.bc2_sqrt = number(info, 10, "bc2Sqrt");
  adamw(p, g, m, v, n, a);
  return info.Env().Undefined();
}

// dropout(x, p, seedUint32, y, mask|null): the mask output is optional (the backward regenerates it)
Napi::Value Dropout(const Napi::CallbackInfo& info) {
  need_args(info, 5, "dropout");
  const int64_t n = length(info, 0, "x");
  const double p = number(info, 1, "p");
  if (!(p >= 0.0 && p <= 1.0)) fail(info, "dropout: p must be in [0, 1]");
  const auto seed = static_cast<uint32_t>(integer(info, 2, "seed", 0, UINT32_MAX));
  dropout(f32(info, 0, "x", n), n, p, seed, f32(info, 3, "y", n), f32(info, 4, "mask", n, true));
  return info.Env().Undefined();
}

// logSoftmaxTopK(x, rows, V, k, t, values, indices): decoding.h
Napi::Value LogSoftmaxTopK(const Napi::CallbackInfo& info) {
  need_args(info, 7, "logSoftmaxTopK");
  const int64_t rows = integer(info, 1, "rows"), V = integer(info, 2, "V");
  const int64_t k = integer(info, 3, "k", 1, V < 1 ? 1 : V);
  const double t = number(info, 4, "t");
  if (!(t > 0.0) || !std::isfinite(t)) fail(info, "logSoftmaxTopK: t must be finite and positive");
  if (V > 0x7fffffffLL) fail(info, "logSoftmaxTopK: V must fit in int32");
  const int64_t n = checked_mul(info, rows, V), nk = checked_mul(info, rows, k);
  log_softmax_topk(f32(info, 0, "x", n), rows, V, k, t, f32(info, 5, "values", nk), i32(info, 6, "indices", nk));
  return info.Env().Undefined();
}

// ---- convolution and pooling (NHWC) ----

namespace {
// Reads B, H, W, C, O, kh, kw, strideH, strideW, padH, padW from info[first..first+10], checks that the
// window fits, and derives Ho, Wo.
ConvArgs conv_geometry(const Napi::CallbackInfo& info, size_t first) {
  ConvArgs a;
  a.B = integer(info, first, "B");
  a.H = integer(info, first + 1, "H");
  a.W = integer(info, first + 2, "W");
  a.C = integer(info, first + 3, "C");
  a.O = integer(info, first + 4, "O");
  a.kh = integer(info, first + 5, "kh", 1);
  a.kw = integer(info, first + 6, "kw", 1);
  a.stride_h = integer(info, first + 7, "strideH", 1);
  a.stride_w = integer(info, first + 8, "strideW", 1);
  a.pad_h = integer(info, first + 9, "padH");
  a.pad_w = integer(info, first + 10, "padW");
  if (a.H + 2 * a.pad_h < a.kh || a.W + 2 * a.pad_w < a.kw) fail(info, "conv: the window does not fit the image");
  a.Ho = (a.H + 2 * a.pad_h - a.kh) / a.stride_h + 1;
  a.Wo = (a.W + 2 * a.pad_w - a.kw) / a.stride_w + 1;
  return a;
}
}  // namespace

// conv2d(x, w, bias|null, residual|null, y, B, H, W, C, O, kh, kw, strideH, strideW, padH, padW, relu)
Napi::Value Conv2d(const Napi::CallbackInfo& info) {
  need_args(info, 17, "conv2d");
  const ConvArgs a = conv_geometry(info, 5);
  const float* x = f32(info, 0, "x", checked_mul(info, checked_mul(info, a.B * a.H, a.W), a.C));
  const float* w = f32(info, 1, "w", checked_mul(info, checked_mul(info, a.O, a.kh * a.kw), a.C));
  const float* bias = f32(info, 2, "bias", a.O, true);
  const int64_t ny = checked_mul(info, checked_mul(info, a.B * a.Ho, a.Wo), a.O);
  const float* residual = f32(info, 3, "residual", ny, true);
  float* y = f32(info, 4, "y", ny);
  const int64_t nx = a.B * a.H * a.W * a.C;
  if (overlap(y, ny, x, nx) || overlap(y, ny, w, a.O * a.kh * a.kw * a.C) ||
      (residual != nullptr && overlap(y, ny, residual, ny)))
    fail(info, "conv2d: y overlaps x, w or the residual");
  conv2d_nhwc(a, x, w, bias, residual, y, flag(info, 16, "relu"));
  return info.Env().Undefined();
}

// avgPool2d(x, y, B, H, W, C, kh, kw, strideH, strideW, padH, padW)
Napi::Value AvgPool2d(const Napi::CallbackInfo& info) {
  need_args(info, 12, "avgPool2d");
  // conv_geometry reads O too: pooling keeps the channels, so the slot before kh repeats C.
  ConvArgs a;
  a.B = integer(info, 2, "B");
  a.H = integer(info, 3, "H");
  a.W = integer(info, 4, "W");
  a.C = integer(info, 5, "C");
  a.O = a.C;
  a.kh = integer(info, 6, "kh", 1);
  a.kw = integer(info, 7, "kw", 1);
  a.stride_h = integer(info, 8, "strideH", 1);
  a.stride_w = integer(info, 9, "strideW", 1);
  a.pad_h = integer(info, 10, "padH");
  a.pad_w = integer(info, 11, "padW");
  if (a.H + 2 * a.pad_h < a.kh || a.W + 2 * a.pad_w < a.kw) fail(info, "avgPool2d: the window does not fit the image");
  a.Ho = (a.H + 2 * a.pad_h - a.kh) / a.stride_h + 1;
  a.Wo = (a.W + 2 * a.pad_w - a.kw) / a.stride_w + 1;
  const float* x = f32(info, 0, "x", checked_mul(info, checked_mul(info, a.B * a.H, a.W), a.C));
  float* y = f32(info, 1, "y", checked_mul(info, checked_mul(info, a.B * a.Ho, a.Wo), a.C));
  avgpool2d_nhwc(a, x, y);
  return info.Env().Undefined();
}

}  // namespace clipcap
