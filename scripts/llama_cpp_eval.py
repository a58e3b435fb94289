#!/usr/bin/env python3
"""llama.cpp's own quantizer and forward pass on GGUF files, so that any strata figure can be read from
llama.cpp. Run with the python of scripts/install-llama-cpp.sh (llama-cpp-python + gguf). Commands:

  quantize --model IN.gguf --out OUT.gguf --type Q3_K_M [--imatrix FILE.dat] [--allow-requantize]
      llama-quantize's C API (llama_model_quantize) writes IN at the llama.cpp file type; --imatrix takes
      llama.cpp's imatrix file (the legacy .dat layout: per entry the name, the call count and the
      per-column sums of x^2 over those calls).
  types --model FILE.gguf
      one JSON object {tensor name: ggml type name} from gguf's reader.
  logits --model FILE.gguf --tokens IDS.txt --out LOGITS.f32
      llama.cpp's logits for every position of the token ids (whitespace separated), one forward pass
      with logits for all positions, written as float32 [tokens, vocab].
  compare --model FILE.gguf --tokens IDS.txt --reference-logits REF.f32 [--dequantize]
      mean KL(reference || llama.cpp) per position, the largest, and the top-1 agreement, as JSON.
      llama.cpp multiplies quantized weights with activations it quantizes too (Q8_0 / Q8_K blocks);
      --dequantize has llama.cpp's own dequantizer turn FILE into float32 first (a temporary file),
      so that the forward pass sees exactly the weights FILE holds with float32 activations.
  eval --model FILE.gguf --reference REF.gguf --text FILE --slice 0.9:1.0 [--eval-tokens 2048] [--context 512]
      perplexity of both files and mean KL(reference || model) on windows of `context` tokens of a text
      slice (fractions of the file's bytes, both ends moved to the start of a line, as strata's
      TextSlice does), tokenized by llama.cpp's tokenizer (no BOS), both read by llama.cpp's forward pass.
Prints one JSON object on stdout; diagnostics on stderr."""
import argparse
import ctypes
import json
import struct
import sys

import numpy as np

import llama_cpp

FILE_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12,
              "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25,
              "IQ4_XS": 30}


def fail(msg):
    print("llama_cpp_eval: " + msg, file=sys.stderr)
    sys.exit(2)


# ---- quantize ----

def read_imatrix(path):
    """llama.cpp's legacy imatrix file -> {name: mean x^2 per column}."""
    data = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        n = struct.calcsize(fmt)
        if pos + n > len(data):
            fail("%s: truncated at byte %d" % (path, pos))
        v = struct.unpack_from(fmt, data, pos)
        pos += n
        return v

    (n_entries,) = take("<i")
    if n_entries <= 0 or n_entries > 1 << 20:
        fail("%s: bad entry count %d" % (path, n_entries))
    out = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        if length <= 0 or pos + length > len(data):
            fail("%s: bad name length %d at byte %d" % (path, length, pos))
        name = data[pos:pos + length].decode()
        pos += length
        ncall, nval = take("<ii")
        if ncall <= 0 or nval <= 0:
            fail("%s: entry '%s': %d calls, %d values" % (path, name, ncall, nval))
        values = np.array(take("<%df" % nval), dtype=np.float32) / np.float32(ncall)
        out[name] = values
    return out


def quantize(a):
    if a.type not in FILE_TYPES:
        fail("--type %s: known llama.cpp file types: %s" % (a.type, " ".join(FILE_TYPES)))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[a.type]
    params.nthread = a.threads
    params.allow_requantize = a.allow_requantize
    keep = []
    if a.imatrix:
        im = read_imatrix(a.imatrix)
        entry = llama_cpp.llama_model_imatrix_data
        arr = (entry * (len(im) + 1))()
        for i, (name, values) in enumerate(sorted(im.items())):
            buf = np.ascontiguousarray(values, dtype=np.float32)
            keep.append((name.encode(), buf))
            arr[i].name = keep[-1][0]
            arr[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = buf.size
        arr[len(im)].name = None
        keep.append(arr)
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(entry))
    rc = llama_cpp.llama_model_quantize(a.model.encode(), a.out.encode(), ctypes.byref(params))
    if rc != 0:
        fail("llama_model_quantize %s -> %s (%s) returned %d" % (a.model, a.out, a.type, rc))
    return {"model": a.model, "out": a.out, "type": a.type, "imatrix": a.imatrix or None}


# ---- types ----

def types(a):
    import gguf
    r = gguf.GGUFReader(a.model)
    return {t.name: t.tensor_type.name for t in r.tensors}


# ---- logits ----

def load(path, n_ctx, threads):
    # Keys and values cached in float32 (type 0), not llama.cpp's default float16.
    return llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                           n_threads=threads, n_threads_batch=threads, type_k=0, type_v=0, verbose=False)


def window_logits(llm, tokens):
    llm.reset()
    llm.eval(list(tokens))
    return np.array(llm.scores[:len(tokens)], dtype=np.float32)


def read_tokens(path):
    ids = [int(t) for t in open(path).read().split()]
    if not ids:
        fail("%s: no token ids" % path)
    return ids


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def kl_stats(ref_logits, logits):
    lp, lq = log_softmax(ref_logits), log_softmax(logits)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    top1 = (ref_logits.argmax(axis=-1) == logits.argmax(axis=-1)).mean()
    return {"positions": int(kl.size), "mean_kl": float(kl.mean()), "max_kl": float(kl.max()),
            "p99_kl": float(np.quantile(kl, 0.99)), "top1_agreement": float(top1)}


def logits(a):
    ids = read_tokens(a.tokens)
    llm = load(a.model, len(ids), a.threads)
    if max(ids) >= llm.n_vocab():
        fail("%s: token id %d beyond the model's vocabulary of %d" % (a.tokens, max(ids), llm.n_vocab()))
    out = window_logits(llm, ids)
    out.tofile(a.out)
    return {"model": a.model, "tokens": len(ids), "vocab": int(out.shape[1]), "out": a.out}


def dequantized_copy(path, threads):
    """FILE as float32 by llama.cpp's own dequantizer (llama_model_quantize to ALL_F32)."""
    import os
    import tempfile
    fd, out = tempfile.mkstemp(suffix=".f32.gguf", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 0  # LLAMA_FTYPE_ALL_F32
    params.nthread = threads
    params.allow_requantize = True
    if llama_cpp.llama_model_quantize(path.encode(), out.encode(), ctypes.byref(params)) != 0:
        os.remove(out)
        fail("%s: llama.cpp could not dequantize it to float32" % path)
    return out


def compare(a):
    import os
    ids = read_tokens(a.tokens)
    path = dequantized_copy(a.model, a.threads) if a.dequantize else a.model
    try:
        llm = load(path, len(ids), a.threads)
    finally:
        if path != a.model:
            os.remove(path)
    vocab = llm.n_vocab()
    ref = np.fromfile(a.reference_logits, dtype=np.float32)
    if ref.size != len(ids) * vocab:
        fail("%s: %d floats, expected %d tokens x %d vocabulary" % (a.reference_logits, ref.size, len(ids), vocab))
    res = kl_stats(ref.reshape(len(ids), vocab), window_logits(llm, ids))
    res["model"] = a.model
    res["weights"] = "dequantized to float32 by llama.cpp" if a.dequantize else "as stored"
    return res


# ---- eval ----

def slice_text(path, spec):
    try:
        b, e = (float(x) for x in spec.split(":"))
    except ValueError:
        fail("--slice '%s': expected BEGIN:END fractions" % spec)
    if not (0 <= b < e <= 1):
        fail("--slice '%s': need 0 <= BEGIN < END <= 1" % spec)
    data = open(path, "rb").read()

    def line_start(frac):
        p = int(frac * len(data))
        if p == 0 or p >= len(data):
            return min(p, len(data))
        nl = data.find(b"\n", p - 1)
        return len(data) if nl < 0 else nl + 1

    return data[line_start(b):line_start(e)].decode("utf-8", errors="replace")


def evaluate(a):
    text = slice_text(a.text, a.slice)
    ref = load(a.reference, a.context, a.threads)
    ids = ref.tokenize(text.encode(), add_bos=False, special=False)[: a.eval_tokens]
    n_win = len(ids) // a.context
    if n_win == 0:
        fail("%s %s: %d tokens, fewer than one window of %d" % (a.text, a.slice, len(ids), a.context))
    ref_logits = [window_logits(ref, ids[w * a.context:(w + 1) * a.context]) for w in range(n_win)]
    del ref
    llm = load(a.model, a.context, a.threads)

    def nll(lg, win):
        lp = log_softmax(lg[:-1])
        return -lp[np.arange(len(win) - 1), np.array(win[1:])]

    kls, top1, nll_m, nll_r = [], [], [], []
    for w in range(n_win):
        win = ids[w * a.context:(w + 1) * a.context]
        lg = window_logits(llm, win)
        s = kl_stats(ref_logits[w], lg)
        kls.append(s["mean_kl"] * s["positions"])
        top1.append(s["top1_agreement"] * s["positions"])
        nll_m.append(nll(lg, win))
        nll_r.append(nll(ref_logits[w], win))
    n = n_win * a.context
    return {"model": a.model, "reference": a.reference, "text": "%s %s" % (a.text, a.slice), "tokens": n,
            "context": a.context, "mean_kl": sum(kls) / n, "top1_agreement": sum(top1) / n,
            "perplexity": float(np.exp(np.concatenate(nll_m).mean())),
            "reference_perplexity": float(np.exp(np.concatenate(nll_r).mean())),
            "engine": "llama.cpp (llama-cpp-python %s)" % llama_cpp.__version__}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quantize")
    q.add_argument("--model", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--type", required=True)
    q.add_argument("--imatrix")
    q.add_argument("--allow-requantize", action="store_true")
    t = sub.add_parser("types")
    t.add_argument("--model", required=True)
    lg = sub.add_parser("logits")
    lg.add_argument("--model", required=True)
    lg.add_argument("--tokens", required=True)
    lg.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--model", required=True)
    c.add_argument("--tokens", required=True)
    c.add_argument("--reference-logits", required=True)
    c.add_argument("--dequantize", action="store_true")
    e = sub.add_parser("eval")
    e.add_argument("--model", required=True)
    e.add_argument("--reference", required=True)
    e.add_argument("--text", required=True)
    e.add_argument("--slice", default="0.9:1.0")
    e.add_argument("--eval-tokens", type=int, default=2048)
    e.add_argument("--context", type=int, default=512)
    for p in (q, lg, c, e):
        p.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.cmd != "types":
        llama_cpp.llama_backend_init()
    res = {"quantize": quantize, "types": types, "logits": logits, "compare": compare, "eval": evaluate}[a.cmd](a)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
