"""Score token windows with vLLM: the worker scripts/check_vllm.py runs with the vLLM venv's python.

It imports nothing from svdc (svdc is not installed in vLLM's venv). It loads MODEL in vLLM
(`LLM(..., enable_lora=True)` when --adapter is given), asks for the prompt's log-probabilities
(`SamplingParams(max_tokens=1, prompt_logprobs=0)` on `TokensPrompt(prompt_token_ids=window)`)
and sums -logprob of each window's actual next token over every position but the first, the
positions svdc's perplexity scores. It scores the model without the adapter ("base") and, with
--adapter, with `LoRARequest("eora", 1, ADAPTER)` ("lora"). A failure (at load or in the
forward) is caught and written to --out as the error's first line, with the phase it failed in.

    VENV/bin/python scripts/vllm_worker.py --model DST/base --adapter DST/adapter \
        --max-lora-rank 32 --windows windows.json --max-model-len 272 --out result.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".strip()


def generate(llm, windows: list[list[int]], lora=None, one_by_one: bool = False) -> list:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    if not one_by_one:
        return llm.generate([TokensPrompt(prompt_token_ids=w) for w in windows], params,
                            lora_request=lora, use_tqdm=False)
    return [llm.generate([TokensPrompt(prompt_token_ids=w)], params, lora_request=lora,
                         use_tqdm=False)[0] for w in windows]


def score(llm, windows: list[list[int]], lora=None, one_by_one: bool = False) -> dict:
    t = time.time()
    outs = generate(llm, windows, lora, one_by_one)
    total, count = 0.0, 0
    for w, o in zip(windows, outs):
        plp = o.prompt_logprobs
        assert plp is not None and len(plp) == len(w), (len(plp or []), len(w))
        assert plp[0] is None
        for i in range(1, len(w)):
            total += -plp[i][w[i]].logprob       # the actual next token's logprob at position i
            count += 1
    return {"ppl": math.exp(total / count), "nll": total, "scored_tokens": count,
            "score_s": round(time.time() - t, 1), "requests": "one window per generate call"
            if one_by_one else f"{len(windows)} windows in one generate call"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter")
    ap.add_argument("--max-lora-rank", type=int, default=64)
    ap.add_argument("--windows", required=True, help="JSON list of lists of token ids")
    ap.add_argument("--max-model-len", type=int, required=True)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-batched-probe", action="store_true",
                    help="skip the last, batched prompt_logprobs call with LoRA enabled")
    args = ap.parse_args()
    windows = json.loads(open(args.windows).read())
    res: dict = {"model": args.model, "adapter": args.adapter, "dtype": args.dtype,
                 "max_lora_rank": args.max_lora_rank if args.adapter else None}

    def dump():
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)

    try:
        import vllm
        from vllm import LLM
        from vllm.lora.request import LoRARequest
        res["vllm_version"] = vllm.__version__
        kw = dict(model=args.model, dtype=args.dtype, max_model_len=args.max_model_len,
                  enforce_eager=True, enable_prefix_caching=False, seed=0,
                  max_num_seqs=len(windows), trust_remote_code=False)
        if args.adapter:
            kw.update(enable_lora=True, max_lora_rank=args.max_lora_rank, max_loras=1)
        if args.device == "cuda":
            kw.update(gpu_memory_utilization=0.5)
        t = time.time()
        llm = LLM(**kw)
        res["load_s"] = round(time.time() - t, 1)
        res["quant_method"] = llm.llm_engine.model_config.quantization
    except Exception as e:                       # noqa: BLE001 - recorded, the caller reports it
        traceback.print_exc()
        res.update(error=first_line(e), phase="load (LLM(...): config, weights, warm-up forward)")
        dump()
        return
    variants = [("base", None)]
    if args.adapter:
        variants.append(("lora", LoRARequest("eora", 1, args.adapter)))
    # With enable_lora, vLLM 0.32's CPU LoRA logits path (punica_cpu.add_lora_logits) indexes
    # the LoRA weights per request (sampler_indices) but gets every prompt position when
    # prompt_logprobs is asked for, so two or more prompts scheduled in one step fail
    # ("einsum(): subscript b has size N ... previously seen size L-1"); one request per step
    # broadcasts. So with an adapter each window goes in its own generate call, and a batched
    # call is tried last (its error recorded; a failed step leaves the engine unusable).
    one_by_one = bool(args.adapter)
    for name, lora in variants:
        try:
            res[name] = score(llm, windows, lora, one_by_one)
            print(f"{name}: ppl {res[name]['ppl']:.4f} over {res[name]['scored_tokens']} tokens", flush=True)
        except Exception as e:                   # noqa: BLE001
            traceback.print_exc()
            res[name] = {"error": first_line(e), "phase": "forward (generate)"}
        dump()
    if one_by_one and not args.no_batched_probe and len(windows) > 1:
        try:
            b = score(llm, windows, variants[-1][1], one_by_one=False)
            res["batched_probe"] = {"ok": True, "ppl": b["ppl"]}
        except Exception as e:                   # noqa: BLE001
            traceback.print_exc()
            res["batched_probe"] = {"ok": False, "error": first_line(e)}
        dump()


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)          # the result is written; do not wait on a failed engine's shutdown
