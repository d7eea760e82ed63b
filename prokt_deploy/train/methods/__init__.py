"""Training methods, one file each, registered in :mod:`prokt_deploy.train.methods.registry` (the API for a
method of one's own: ``register(MethodSpec(...))``). Importing this package registers the built-in ones, in
this order: prokt, kd, dkd, scratch."""

from __future__ import annotations

# The order of these imports is the registration order, the order methods are listed in (--method's help, the
# recipe's sections).
# isort: off
from prokt_deploy.train.methods import prokt  # noqa: F401 - each registers itself
from prokt_deploy.train.methods import kd  # noqa: F401
from prokt_deploy.train.methods import dkd  # noqa: F401
from prokt_deploy.train.methods import scratch  # noqa: F401

# isort: on
from prokt_deploy.train.methods.registry import (
    MethodSpec,
    StepSetup,
    Variant,
    find,
    get,
    names,
    register,
    register_variant,
    resolve,
    unregister,
    variants,
)

__all__ = ["MethodSpec", "StepSetup", "Variant", "find", "get", "names", "register", "register_variant", "resolve", "unregister", "variants"]
