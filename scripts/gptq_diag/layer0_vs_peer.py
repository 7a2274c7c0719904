"""Layer-0 diagnostic: svdc's GPTQ vs llm-compressor's on identical inputs (embeddings are not quantized)."""
import torch
from safetensors.torch import load_file

from compressor.core.layer_io import capture_inputs, run_layer
from compressor.core.stats import LayerStatsCollector
from compressor.methods.gptq.solver import gptq_quantize
from compressor.models import decoder_layers, load_model, target_linears
from compressor.primitives.grids import dequantize, quantize_rtn

torch.set_num_threads(1)
model, tok, _ = load_model("smollm2-135m", dtype="float32")
model.eval()
windows = load_file("/tmp/gq/calib_windows.safetensors")["input_ids"]
path, layers = decoder_layers(model)
hidden, kws = capture_inputs(model, layers, windows, torch.device("cpu"))
layer = layers[0]
targets = target_linears(layer)
with LayerStatsCollector(targets, True, False) as c:
    for x in hidden:
        c.new_call(); run_layer(layer, x, kws[0])
st = c.stats()
peer = load_file("/tmp/gq/llmc-dense/model.safetensors")
torch.save({"hidden": hidden, "kws": kws, "stats": {k: v.gram for k, v in st.items()}}, "/tmp/gq/layer0.pt")
for rel, lin in targets.items():
    W = lin.weight.detach().float(); G = st[rel].gram
    P = peer[f"{path}.0.{rel}.weight"].float()
    def oerr(Wh): d = W - Wh; return float(((d @ G) * d).sum() / ((W @ G) * W).sum()) ** .5
    res = {"peer": oerr(P)}
    for name, kw in [("exact", {}), ("lazy", {"grid": "block-lazy"}), ("static", {"static_groups": True}), ("static_ao", {"act_order": True}), ("exact_mse", {"mse_grid": 100}), ("static_mse", {"static_groups": True, "mse_grid": 100})]:
        q, _ = gptq_quantize(W, G, 3, 64, **kw)
        Wq = dequantize(q)
        res[name] = oerr(Wq); res[name + "_eqpeer"] = float((Wq - P).abs().gt(1e-4).float().mean())
    rtn = dequantize(quantize_rtn(W, 3, 64)); res["rtn"] = oerr(rtn)
    print(rel, {k: round(v, 5) for k, v in res.items()}, flush=True)
