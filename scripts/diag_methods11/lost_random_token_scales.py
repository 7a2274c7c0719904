# Would random token ids (no text at all) reveal LOST's channel scales? Log-correlation of the
# per-channel input energy on 4x512 uniformly random token ids with the calibration Gram's
# diagonal (bench_out/diag_grams.pt from grams.py 1,8,15,23), per target linear.
import torch
from _random_tokens import random_token_grams
from compressor.models import load_model
torch.set_num_threads(1)
d = torch.load("bench_out/diag_grams.pt")
model, tok, _ = load_model("smollm2-135m", dtype="float32")
sq = {n: g.diagonal() for n, g in random_token_grams(model, (1, 8, 15, 23)).items()}
def corr(a, b):
    a = a.clamp_min(1e-12).log(); b = b.clamp_min(1e-12).log(); a = a - a.mean(); b = b - b.mean()
    return float((a*b).sum() / (a.norm()*b.norm()))
for n in sq:
    real = d["grams"][n].diagonal()
    print(n, "logcorr %.2f" % corr(sq[n], real))
