"""GPTQ time for one SmolLM2 layer (layer 0's real weights and Grams), old vs new code."""
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, "/tmp/gq")
import old_quant

from compressor.core.registry import get_method
from compressor.core.types import LinearStats, Target
from compressor.models import decoder_layers, load_model, target_linears

torch.set_num_threads(1)
model, tok, _ = load_model("smollm2-135m", dtype="float32")
_, layers = decoder_layers(model)
d = torch.load("/tmp/gq/layer0.pt", weights_only=False)
lin = {k: v.weight.detach().float() for k, v in target_linears(layers[0]).items()}
grams = d["stats"]           # q/k/v (and gate/up) hold the same tensor object
def cpu(): r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
def old():
    for k, W in lin.items(): old_quant.gptq_quantize(W, grams[k], 3, 64)
def method(cfg):
    m = get_method("gptq")(); c = m.Config(bits=3, group_size=64, **cfg)
    for k, W in lin.items():
        m.compress(Target(name=k, layer_index=0, kind=k, weight=W, bias=None, stats=LinearStats(ntokens=4096, gram=grams[k]),
                          generator=torch.Generator(), dtype=torch.float32), c)
paper = dict(act_order=False, mse_grid=0, mse_weighted=False, static_groups=False)
runs = {"old code (paper, exact grid)": old,
        "new code, paper exact grid": lambda: method(paper),
        "new code, static groups (peer)": lambda: method({**paper, "static_groups": True}),
        "new code, act-order": lambda: method({**paper, "act_order": True}),
        "new code, act-order + weighted MSE grid (10)": lambda: method({**paper, "act_order": True, "mse_grid": 50, "mse_maxshrink": 0.2, "mse_weighted": True})}
out = {}
for name, fn in runs.items():
    best_w, best_c = 1e9, 1e9
    for _ in range(3):
        c0, t0 = cpu(), time.perf_counter(); fn(); best_w = min(best_w, time.perf_counter() - t0); best_c = min(best_c, cpu() - c0)
    out[name] = {"wall_s": round(best_w, 3), "cpu_s": round(best_c, 3)}
    print(name, out[name], flush=True)
print(json.dumps({"layer0_7_linears": out, "loadavg": os.getloadavg()}))
