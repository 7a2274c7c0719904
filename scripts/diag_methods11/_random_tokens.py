"""Input Grams of chosen decoder layers' target linears on seeded uniform token ids (no text),
from the original model: the data-free diagnostics' view of the input scales."""
import torch

from compressor.models import decoder_layers, target_linears


def random_token_grams(model, keep, nsamples=4, seqlen=512, seed=0):
    """{"<layer>.<linear>": float64 Gram over nsamples x seqlen random token ids}."""
    _, layers = decoder_layers(model)
    ids = torch.randint(0, model.config.vocab_size, (nsamples, seqlen),
                        generator=torch.Generator().manual_seed(seed))
    grams, hooks = {}, []
    for i in keep:
        for rel, lin in target_linears(layers[i]).items():
            def hook(mod, args, out, name=f"{i}.{rel}"):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                grams[name] = grams.get(name, 0) + x.T @ x
            hooks.append(lin.register_forward_hook(hook))
    with torch.no_grad():
        for b in range(nsamples):
            model(ids[b:b + 1], use_cache=False)
    for h in hooks:
        h.remove()
    return grams
