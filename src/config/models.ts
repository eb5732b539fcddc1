/** Typed configurations of every model family (Hugging Face field names where one exists). */

export interface Gpt2Config {
  vocab_size: number; // 50257
  n_positions: number; // 1024
  n_embd: number; // 768
  n_layer: number; // 12
  n_head: number; // 12
  layer_norm_epsilon: number; // 1e-5
  /** Dropout probabilities (resid/embd/attn), used in train mode only. */
  resid_pdrop: number;
  embd_pdrop: number;
  attn_pdrop: number;
  /** MLP width; null/absent means 4 * n_embd (as Hugging Face). */
  n_inner?: number | null;
  /** Hugging Face activation name; absent means gelu_new (the only one GPT-2 checkpoints use). */
  activation_function?: string;
}

/** GPT-2 small (openai-community/gpt2). */
export const GPT2_SMALL: Gpt2Config = {
  vocab_size: 50257,
  n_positions: 1024,
  n_embd: 768,
  n_layer: 12,
  n_head: 12,
  layer_norm_epsilon: 1e-5,
  resid_pdrop: 0.1,
  embd_pdrop: 0.1,
  attn_pdrop: 0.1,
};

export interface ClipVisionConfig {
  hidden_size: number; // 768
  intermediate_size: number; // 3072
  num_hidden_layers: number; // 12
  num_attention_heads: number; // 12
  image_size: number; // 224
  patch_size: number; // 32
  num_channels: number; // 3
  layer_norm_eps: number; // 1e-5
  hidden_act: 'quick_gelu' | 'gelu';
  /** Output width of visual_projection (512 for ViT-B/32). */
  projection_dim: number;
}

/** CLIP ViT-B/32's vision tower (openai/clip-vit-base-patch32). */
export const CLIP_VIT_B32_VISION: ClipVisionConfig = {
  hidden_size: 768,
  intermediate_size: 3072,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  image_size: 224,
  patch_size: 32,
  num_channels: 3,
  layer_norm_eps: 1e-5,
  hidden_act: 'quick_gelu',
  projection_dim: 512,
};

export interface ClipTextConfig {
  vocab_size: number; // 49408
  hidden_size: number; // 512
  intermediate_size: number; // 2048
  num_hidden_layers: number; // 12
  num_attention_heads: number; // 8
  max_position_embeddings: number; // 77
  layer_norm_eps: number;
  hidden_act: 'quick_gelu' | 'gelu';
  eos_token_id: number; // 49407 (2 in some older configs: then the argmax id is the EOS position)
  projection_dim: number;
}

export type MapperConfig =
  | {
      kind: 'mlp';
      /** CLIP embedding width D (512 for ViT-B/32). */
      prefix_size: number;
      /** K prefix vectors. */
      prefix_length: number;
      /** Hidden widths of the MLP: [D, K*E/2, K*E] (or [D, K*E] when K > 10 as in predict.py). */
      sizes: number[];
    }
  | {
      kind: 'transformer';
      prefix_size: number;
      prefix_length: number;
      /** clip_length: how many vectors the linear layer makes from the CLIP embedding. */
      clip_length: number;
      num_layers: number;
      /** 8 in the official code. */
      num_heads: number;
    };

export interface ClipCapConfig {
  mapper: MapperConfig;
  gpt2: Gpt2Config;
  /** Divide the CLIP embedding by its L2 norm before the mapper (official --normalize_prefix). */
  normalize_prefix: boolean;
}

/**
 * OpenAI CLIP's ModifiedResNet image tower (clip/model.py), the fields `build_model` infers from the weights:
 * RN50 layers [3, 4, 6, 3] width 64 at 224; RN101 [3, 4, 23, 3] 64 at 224; RN50x4 [4, 6, 10, 6] 80 at 288;
 * RN50x16 [6, 8, 18, 8] 96 at 384; RN50x64 [3, 15, 36, 10] 128 at 448.
 */
export interface ClipResNetConfig {
  /** Bottleneck blocks per stage. */
  layers: readonly [number, number, number, number];
  /** Stem output channels; stage s has width·2^s planes and 4x as many output channels. */
  width: number;
  /** Side of the square input (input_resolution); the attention pool sees (image_size / 32)² positions. */
  image_size: number;
  /** Attention-pool heads: width·32 / 64 in OpenAI's models. */
  heads: number;
  /** Width of the projected embedding (attnpool.c_proj rows): 1024 RN50, 640 RN50x4. */
  output_dim: number;
  /** BatchNorm epsilon (nn.BatchNorm2d's default 1e-5). */
  bn_eps: number;
}
