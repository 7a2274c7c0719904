"""GPTQ solver timing and a codes snapshot: time gptq_quantize on a 1536x576 matrix (4 bit g128,
4096-token Gram, seed 0) and save the codes of five variants to compare two code states.

    OMP_NUM_THREADS=1 python scripts/bench_gptq_loop.py /tmp/codes-before.pt
"""
import time, torch, sys
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from compressor.methods.gptq.solver import gptq_quantize, prepare_hessian, gptq_round
torch.manual_seed(0)
w = torch.randn(1536, 576); x = torch.randn(4096, 576); g = x.T @ x
out = {}
for name, kw in [("plain", {}), ("act", {"act_order": True}), ("mask", {"mask": torch.rand(1536, 576) < 0.01}), ("lazy", {"grid": "block-lazy"})]:
    q, _ = gptq_quantize(w, g, 4, 128, **kw)
    out[name] = q.codes.clone()
h = prepare_hessian(g)
r = gptq_round(w, h, lambda j, x: (torch.round(x*4).clamp(-8,7).add(8).to(torch.uint8), torch.round(x*4).clamp(-8,7)/4))
out["round"] = r
torch.save(out, sys.argv[1])
ts = []
for _ in range(5):
    t = time.perf_counter(); gptq_quantize(w, g, 4, 128); ts.append(time.perf_counter() - t)
print("gptq 1536x576 best of 5: %.3f s" % min(ts))
