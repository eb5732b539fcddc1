{
  "targets": [
    {
      "target_name": "clipcap_native",
      "sources": [
        "native/addon.cc",
        "native/bindings.cc",
        "native/threadpool.cc",
        "native/gemm.cc",
        "native/gemm_avx2.cc",
        "native/gemv.cc",
        "native/quant.cc",
        "native/kernels.cc",
        "native/attention.cc",
        "native/decoding.cc",
        "native/conv.cc",
        "native/conv_avx512.cc",
        "native/vecmath_avx2.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_CPP_EXCEPTIONS_ALL",
        "NODE_ADDON_API_DISABLE_DEPRECATED"
      ],
      "cflags!": ["-fno-exceptions", "-O2", "-O0"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-O2", "-O0"],
      "cflags": ["-O3", "-fno-math-errno", "-fno-trapping-math", "-Wall", "-Wextra", "-fvisibility=hidden"],
      "cflags_cc": ["-O3", "-std=c++17", "-fno-math-errno", "-fno-trapping-math", "-fexceptions", "-Wall", "-Wextra", "-fvisibility=hidden"],
      "ldflags": ["-pthread"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "GCC_OPTIMIZATION_LEVEL": "3",
        "OTHER_CFLAGS": ["-fvisibility=hidden"]
      },
      "msvs_settings": {
        "VCCLCompilerTool": { "ExceptionHandling": 1, "AdditionalOptions": ["/std:c++17", "/O2"] }
      }
    }
  ]
}
