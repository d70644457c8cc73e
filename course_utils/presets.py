"""Training presets, in one place. Each is a set of settings under their flat names (the
command line's flags): the model's (:class:`~course_utils.model.GPTConfig` fields) and the
training's (:class:`~course_utils.train.TrainConfig` fields), as
:meth:`TrainConfig.from_settings <course_utils.train.TrainConfig.from_settings>` takes them.
Settings a preset leaves out keep their defaults."""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    # A character-level GPT on Tiny Shakespeare sized for a 2-core laptop CPU (a few
    # minutes). Measured results are in the README.
    "shakespeare-char": dict(
        dataset="tinyshakespeare", out_dir="runs/shakespeare-char",
        n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0,
        batch_size=32, max_iters=1500, learning_rate=2e-3, min_lr=2e-4, warmup_iters=100,
        weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=20,
    ),
    # Notebook 13's base model: Tiny Shakespeare in byte-level BPE tokens (1,024 of them,
    # learned from the training split), a context of 256 tokens (about 600 characters, room
    # for a few turns of a conversation). Any text can be encoded, which a chat model needs.
    "shakespeare-bpe": dict(
        dataset="tinyshakespeare", bpe_vocab_size=1024, out_dir="runs/shakespeare-bpe",
        n_layer=4, n_head=4, n_embd=128, block_size=256, dropout=0.1,
        batch_size=16, max_iters=500, learning_rate=2e-3, min_lr=2e-4, warmup_iters=50,
        weight_decay=0.1, grad_clip=1.0, eval_interval=100, eval_iters=10, sample_tokens=120,
    ),
    # Chat fine-tuning (SFT, notebook 13) of a pretrained run on conversations built from Tiny
    # Shakespeare, the loss on the assistant's replies only. The model's shape comes from the
    # --init-from checkpoint; chat with the result: python -m course_utils chat --checkpoint
    # runs/shakespeare-chat.
    "shakespeare-chat": dict(
        dataset="tinyshakespeare-chat", init_from="runs/shakespeare-bpe",
        out_dir="runs/shakespeare-chat", dropout=0.1,
        batch_size=32, max_iters=100, learning_rate=1e-3, min_lr=1e-4, warmup_iters=10,
        weight_decay=0.1, grad_clip=1.0, eval_interval=50, eval_iters=10, sample_tokens=0,
    ),
    # Preference tuning (DPO, notebook 14) of a chat run: at the start, 8 replies are sampled
    # from the --init-from model for each of 256 training prompts (and 64 validation ones),
    # scored by course_utils.preference.ReplyReward, and the best and the worst of each
    # prompt kept as a pair when their rewards differ by 0.1 or more; then DPO with beta 0.1
    # against that model. Dropout is off, as in TRL's DPOTrainer: the policy starts equal to
    # the reference. Chat with the result: python -m course_utils chat --checkpoint
    # runs/shakespeare-dpo.
    "shakespeare-dpo": dict(
        dataset="tinyshakespeare-prefs", init_from="runs/shakespeare-chat",
        out_dir="runs/shakespeare-dpo", dropout=0.0, beta=0.1,
        pref_prompts=256, pref_samples=8, pref_margin=0.1,
        batch_size=16, max_iters=50, learning_rate=5e-4, min_lr=5e-5, warmup_iters=5,
        weight_decay=0.0, grad_clip=1.0, eval_interval=25, eval_iters=4, sample_tokens=60,
    ),
    # Instruction following for SmolLM2-135M-Instruct (notebook 14, part B): at the start, 4
    # replies of at most 112 tokens, at temperature 0.7, are sampled from the --init-from model
    # for each of 80 requests (sized for 2 CPU cores) written by
    # course_utils.instructions.make_requests, scored by IFEval's checkers, and per request a
    # finished reply that follows every instruction is paired with a finished one that does
    # not, as close in length as there are; a fifth of
    # the pairs is held out. The pairs are cached in the run folder (pairs.json). Then DPO with
    # beta 0.1 on LoRA adapters of rank 8 (the checkpoint keeps only the adapters). Notebook 14
    # measures the result on IFEval; chat with it: python -m course_utils chat --checkpoint
    # runs/smollm2-ifeval-dpo.
    "smollm2-ifeval-dpo": dict(
        dataset="ifeval-prefs", init_from="smollm2-135m-instruct",
        out_dir="runs/smollm2-ifeval-dpo", block_size=640, dropout=0.0, lora_rank=8,
        lora_alpha=16, beta=0.1, pref_prompts=80, pref_samples=4, pref_max_tokens=112,
        pref_temperature=0.7, batch_size=4, max_iters=40, learning_rate=5e-4, min_lr=5e-5,
        warmup_iters=4, weight_decay=0.0, grad_clip=1.0, eval_interval=40, eval_iters=2,
        sample_tokens=96,
    ),
    # Notebook 16's record: val loss <= 1.60 within 120 s of wall time on a 2-core CPU, the
    # whole command timed: `torchrun --standalone --nproc_per_node=2 -m course_utils train
    # --preset shakespeare-speedrun` (two processes, one thread each, DDP; each orthogonalises
    # half of Muon's matrices). One process trains the same run, more slowly. Same data and
    # validation protocol as shakespeare-char (block_size 64, 20 x 32 = 640 val windows, one
    # evaluation at the end). What changed: the Llama block, Muon for the blocks' matrices, a
    # narrower model (n_embd 96) with a twice larger batch (2 x 32 sequences a step), a
    # shorter warmup, two processes.
    "shakespeare-speedrun": dict(
        dataset="tinyshakespeare", out_dir="runs/shakespeare-speedrun",
        n_layer=4, n_head=4, n_embd=96, block_size=64, dropout=0.0,
        norm="rmsnorm", pos_emb="rope", mlp="swiglu", mlp_hidden=256, bias=False,
        optimizer="muon", muon_lr=0.02, batch_size=32, grad_accum_steps=2, max_iters=700,
        learning_rate=2e-3, min_lr=2e-4, warmup_iters=30, weight_decay=0.1, grad_clip=1.0,
        eval_interval=700, eval_iters=20, sample_tokens=200,
    ),
    # Seconds: for tests and for checking that everything is wired up.
    "smoke": dict(
        dataset="tinyshakespeare", out_dir="runs/smoke",
        n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0,
        batch_size=8, max_iters=30, learning_rate=3e-3, min_lr=3e-4, warmup_iters=5,
        weight_decay=0.1, grad_clip=1.0, eval_interval=10, eval_iters=2, sample_tokens=60,
    ),
    # TinyStories (notebook 10) with GPT-2's tokenizer (50,257 tokens, tied LM head). Both read
    # a folder made by course_utils.tinystories.prepare_tinystories, e.g.
    # `python -m course_utils.tinystories data/tinystories-gpt2`.
    #
    # For one GPU: 51,213,824 parameters (GPT(...).num_params()), 32,768 tokens per optimizer
    # step (batch 16 x 512 tokens x 4 accumulation steps), so 5000 steps see about 164M
    # tokens. dtype "auto" is bfloat16 autocast where the GPU has it; on a GPU without
    # bfloat16 (T4, V100) pass dtype="float16", which scales the loss with a GradScaler.
    # Attention runs through F.scaled_dot_product_attention (flash attention on GPUs that
    # have it); compile=True adds torch.compile (a minute or so of compiling first).
    "tinystories-gpu": dict(
        dataset="data/tinystories-gpt2", out_dir="runs/tinystories-gpu",
        n_layer=8, n_head=8, n_embd=512, block_size=512, dropout=0.0, attn_impl="sdpa",
        batch_size=16, grad_accum_steps=4, max_iters=5000, learning_rate=1e-3, min_lr=1e-4,
        warmup_iters=200, weight_decay=0.1, beta2=0.95, grad_clip=1.0,
        eval_interval=500, eval_iters=50, dtype="auto", compile=False,
    ),
    # A laptop CPU: 7,242,624 parameters, most of them (6.4M) the token embedding that
    # GPT-2's large vocabulary needs; the output layer over 50,257 tokens is also most of the
    # compute. 1,024 tokens per step.
    "tinystories-cpu": dict(
        dataset="data/tinystories-gpt2", out_dir="runs/tinystories-cpu",
        n_layer=4, n_head=4, n_embd=128, block_size=128, dropout=0.0,
        batch_size=8, max_iters=600, learning_rate=2e-3, min_lr=2e-4, warmup_iters=50,
        weight_decay=0.1, grad_clip=1.0, eval_interval=100, eval_iters=10, sample_tokens=100,
    ),
}
