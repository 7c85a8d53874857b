"""llama_config.py: the hyperparameters of our LLaMA models (no torch needed,
so that the GGUF tools run without it)."""

import dataclasses


@dataclasses.dataclass
class LlamaConfig:
    dim: int = 512
    n_layers: int = 6
    n_heads: int = 8
    n_kv_heads: int = 2
    head_dim: int = 64
    ffn_dim: int = 1280
    vocab_size: int = 8000
    ctx_len: int = 4096
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tied: bool = True
    dropout: float = 0.0

    def __post_init__(self):
        assert self.n_heads % self.n_kv_heads == 0
        assert self.head_dim % 2 == 0


def config_from_dict(d):
    fields = {f.name for f in dataclasses.fields(LlamaConfig)}
    return LlamaConfig(**{k: v for k, v in d.items() if k in fields})
