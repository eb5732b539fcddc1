// clipcap_native: the native backend's kernels (see src/engine/native.ts for the TypeScript side).
// This file only lists the exported functions; bindings.cc unpacks arguments, the kernels live in
// gemm*.cc, kernels.cc, attention.cc and conv.cc.
#include <napi.h>

#include "bindings.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  using namespace clipcap;
  const struct {
    const char* name;
    Napi::Value (*fn)(const Napi::CallbackInfo&);
  } functions[] = {
      {"info", Info},
      {"setThreads", SetThreads},
      {"setGemmKernel", SetGemmKernel},
      {"gemm", Gemm},
      {"gemmQuant", GemmQuant},
      {"packB", PackB},
      {"unpackB", UnpackB},
      {"binary", Binary},
      {"scale", Scale},
      {"axpy", Axpy},
      {"sumRows", SumRows},
      {"activation", ActivationForward},
      {"activationBackward", ActivationBackward},
      {"softmax", Softmax},
      {"layerNorm", LayerNorm},
      {"layerNormBackward", LayerNormBackward},
      {"attention", Attention},
      {"attentionBackward", AttentionBackward},
      {"attentionQkv", AttentionQkv},
      {"embedding", Embedding},
      {"embeddingBackward", EmbeddingBackward},
      {"crossEntropy", CrossEntropy},
      {"crossEntropyBackward", CrossEntropyBackward},
      {"adamw", AdamW},
      {"dropout", Dropout},
      {"logSoftmaxTopK", LogSoftmaxTopK},
      {"conv2d", Conv2d},
      {"setConvKernel", SetConvKernel},
      {"avgPool2d", AvgPool2d},
  };
  for (const auto& f : functions) exports.Set(f.name, Napi::Function::New(env, f.fn, f.name));
  return exports;
}

}  // namespace

NODE_API_MODULE(clipcap_native, Init)
