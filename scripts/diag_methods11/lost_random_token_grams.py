# LOST with no text at all: input statistics from the model's response to uniformly random token
# ids (4x512), used (a) as a diagonal channel scale (fit on W·diag(s), undone) or (b) as a full
# whitening Gram. Scored by each linear's relative output error on the real calibration Gram
# (bench_out/diag_grams.pt from grams.py 1,8,15,23) against plain SVD, at ratio argv[1].
import sys
import torch
from _random_tokens import random_token_grams
from compressor.models import load_model
from compressor.methods.lost.decompose import lost_split
from compressor.methods.lost.sizing import lost_sizes
from compressor.methods.lost.config import LOSTConfig
from compressor.primitives.linalg import whitening
torch.set_num_threads(2)
ratio = float(sys.argv[1]) if len(sys.argv) > 1 else 0.1
d = torch.load("bench_out/diag_grams.pt")
model, tok, _ = load_model("smollm2-135m", dtype="float32")
rg = random_token_grams(model, (1, 8, 15, 23))
fr = LOSTConfig().sparse_fracs
tot = {}
def approx_of(A, B, ch, cols):
    ap = B @ A
    ap[:, ch] += cols
    return ap
for n in d["W"]:
    W = d["W"][n].double(); G = d["grams"][n].double(); m, k = W.shape
    oerr = lambda D: float(((D @ G) * D).sum() / ((W @ G) * W).sum()) ** .5
    sizes = sorted({lost_sizes(m, k, ratio, f, None, 2) for f in fr}, key=lambda x: x[1])
    res = {}
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    r = sizes[0][0]
    res["svd"] = (oerr(W - (u[:, :r] * s[:r]) @ vh[:r]), 0)
    sc = rg[n].diagonal().clamp_min(1e-12).sqrt()
    out, info = lost_split(W * sc, sizes, None, 1)
    res["diag"] = (oerr(W - approx_of(*out) / sc), info["channels"])
    out, info = lost_split(W * sc, [sizes[0]], None, 1)
    res["diag-r"] = (oerr(W - approx_of(*out) / sc), 0)
    L, _ = whitening(rg[n].float(), 0.01)
    out, info = lost_split(W, sizes, L, 1)
    res["gram"] = (oerr(W - approx_of(*out)), info["channels"])
    out, info = lost_split(W, [sizes[0]], L, 1)
    res["gram-r"] = (oerr(W - approx_of(*out)), 0)
    for key in res: tot[key] = tot.get(key, 0) + res[key][0]
    print(n, {k: (round(v[0], 3), v[1]) for k, v in res.items()}, flush=True)
print({k: round(v / len(d["W"]), 4) for k, v in tot.items()})
