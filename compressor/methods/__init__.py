"""Every compression method, one folder each: ``config.py`` (its options, the API),
``method.py`` (the registered Method) and, where it has any, its own math beside them.
Each folder is named in pyproject.toml's ``svdc.stages`` entry points, which is how the
registry finds it (core/registry.py); add a new method's line there."""
