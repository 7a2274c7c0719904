# Can a data-free proxy see LOST's channel scales? Log-correlation, per layer, of the measured
# input norms (sqrt of the calibration Gram diagonal, from grams.py) with what the weights
# alone offer: the RMSNorm gain (q/k/v input), gate/up row norms x gain (down_proj input),
# v_proj row norms x gain per head (o_proj input). Needs bench_out/diag_grams.pt (grams.py 1,8,15,23).
import torch
from compressor.models import load_model, decoder_layers
torch.set_num_threads(1)
d = torch.load("bench_out/diag_grams.pt")
model, tok, _ = load_model("smollm2-135m", dtype="float32")
_, layers = decoder_layers(model)
def corr(a, b):
    a = a.log(); b = b.log(); a = a - a.mean(); b = b - b.mean()
    return float((a*b).sum() / (a.norm()*b.norm()))
for i in (1, 8, 15, 23):
    L = layers[i]
    act_q = d["grams"][f"{i}.self_attn.q_proj"].diagonal().sqrt()
    g1 = L.input_layernorm.weight.detach().abs()
    act_d = d["grams"][f"{i}.mlp.down_proj"].diagonal().sqrt()
    g2 = L.post_attention_layernorm.weight.detach().abs()
    prox_d = (L.mlp.gate_proj.weight.detach()*g2).norm(dim=1) * (L.mlp.up_proj.weight.detach()*g2).norm(dim=1)
    act_o = d["grams"][f"{i}.self_attn.o_proj"].diagonal().sqrt()
    prox_o = (L.self_attn.v_proj.weight.detach()*g1).norm(dim=1).view(3, 64).repeat_interleave(3, dim=0).reshape(-1)
    print(i, "q: logcorr(gamma, act) %.2f" % corr(g1, act_q), " down: %.2f" % corr(prox_d, act_d), " o: %.2f" % corr(prox_o, act_o),
          " act spread q %.1f down %.1f" % (float(act_q.max()/act_q.median()), float(act_d.max()/act_d.median())))
