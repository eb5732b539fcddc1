// Node-API wrappers: each unpacks its JS arguments into plain values, checks that every buffer is long
// enough for the sizes it was given (a last line of defence: TypeScript validates shapes first, but a
// wrong length must become a JS exception here, never an out-of-bounds write), then calls a kernel.
#pragma once

#include <napi.h>

namespace clipcap {

Napi::Value Info(const Napi::CallbackInfo& info);
Napi::Value SetThreads(const Napi::CallbackInfo& info);
Napi::Value SetGemmKernel(const Napi::CallbackInfo& info);
Napi::Value SetConvKernel(const Napi::CallbackInfo& info);
Napi::Value Gemm(const Napi::CallbackInfo& info);
Napi::Value GemmQuant(const Napi::CallbackInfo& info);
Napi::Value PackB(const Napi::CallbackInfo& info);
Napi::Value UnpackB(const Napi::CallbackInfo& info);
Napi::Value Binary(const Napi::CallbackInfo& info);
Napi::Value Scale(const Napi::CallbackInfo& info);
Napi::Value Axpy(const Napi::CallbackInfo& info);
Napi::Value SumRows(const Napi::CallbackInfo& info);
Napi::Value ActivationForward(const Napi::CallbackInfo& info);
Napi::Value ActivationBackward(const Napi::CallbackInfo& info);
Napi::Value Softmax(const Napi::CallbackInfo& info);
Napi::Value LayerNorm(const Napi::CallbackInfo& info);
Napi::Value LayerNormBackward(const Napi::CallbackInfo& info);
Napi::Value Attention(const Napi::CallbackInfo& info);
Napi::Value AttentionBackward(const Napi::CallbackInfo& info);
Napi::Value AttentionQkv(const Napi::CallbackInfo& info);
Napi::Value Embedding(const Napi::CallbackInfo& info);
Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info);
Napi::Value CrossEntropy(const Napi::CallbackInfo& info);
Napi::Value CrossEntropyBackward(const Napi::CallbackInfo& info);
Napi::Value AdamW(const Napi::CallbackInfo& info);
Napi::Value Dropout(const Napi::CallbackInfo& info);
Napi::Value LogSoftmaxTopK(const Napi::CallbackInfo& info);
Napi::Value Conv2d(const Napi::CallbackInfo& info);
Napi::Value AvgPool2d(const Napi::CallbackInfo& info);

}  // namespace clipcap
