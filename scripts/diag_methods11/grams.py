# Collect original-model Grams (fp32) of every target linear's input on the 8x512 calib windows; save per layer subset.
import sys

import torch

from compressor.data import calibration_windows
from compressor.models import decoder_layers, load_model, target_linears

torch.set_num_threads(1)
model, tok, _ = load_model("smollm2-135m", dtype="float32")
win = calibration_windows(tok, "builtin", 8, 512, 0)
lp, layers = decoder_layers(model)
keep = [int(x) for x in sys.argv[1].split(",")]
grams = {}
hooks = []
for i in keep:
    for rel, lin in target_linears(layers[i]).items():
        name = f"{i}.{rel}"
        def hook(mod, args, out, name=name):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            g = x.T @ x
            grams[name] = g if name not in grams else grams[name] + g
        hooks.append(lin.register_forward_hook(hook))
with torch.no_grad():
    for w in range(win.shape[0]):
        model(win[w:w+1], use_cache=False)
W = {f"{i}.{rel}": lin.weight.detach().float().clone() for i in keep for rel, lin in target_linears(layers[i]).items()}
torch.save({"grams": grams, "W": W}, "bench_out/diag_grams.pt")
print(len(grams))
