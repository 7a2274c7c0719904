# Why data-free LOST's channel end hurts: the input channels it drops (smallest weight-column
# norms) carry far more of the output energy sum_j ||W[:, j]||^2 G_jj than of the weight energy.
# Per target linear: log-correlation of column norm with input norm, and both shares for the
# 10% smallest columns. Needs bench_out/diag_grams.pt (grams.py 1,8,15,23).
import torch

d = torch.load("bench_out/diag_grams.pt")


def corr(a, b):
    a = a.clamp_min(1e-12).log(); b = b.clamp_min(1e-12).log(); a = a - a.mean(); b = b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


for n in d["W"]:
    W = d["W"][n].double(); act = d["grams"][n].diagonal().double().sqrt()
    cn = W.norm(dim=0)
    k = int(0.1 * W.shape[1]); idx = torch.argsort(cn)[:k]
    e = (W.pow(2) * act.pow(2)).sum(0)
    print(n, "logcorr(colnorm, act) %.2f" % corr(cn, act),
          " output-energy share of the 10%% smallest columns %.3f (weight share %.3f)"
          % (float(e[idx].sum() / e.sum()), float(cn[idx].pow(2).sum() / cn.pow(2).sum())))
