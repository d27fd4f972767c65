"""The generation workload that llama_generate.py measures and record_trace.py records: a randomly
initialised Llama-style transformers model (nothing downloaded) and a fixed schedule of rounds,
each a batch of prompts of one length, generated greedily. Batch sizes and prompt lengths change
from round to round, so the KV caches (grown by torch.cat, one token at a time) and activations
of one round leave holes that the next round's sizes do not fit.

The same seed gives the same weights in every process: the model is built on the CPU under
torch.manual_seed, then copied to the GPU. Inputs come from a CPU generator seeded by the round.
"""

# name -> LlamaConfig arguments
MODEL_SIZES = {
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=32000),
    "small": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                  num_key_value_heads=16, vocab_size=32000),
    "medium": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
                   num_key_value_heads=16, vocab_size=32000),
}

# (batch size, prompt length) of each round; cycled where more rounds are asked for.
SCHEDULE = [(4, 96), (32, 768), (2, 2000), (48, 256), (8, 1280), (64, 128), (1, 3000), (24, 1024),
            (40, 512), (6, 1800), (56, 64), (16, 1400)]


def rounds(n):
    return [SCHEDULE[i % len(SCHEDULE)] for i in range(n)]


def build_model(torch, size, dtype, seed=0, attn="sdpa"):
    """The model on the GPU in `dtype`, in eval mode, with the same weights for the same seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**MODEL_SIZES[size], max_position_embeddings=4096, bos_token_id=1,
                         eos_token_id=None, pad_token_id=0, tie_word_embeddings=False,
                         attn_implementation=attn)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)  # built and initialised on the CPU: the same in every mode
    model = model.to(dtype=dtype).to("cuda").eval()
    # No end-of-sequence token: every row generates exactly max_new_tokens, in every mode.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    model.generation_config.do_sample = False
    return model


def prompt(torch, round_index, batch, length, vocab, seed=0):
    g = torch.Generator().manual_seed(1000003 * (seed + 1) + round_index)
    return torch.randint(3, vocab, (batch, length), generator=g)


def generate(torch, model, input_ids, new_tokens, processor=None):
    """Greedy generation of exactly `new_tokens` tokens; returns the generated ids (on the GPU)."""
    try:
        from transformers import LogitsProcessorList
    except ImportError:
        from transformers.generation import LogitsProcessorList

    ids = input_ids.to("cuda")
    mask = torch.ones_like(ids)
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                  num_beams=1, pad_token_id=0)
    if processor is not None:
        kwargs["logits_processor"] = LogitsProcessorList([processor])
    with torch.no_grad():
        out = model.generate(**kwargs)
    return out[:, ids.shape[1]:]
