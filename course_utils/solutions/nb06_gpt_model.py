"""Solutions to the exercises of notebook 06 (the GPT model): the parameter count and GPT-2's
weights from Hugging Face."""


def param_count(vocab_size, block_size, n_layer, n_embd):
    """Parameters of the course's GPT (biases on, LM head tied to ``wte``)."""
    C = n_embd
    attention = 4 * C * C + 4 * C  # c_attn (C x 3C + 3C), c_proj (C x C + C)
    mlp = 8 * C * C + 5 * C  # c_fc (C x 4C + 4C), c_proj (4C x C + C)
    layer_norms = 2 * 2 * C  # ln_1 and ln_2: a weight and a bias each
    embeddings = vocab_size * C + block_size * C  # wte (also the LM head) and wpe
    return embeddings + n_layer * (attention + mlp + layer_norms) + 2 * C  # + ln_f


def convert_hf_state_dict(hf_state_dict):
    """A Hugging Face ``GPT2LMHeadModel`` state dict -> one our ``GPT`` loads: the same names,
    with the four ``Conv1D`` weights of each block (stored ``(in, out)``) transposed to
    ``nn.Linear``'s ``(out, in)``."""
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    return {name: tensor.t() if name.endswith(conv1d) else tensor
            for name, tensor in hf_state_dict.items()}
