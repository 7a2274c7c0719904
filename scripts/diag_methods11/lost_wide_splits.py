# LOST's error for every split in the default grid (rank-only, then 25%..99% of the budget on
# channels), relative to the matrix's own norm (data-free: ||W||; whiten: ||W L||), on the
# current code. Needs bench_out/diag_grams.pt (grams.py). Usage: lost_wide_splits.py NAMES [free]
import time, torch, sys
from compressor.methods.lost.decompose import lost_split
from compressor.methods.lost.sizing import lost_sizes
from compressor.methods.lost.config import LOSTConfig
from compressor.primitives.linalg import whitening
torch.set_num_threads(2)
d = torch.load("bench_out/diag_grams.pt")
fr = LOSTConfig().sparse_fracs
for name in sys.argv[1].split(","):
    W=d["W"][name]; G=d["grams"][name]; m,n=W.shape; L,_=whitening(G)
    if len(sys.argv) > 2: L = None
    for ratio in [0.1,0.2]:
        sizes=sorted({lost_sizes(m,n,ratio,f,None,4) for f in fr}, key=lambda x:x[1])
        t=time.time(); _,info=lost_split(W,sizes,L,1); dt=time.time()-t
        ref=float(W.double().pow(2).sum()) if L is None else float((W.double()@L.double()).pow(2).sum())
        print(name,ratio,f"{dt:.1f}s", {k: round((v/ref)**.5,4) for k,v in info["errors"].items()},flush=True)
