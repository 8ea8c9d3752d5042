import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llama(request):
    """A random-init 2-layer Llama (GQA 4/2 heads, vocab 97) in eval mode; a test module may set
    TINY_LLAMA_LAYERS to change its depth."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    conf = LlamaConfig(hidden_size=64, intermediate_size=128,
                       num_hidden_layers=getattr(request.module, "TINY_LLAMA_LAYERS", 2), num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=97, max_position_embeddings=256, attn_implementation="sdpa")
    return LlamaForCausalLM(conf).eval()
