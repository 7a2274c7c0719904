import torch

from compressor.methods.lost.decompose import lost_split
from compressor.methods.lost.sizing import lost_sizes
from compressor.primitives.linalg import whitening

torch.set_num_threads(1)
d = torch.load("bench_out/diag_grams.pt")
for name in ["1.mlp.down_proj","8.self_attn.v_proj","25.mlp.down_proj", "1.self_attn.q_proj"]:
    W = d["W"][name]; G=d["grams"][name]; m,n=W.shape
    sizes = sorted({lost_sizes(m,n,0.2,f,None,4) for f in [0,0.002,0.005,0.01,0.02]}, key=lambda x:x[1])
    L,_ = whitening(G)
    _, winfo = lost_split(W, sizes, L, 1)
    refo = float((W.double()@L.double()).pow(2).sum())
    print(name, "white", {k: round((v/refo)**.5,5) for k,v in winfo["errors"].items()}, flush=True)
    _, info = lost_split(W, sizes, None, 1)
    ref = float(W.double().pow(2).sum())
    print(name, "free", {k: round((v/ref)**.5,5) for k,v in info["errors"].items()}, flush=True)
