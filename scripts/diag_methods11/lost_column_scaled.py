# Data-free LOST on column-normalized weights: the fit minimizes sum_j |dW[:, j]|^2 / |W[:, j]|^(2a)
# (a = 1: every input channel's relative error counts the same, the objective that is invariant
# to the rescaling a preceding norm gain or v/up projection can absorb). Against plain SVD and
# unscaled data-free LOST at ratio 0.1 / 0.2, scored by each linear's relative output error on the
# calibration Gram. Needs bench_out/diag_grams.pt (grams.py 1,8,15,23).
import sys
import torch
from compressor.methods.lost.decompose import lost_split
from compressor.methods.lost.sizing import lost_sizes
from compressor.methods.lost.config import LOSTConfig
torch.set_num_threads(2)
ratio = float(sys.argv[1]) if len(sys.argv) > 1 else 0.1
alphas = [float(a) for a in (sys.argv[2].split(",") if len(sys.argv) > 2 else ["0", "0.5", "1"])]
d = torch.load("bench_out/diag_grams.pt")
fr = LOSTConfig().sparse_fracs
tot = {}
for n in d["W"]:
    W = d["W"][n].double(); G = d["grams"][n].double(); m, k = W.shape
    oerr = lambda D: float(((D @ G) * D).sum() / ((W @ G) * W).sum()) ** .5
    res = {}
    r = lost_sizes(m, k, ratio, 0, None, 2)[0]
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    res["svd"] = (oerr(W - (u[:, :r] * s[:r]) @ vh[:r]), 0)
    sizes = sorted({lost_sizes(m, k, ratio, f, None, 2) for f in fr}, key=lambda x: x[1])
    cn = torch.linalg.vector_norm(W, dim=0).clamp_min(1e-12)
    for a in alphas:
        D = cn ** a
        M = W / D
        (A, B, ch, cols), info = lost_split(M, sizes, None, 1)
        approx = B @ A
        approx[:, ch] += cols
        approx = approx * D
        res[f"a{a}"] = (oerr(W - approx), info["channels"])
        if a != 0:
            (A, B, ch, cols), info = lost_split(M, [sizes[0]], None, 1)
            res[f"svd-a{a}"] = (oerr(W - (B @ A) * D), 0)
    for key in res: tot[key] = tot.get(key, 0) + res[key][0]
    print(n, {k: (round(v[0], 3), v[1]) for k, v in res.items()}, flush=True)
print({k: round(v / len(d["W"]), 4) for k, v in tot.items()})
