import time

import torch

from compressor.methods.lost.decompose import lost_split
from compressor.methods.lost.sizing import lost_sizes
from compressor.primitives.linalg import whitening

torch.set_num_threads(1)
d = torch.load("bench_out/diag_grams.pt")
for name in ["8.self_attn.q_proj","8.self_attn.k_proj","8.mlp.down_proj","1.mlp.down_proj","15.self_attn.o_proj"]:
    W = d["W"][name]; G=d["grams"][name]; m,n=W.shape
    for ratio in [0.1,0.2]:
        sizes = sorted({lost_sizes(m,n,ratio,f,None,4) for f in [0,0.05,0.1,0.2]}, key=lambda x:x[1])
        t=time.time()
        _, info = lost_split(W, sizes, None, 1)
        L,_ = whitening(G)
        _, winfo = lost_split(W, sizes, L, 1)
        ref = float(W.double().pow(2).sum()); refo = float((W.double()@L.double()).pow(2).sum())
        print(name, ratio, round(time.time()-t,1), "free", {k: round((v/ref)**.5,4) for k,v in info["errors"].items()}, "white", {k: round((v/refo)**.5,4) for k,v in winfo["errors"].items()}, flush=True)
