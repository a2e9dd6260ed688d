"""YAML loading (the `yaml` extra), with YAML 1.2 booleans.

PyYAML follows YAML 1.1, where unquoted `yes`, `no`, `on` and `off` are booleans; in a program they
are almost always meant as strings (`allowed_outputs: [yes, no]`). Only `true`/`false` are booleans
here.
"""

from __future__ import annotations

import re
from typing import Any

from kernel.errors import ProgramError


def load_yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ProgramError(
            "YAML programs need PyYAML: pip install 'ledgerflow[yaml]' (or use a .json program)"
        ) from None

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool",
        re.compile(r"^(?:true|false|True|False|TRUE|FALSE)$"),
        list("tTfF"),
    )
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ProgramError(f"program is not valid YAML: {exc}") from None
