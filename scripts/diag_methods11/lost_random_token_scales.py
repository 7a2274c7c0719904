# Would random token ids (no text at all) reveal LOST's channel scales? Log-correlation of the
# per-channel input energy on 4x512 uniformly random token ids with the calibration Gram's
# diagonal (bench_out/diag_grams.pt from grams.py 1,8,15,23), per target linear.
import torch
from compressor.models import load_model, decoder_layers, target_linears
torch.set_num_threads(1)
d = torch.load("bench_out/diag_grams.pt")
model, tok, _ = load_model("smollm2-135m", dtype="float32")
_, layers = decoder_layers(model)
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, model.config.vocab_size, (4, 512), generator=g)
sq = {}
hooks = []
for i in (1, 8, 15, 23):
    for rel, lin in target_linears(layers[i]).items():
        name = f"{i}.{rel}"
        def hook(mod, args, out, name=name):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sq[name] = sq.get(name, 0) + x.pow(2).sum(0)
        hooks.append(lin.register_forward_hook(hook))
with torch.no_grad():
    for b in range(4): model(ids[b:b+1], use_cache=False)
def corr(a, b):
    a = a.clamp_min(1e-12).log(); b = b.clamp_min(1e-12).log(); a = a - a.mean(); b = b - b.mean()
    return float((a*b).sum() / (a.norm()*b.norm()))
for n in sq:
    real = d["grams"][n].diagonal()
    print(n, "logcorr %.2f" % corr(sq[n], real))
