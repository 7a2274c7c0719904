"""The engine matrix's stages: every method, EoRA on GPTQ, true-sequential GPTQ, WeLore
allocation and heal, sized for the tiny Llama of conftest. One list for the mode test
(tests/core/test_engine_matrix.py) and the ranks test (tests/core/test_distributed.py)."""

MATRIX = {
    "rtn": [{"method": "rtn", "bits": 4, "group_size": 32}],
    "gptq": [{"method": "gptq", "bits": 4, "group_size": 32}],
    "gptq-true-sequential": [{"method": "gptq", "bits": 3, "group_size": 32,
                              "true_sequential": True}],
    "svd": [{"method": "svd", "ratio": 0.3}],
    "asvd": [{"method": "asvd", "ratio": 0.3}],
    "whitened-svd": [{"method": "whitened-svd", "ratio": 0.3}],
    "whitened-svd-welore": [{"method": "whitened-svd", "ratio": 0.3, "allocation": "welore"}],
    "welore": [{"method": "welore", "ratio": 0.5}],
    "fwsvd": [{"method": "fwsvd", "ratio": 0.3}],
    "prune": [{"method": "prune", "sparsity": 0.5}],
    "eora": [{"method": "gptq", "bits": 3, "group_size": 32}, {"method": "eora", "rank": 4}],
    "gwq": [{"method": "gwq", "bits": 3, "group_size": 32, "outlier_frac": 0.01}],
    "lqlora": [{"method": "lqlora", "bits": 4.5, "rank": 2, "nf_bits": [2, 3, 4],
                "block_sizes": [64]}],
    "cospadi": [{"method": "cospadi", "ratio": 0.3}],
    "lost": [{"method": "lost", "ratio": 0.3}],
    "plan": [{"method": "plan", "bits": 5.0, "menu": [
        {"method": "gptq", "bits": 3, "group_size": 32}, {"method": "gptq", "bits": 4, "group_size": 32},
        [{"method": "gptq", "bits": 3, "group_size": 32}, {"method": "eora", "rank": 4}],
        {"method": "whitened-svd", "ratio": 0.3, "lowrank_bits": 8},
        {"method": "gwq", "bits": 3, "group_size": 32, "outlier_frac": 0.01},
        {"method": "dense"}]}],
    "heal": [{"method": "whitened-svd", "ratio": 0.3}, {"method": "heal", "steps": 2,
                                                         "nsamples": 2}],
}
