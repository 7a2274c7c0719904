import json
import sys

import torch

torch.set_num_threads(1)
sys.path.insert(0, "/work/wt/gptq/scripts")
from bench_common import load_matrix
from transformers import AutoModelForCausalLM, AutoTokenizer

from compressor.data import calibration_windows
from compressor.evaluate import evaluate, perplexity

m = load_matrix("/work/wt/gptq/scripts/bench_matrix.yaml")
d = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32); tok = AutoTokenizer.from_pretrained(d)
sel = calibration_windows(tok, "builtin", 8, 512, seed=1)
out = {"sel_ppl": perplexity(model, sel)["ppl"]}
ev = m["eval"]; r = evaluate(model, tok, ev["dataset"], ev["seqlen"], max_windows=ev["max_windows"])
out["ppl"] = r["ppl"]; out["label"] = r.get("label")
print(json.dumps(out))
