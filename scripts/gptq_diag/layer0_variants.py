import sys

import torch
from safetensors.torch import load_file

from compressor.methods.gptq.solver import gptq_quantize
from compressor.models import decoder_layers, load_model, target_linears
from compressor.primitives.grids import dequantize

torch.set_num_threads(1)
model, tok, _ = load_model("smollm2-135m", dtype="float32")
path, layers = decoder_layers(model)
d = torch.load("/tmp/gq/layer0.pt", weights_only=False)
peer = load_file("/tmp/gq/llmc-dense/model.safetensors")
variants = [("static", {"static_groups": True}), ("ao", {"act_order": True}),
            ("ao_mse", {"act_order": True, "mse_grid": 100}),
            ("ao_mseW", {"act_order": True, "mse_grid": 100, "mse_weighted": True}),
            ("ao_mseW2", {"act_order": True, "mse_grid": 100, "mse_weighted": True, "mse_norm": 2.0}),
            ("ao_mseW_s20", {"act_order": True, "mse_grid": 50, "mse_maxshrink": 0.2, "mse_weighted": True}),
            ("exact_mseW", {"mse_grid": 100, "mse_weighted": True}),
            ("ao_sym", {"act_order": True, "sym": True}),
            ("ao_d0.1", {"act_order": True, "percdamp": 0.1}),
            ("ao_d0.001", {"act_order": True, "percdamp": 0.001})]
tot = {}
for rel, lin in target_linears(layers[0]).items():
    W = lin.weight.detach().float(); G = d["stats"][rel]
    P = peer[f"{path}.0.{rel}.weight"].float()
    def oerr(Wh): dd = W - Wh; return float(((dd @ G) * dd).sum() / ((W @ G) * W).sum()) ** .5
    res = {"peer": oerr(P)}
    for name, kw in variants:
        q, _ = gptq_quantize(W, G, int(sys.argv[1]), int(sys.argv[2]), **kw)
        res[name] = oerr(dequantize(q))
    for k, v in res.items(): tot[k] = tot.get(k, 0) + v / 7
    print(rel.split(".")[-1], " ".join(f"{k}={v:.4f}" for k, v in res.items()), flush=True)
print("MEAN", " ".join(f"{k}={v:.4f}" for k, v in tot.items()))
