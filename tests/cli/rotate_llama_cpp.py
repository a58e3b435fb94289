"""llama.cpp (llama-cpp-python) on strata's rotated GGUF: its logits must match strata's engine on
the same file, and the rotated model must compute what the unrotated (norms folded) one computes.

Usage: rotate_llama_cpp.py ROTATED.gguf FOLDED.gguf STRATA_LOGITS.bin
STRATA_LOGITS.bin: int32 n, int32 vocab, n int32 token ids, n x vocab float32 logits (strata rotate
--check-out). Prints the figures; exits 1 when a check fails."""
import sys

import numpy as np
from llama_cpp import Llama


def llama_logits(path, tokens):
    # An F32 KV cache (type 0): llama.cpp's default F16 cache alone moves logits by ~1e-3.
    llm = Llama(model_path=path, n_ctx=max(64, len(tokens)), n_batch=len(tokens), logits_all=True,
                n_threads=2, type_k=0, type_v=0, verbose=False)
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float64)


def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def kl(p_logits, q_logits):
    p = p_logits - p_logits.max(axis=1, keepdims=True)
    q = q_logits - q_logits.max(axis=1, keepdims=True)
    lp = p - np.log(np.exp(p).sum(axis=1, keepdims=True))
    lq = q - np.log(np.exp(q).sum(axis=1, keepdims=True))
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1)))


def main():
    rotated, folded, strata_bin = sys.argv[1:4]
    raw = np.fromfile(strata_bin, dtype=np.int32)
    n, vocab = int(raw[0]), int(raw[1])
    tokens = [int(t) for t in raw[2 : 2 + n]]
    strata = raw[2 + n :].view(np.float32).astype(np.float64).reshape(n, vocab)
    lr = llama_logits(rotated, tokens)
    lf = llama_logits(folded, tokens)
    r_rot = rel(lf, lr)
    r_eng = rel(lr, strata)
    k_eng = kl(lr, strata)
    top1 = float(np.mean(lr.argmax(axis=1) == strata.argmax(axis=1)))
    print(f"llama.cpp rotated vs unrotated (folded) F32: max |diff| / max |logit| = {r_rot:.3g} on {n} tokens")
    print(f"llama.cpp vs strata on the rotated file: max |diff| / max |logit| = {r_eng:.3g}, "
          f"mean KL {k_eng:.3g}, top-1 agreement {top1:.3f}")
    ok = r_rot < 1e-4 and k_eng < 1e-3 and top1 >= 0.99
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
