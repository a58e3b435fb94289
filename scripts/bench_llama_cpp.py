#!/usr/bin/env python3
"""llama.cpp's decode and prefill speed on a GGUF file, as bench_engine measures strata's: a prompt of
`--context` random tokens, then `--steps` single-token decodes, timed; and a `--prefill`-token prompt
in one batch. Prints one JSON object. Run with the python of scripts/install-llama-cpp.sh."""
import argparse
import json
import random
import time

import llama_cpp


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()

    llm = llama_cpp.Llama(model_path=a.model, n_ctx=max(a.context + a.steps, a.prefill) + 8, n_batch=a.prefill,
                          n_ubatch=a.prefill, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    vocab = llm.n_vocab()
    rng = random.Random(42)
    tokens = [rng.randrange(vocab) for _ in range(max(a.context + a.steps, a.prefill))]

    decode_s, prefill_s = [], []
    for _ in range(a.repeats):
        llm.reset()
        llm.eval(tokens[: a.context])
        t0 = time.perf_counter()
        for i in range(a.steps):
            llm.eval([tokens[a.context + i]])
        decode_s.append((time.perf_counter() - t0) / a.steps)
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(tokens[: a.prefill])
        prefill_s.append(time.perf_counter() - t0)
    print(json.dumps({
        "engine": "llama.cpp (llama-cpp-python %s)" % llama_cpp.__version__,
        "threads": a.threads,
        "decode_tok_s": len(decode_s) / sum(decode_s),
        "prefill_tok_s": a.prefill * len(prefill_s) / sum(prefill_s),
    }))


if __name__ == "__main__":
    main()
