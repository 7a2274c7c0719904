"""Every compression method, one folder each: ``config.py`` (its options, the API),
``method.py`` (the registered Method) and, where it has any, its own math beside them.
Importing this package registers them all; add a new method's import here."""

from compressor.methods import (  # noqa: F401  (imported to register)
    asvd,
    cospadi,
    eora,
    fwsvd,
    gptq,
    gwq,
    lost,
    lqlora,
    prune,
    rtn,
    svd,
    welore,
    whitened_svd,
)
