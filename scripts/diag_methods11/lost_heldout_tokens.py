# Does activation-aware LOST overfit a small calibration set? Grams of layers argv[1] from two
# disjoint halves of the calibration windows (A: windows 0..k-1, B: k..2k-1, seqlen argv[2]);
# every fit uses A only and is scored on A and on B (relative output error), for whitened SVD
# and LOST whiten with several candidate grids, at ratio argv[3].
import sys
import torch
from compressor.data import calibration_windows
from compressor.models import decoder_layers, load_model, target_linears
from compressor.methods.lost.decompose import lost_split
from compressor.methods.lost.sizing import lost_sizes
from compressor.primitives.linalg import whitening
torch.set_num_threads(2)
keep = [int(x) for x in sys.argv[1].split(",")]
seqlen = int(sys.argv[2]); ratio = float(sys.argv[3]); k = int(sys.argv[4]) if len(sys.argv) > 4 else 4
model, tok, _ = load_model("smollm2-135m", dtype="float32")
win = calibration_windows(tok, "builtin", 2 * k, seqlen, 0)
_, layers = decoder_layers(model)
grams = {}
cur = {"half": 0}
for i in keep:
    for rel, lin in target_linears(layers[i]).items():
        name = f"{i}.{rel}"
        def hook(mod, args, out, name=name):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            key = (name, cur["half"])
            grams[key] = grams.get(key, 0) + x.T @ x
        lin.register_forward_hook(hook)
with torch.no_grad():
    for w in range(win.shape[0]):
        cur["half"] = 0 if w < k else 1
        model(win[w:w + 1], use_cache=False)
W = {f"{i}.{rel}": lin.weight.detach().double() for i in keep for rel, lin in target_linears(layers[i]).items()}
grids = {"rank": [0.0], "0,.9": [0.0, 0.9], "0,.99": [0.0, 0.99],
         "all": [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99]}
tot = {}
for n, w in W.items():
    m, kk = w.shape
    GA, GB = grams[(n, 0)], grams[(n, 1)]
    L, _ = whitening(GA.float(), 0.01)
    res = {}
    for g, fr in grids.items():
        sizes = sorted({lost_sizes(m, kk, ratio, f, None, 2) for f in fr}, key=lambda x: x[1])
        (A, B, ch, cols), info = lost_split(w, sizes, L, 1)
        ap = B @ A
        ap[:, ch] += cols
        d = w - ap
        e = lambda G: float(((d @ G) * d).sum() / ((w @ G) * w).sum()) ** .5
        res[g] = (round(e(GA), 3), round(e(GB), 3), info["channels"])
        tot[g] = (tot.get(g, (0, 0))[0] + e(GA), tot.get(g, (0, 0))[1] + e(GB))
    print(n, res, flush=True)
print({g: (round(a / len(W), 4), round(b / len(W), 4)) for g, (a, b) in tot.items()})
