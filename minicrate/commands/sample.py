"""``minicrate sample RUN_DIR``: text from a trained character language model.

A causal run continues ``--prompt`` (temperature, top-k, seeded).  A masked
run fills in every ``--mask-char`` (default ``_``) of ``--prompt`` with its
most likely character.
"""

from __future__ import annotations

from minicrate.commands import arguments as a

NAME = "sample"
HELP = "generate text from a train-lm run (causal) or fill in masked characters (masked)"


def add_arguments(p):
    p.add_argument("run", type=a.existing_path, help="a train-lm run directory (or its checkpoint.npz)")
    p.add_argument("--prompt", default="ROMEO:", help="text to continue (masked runs: text "
                   "with --mask-char where characters are missing)")
    p.add_argument("--length", type=a.integer(0, a.MAX_SAMPLE_LENGTH), default=400, help="characters to generate")
    p.add_argument("--temperature", type=a.non_negative_real, default=0.8, help="0 for greedy decoding")
    p.add_argument("--top-k", type=a.positive, default=None, help="sample among the k likeliest only")
    p.add_argument("--seed", type=a.seed, default=0)
    p.add_argument("--mask-char", default="_", help="masked runs: the placeholder character")
    p.add_argument("--backend", default="numpy")


def run(args):
    from minicrate.commands.train_lm import load_run
    from minicrate.core.validate import finite_checks
    from minicrate.models import sampling
    from minicrate.training.parallel.threads import one_thread_blas
    from minicrate.training.rundir import require_kind

    require_kind(args.run, "language-model", NAME)
    params, config, vocab, _ = load_run(args.run, backend=args.backend)
    prompt = args.prompt.replace("\\n", "\n")
    # One sequence at a time: small products, where BLAS threads only add overhead.
    with finite_checks(False), one_thread_blas():
        if config.causal:
            text = sampling.generate(params, config, vocab, prompt, args.length,
                               temperature=args.temperature, top_k=args.top_k, seed=args.seed)
        else:
            text, _ = sampling.fill_masks(params, config, vocab, prompt, mask_char=args.mask_char)
    print(text)
    return 0
