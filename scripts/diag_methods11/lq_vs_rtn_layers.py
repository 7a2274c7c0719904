import torch

from compressor.core.measures import relative_output_error
from compressor.methods.lqlora.budget import NFConfig, config_bits, nf_quantizer
from compressor.methods.lqlora.decompose import lq_decompose
from compressor.primitives.grids import dequantize, quantize_rtn
from compressor.primitives.linalg import whitening

torch.set_num_threads(1)
d = torch.load("bench_out/diag_grams.pt")
for name, W in d["W"].items():
    G = d["grams"][name]
    L,_ = whitening(G, 0.01)
    m,n = W.shape
    rtn = dequantize(quantize_rtn(W, 3, 64, sym=False))
    row = {"rtn3g64": relative_output_error(W-rtn, W, G)}
    for c in [NFConfig(3,64), NFConfig(3,256), NFConfig(3,512), NFConfig(2,64), NFConfig(4,128)]:
        from compressor.primitives.grids import dequantize_nf
        q,a,b,info = lq_decompose(W, 8, nf_quantizer(c), max_iters=3, svd_method="randomized", whiten=L)
        row[f"{c.bits}b{c.block_size}w"] = relative_output_error(W-dequantize_nf(q)-b@a, W, G)
        if c.bits==3 and c.block_size==256:
            q,a,b,info = lq_decompose(W, 8, nf_quantizer(c), max_iters=3, svd_method="randomized")
            row["3b256plain"] = relative_output_error(W-dequantize_nf(q)-b@a, W, G)
    print(name, (m,n), " ".join(f"{k}={v:.4f}" for k,v in row.items()), f"bits3b256={config_bits(NFConfig(3,256),m,n,8):.3f}", flush=True)
