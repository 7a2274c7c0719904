# Data-free LOST on output channels (whole rows of W: input-channel LOST on W^T) against
# input channels and plain SVD, ratio 0.1, scored by each linear's relative output error on the
# calibration Gram. Needs bench_out/diag_grams.pt (grams.py 1,8,15,23).
import torch
from compressor.methods.lost.decompose import lost_split
from compressor.methods.lost.sizing import lost_sizes
from compressor.methods.lost.config import LOSTConfig
torch.set_num_threads(2)
d = torch.load("bench_out/diag_grams.pt")
fr = LOSTConfig().sparse_fracs
tot = {"svd": 0, "cols": 0, "rows": 0}
for n in d["W"]:
    W = d["W"][n].double(); G = d["grams"][n].double(); m, k = W.shape
    oerr = lambda D: float(((D @ G) * D).sum() / ((W @ G) * W).sum()) ** .5
    res = {}
    for mode in ("cols", "rows"):
        M = W if mode == "cols" else W.T
        mm, kk = M.shape
        sizes = sorted({lost_sizes(mm, kk, 0.1, f, None, 2) for f in fr}, key=lambda x: x[1])
        (A, B, ch, cols), info = lost_split(M, sizes, None, 1)
        approx = B @ A
        approx[:, ch] += cols
        if mode == "rows": approx = approx.T
        res[mode] = (oerr(W - approx), info["channels"])
    r = lost_sizes(m, k, 0.1, 0, None, 2)[0]
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    res["svd"] = (oerr(W - (u[:, :r] * s[:r]) @ vh[:r]), 0)
    for key in tot: tot[key] += res[key][0]
    print(n, {k: (round(v[0], 3), v[1]) for k, v in res.items()}, flush=True)
print({k: round(v / len(d["W"]), 4) for k, v in tot.items()})
